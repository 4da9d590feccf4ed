//! Line plots, for loss curves.

use crate::canvas::{Canvas, Rgb};

/// One named line.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Its colour.
    pub color: Rgb,
    /// `(x, y)` points, in order of x.
    pub points: Vec<(f64, f64)>,
}

/// A line plot with axes, ticks, a title and a legend.
#[derive(Debug, Clone)]
pub struct LinePlot {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

const W: usize = 800;
const H: usize = 500;
const LEFT: i64 = 80;
const RIGHT: i64 = 20;
const TOP: i64 = 40;
const BOTTOM: i64 = 60;

impl LinePlot {
    /// Draws the plot (800 × 500), each series as a line.
    pub fn render(&self) -> Canvas {
        self.draw(false)
    }

    /// Draws the plot (800 × 500), each series as unconnected points: a scatter plot.
    pub fn render_points(&self) -> Canvas {
        self.draw(true)
    }

    fn draw(&self, points_only: bool) -> Canvas {
        let mut c = Canvas::new(W, H);
        let points = self
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in points {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-6);
        (y0, y1) = (y0 - pad, y1 + pad);
        let (pw, ph) = (W as i64 - LEFT - RIGHT, H as i64 - TOP - BOTTOM);
        let px = |x: f64| LEFT + ((x - x0) / (x1 - x0) * pw as f64).round() as i64;
        let py = |y: f64| TOP + ph - ((y - y0) / (y1 - y0) * ph as f64).round() as i64;

        for i in 0..=5 {
            let fx = x0 + (x1 - x0) * i as f64 / 5.0;
            let fy = y0 + (y1 - y0) * i as f64 / 5.0;
            c.line((px(fx), TOP), (px(fx), TOP + ph), Rgb::GRID, 1);
            c.line((LEFT, py(fy)), (LEFT + pw, py(fy)), Rgb::GRID, 1);
            let xt = format_tick(fx);
            c.text(
                px(fx) - Canvas::text_width(&xt, 1) / 2,
                TOP + ph + 8,
                &xt,
                Rgb::BLACK,
                1,
            );
            let yt = format_tick(fy);
            c.text(
                LEFT - 8 - Canvas::text_width(&yt, 1),
                py(fy) - 3,
                &yt,
                Rgb::BLACK,
                1,
            );
        }
        c.line((LEFT, TOP), (LEFT, TOP + ph), Rgb::BLACK, 1);
        c.line((LEFT, TOP + ph), (LEFT + pw, TOP + ph), Rgb::BLACK, 1);
        for s in &self.series {
            let pts: Vec<(i64, i64)> = s
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(x, y)| (px(x), py(y)))
                .collect();
            if points_only || pts.len() == 1 {
                for p in &pts {
                    c.fill_rect(p.0 - 2, p.1 - 2, 5, 5, s.color);
                }
            } else {
                for pair in pts.windows(2) {
                    c.line(pair[0], pair[1], s.color, 2);
                }
            }
        }
        c.text(
            (W as i64 - Canvas::text_width(&self.title, 2)) / 2,
            10,
            &self.title,
            Rgb::BLACK,
            2,
        );
        c.text(
            LEFT + (pw - Canvas::text_width(&self.x_label, 1)) / 2,
            H as i64 - 22,
            &self.x_label,
            Rgb::BLACK,
            1,
        );
        c.text_vertical(
            12,
            TOP + (ph + Canvas::text_width(&self.y_label, 1)) / 2,
            &self.y_label,
            Rgb::BLACK,
            1,
        );
        for (i, s) in self.series.iter().enumerate() {
            let y = TOP + 10 + i as i64 * 14;
            let x = LEFT + pw - 150;
            c.fill_rect(x, y + 2, 16, 4, s.color);
            c.text(x + 22, y, &s.name, Rgb::BLACK, 1);
        }
        c
    }
}

fn format_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_lines_in_their_colours() {
        let red = Rgb(200, 0, 0);
        let plot = LinePlot {
            title: "loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![Series {
                name: "train".into(),
                color: red,
                points: vec![(0.0, 4.0), (100.0, 1.0)],
            }],
        };
        let c = plot.render();
        let reds = (0..c.height)
            .flat_map(|y| (0..c.width).map(move |x| (x, y)))
            .filter(|&(x, y)| c.get(x, y) == red)
            .count();
        assert!(reds > 500, "the line is drawn: {reds} pixels");
        let bytes = c.png_bytes();
        assert_eq!(&bytes[1..4], b"PNG");
    }

    #[test]
    fn scatter_draws_each_point_and_no_line() {
        let red = Rgb(200, 0, 0);
        let plot = LinePlot {
            title: "eigenvalues".into(),
            x_label: "re".into(),
            y_label: "im".into(),
            series: vec![Series {
                name: "x".into(),
                color: red,
                points: vec![(0.0, 0.0), (1.0, 1.0), (2.0, 0.0)],
            }],
        };
        let count = |c: &Canvas| {
            (0..c.height)
                .flat_map(|y| (0..c.width).map(move |x| (x, y)))
                .filter(|&(x, y)| c.get(x, y) == red)
                .count()
        };
        // Three 5 × 5 markers plus the legend's 16 × 4 swatch, far fewer than two lines.
        assert_eq!(count(&plot.render_points()), 3 * 25 + 64);
        assert!(count(&plot.render()) > 500);
    }
}
