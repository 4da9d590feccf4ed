//! Labelled heatmaps, for attention maps: one or more panels of `rows × cols` weights in
//! `[0, 1]`, tokens on both axes.

use crate::canvas::{Canvas, Rgb};

/// A white-to-dark-blue colour for a weight in `[0, 1]`.
pub fn heat_color(w: f32) -> Rgb {
    let w = w.clamp(0.0, 1.0);
    let lerp = |a: f32, b: f32| (a + (b - a) * w).round() as u8;
    Rgb(lerp(255.0, 8.0), lerp(255.0, 48.0), lerp(255.0, 107.0))
}

/// A grid of panels, each a heatmap with row and column labels.
#[derive(Debug, Clone)]
pub struct Heatmap {
    /// Title over the whole image.
    pub title: String,
    /// Panels in row-major order: `(caption, rows × cols weights)`.
    pub panels: Vec<(String, Vec<f32>)>,
    /// Panels per row of the grid.
    pub columns: usize,
    /// Row labels (queries), `rows` of them.
    pub row_labels: Vec<String>,
    /// Column labels (keys), `cols` of them.
    pub col_labels: Vec<String>,
    /// Side of one cell in pixels.
    pub cell: usize,
}

impl Heatmap {
    /// Draws the grid.
    pub fn render(&self) -> Canvas {
        let (rows, cols) = (self.row_labels.len(), self.col_labels.len());
        let label_chars = self
            .row_labels
            .iter()
            .chain(&self.col_labels)
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(1) as i64;
        let label_px = Canvas::text_width(&"x".repeat(label_chars as usize), 1) + 6;
        let cell = self.cell as i64;
        let panel_w = label_px + cols as i64 * cell + 16;
        let panel_h = 16 + label_px + rows as i64 * cell + 16;
        let grid_cols = self.columns.max(1) as i64;
        let grid_rows = (self.panels.len() as i64 + grid_cols - 1) / grid_cols;
        let width = (panel_w * grid_cols + 20).max(Canvas::text_width(&self.title, 2) + 20);
        let height = 36 + panel_h * grid_rows.max(1);
        let mut c = Canvas::new(width as usize, height as usize);
        c.text(10, 10, &self.title, Rgb::BLACK, 2);
        for (i, (caption, weights)) in self.panels.iter().enumerate() {
            let ox = 10 + (i as i64 % grid_cols) * panel_w;
            let oy = 36 + (i as i64 / grid_cols) * panel_h;
            c.text(ox + label_px, oy, caption, Rgb::BLACK, 1);
            let gx = ox + label_px;
            let gy = oy + 16 + label_px;
            for (j, label) in self.col_labels.iter().enumerate() {
                let x = gx + j as i64 * cell + (cell - 7) / 2;
                c.text_vertical(x, gy - 4, label, Rgb::BLACK, 1);
            }
            for (r, label) in self.row_labels.iter().enumerate() {
                let y = gy + r as i64 * cell + (cell - 7) / 2;
                c.text(
                    gx - 4 - Canvas::text_width(label, 1),
                    y,
                    label,
                    Rgb::BLACK,
                    1,
                );
                for k in 0..cols {
                    let w = weights.get(r * cols + k).copied().unwrap_or(0.0);
                    c.fill_rect(
                        gx + k as i64 * cell,
                        gy + r as i64 * cell,
                        cell - 1,
                        cell - 1,
                        heat_color(w),
                    );
                }
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_take_their_weight_colour() {
        let map = Heatmap {
            title: "attention".into(),
            panels: vec![("L0 H0".into(), vec![1.0, 0.0, 0.5, 0.5])],
            columns: 1,
            row_labels: vec!["a".into(), "b".into()],
            col_labels: vec!["a".into(), "b".into()],
            cell: 12,
        };
        let c = map.render();
        let dark = (0..c.height)
            .flat_map(|y| (0..c.width).map(move |x| (x, y)))
            .filter(|&(x, y)| c.get(x, y) == heat_color(1.0))
            .count();
        assert_eq!(dark, 11 * 11, "exactly one full-weight cell");
    }
}
