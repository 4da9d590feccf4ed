//! An RGB pixel canvas with lines, rectangles and text, written out as PNG.

use std::path::Path;

use crate::font::{GLYPH_H, GLYPH_W, glyph};

/// A colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// White.
    pub const WHITE: Rgb = Rgb(255, 255, 255);
    /// Black.
    pub const BLACK: Rgb = Rgb(0, 0, 0);
    /// Light grey, for grid lines.
    pub const GRID: Rgb = Rgb(225, 225, 225);
}

/// A white RGB image to draw on.
#[derive(Debug, Clone)]
pub struct Canvas {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![255; width * height * 3],
        }
    }

    /// Colours one pixel (ignored outside the canvas).
    pub fn set(&mut self, x: i64, y: i64, color: Rgb) {
        if x < 0 || y < 0 || x as usize >= self.width || y as usize >= self.height {
            return;
        }
        let at = (y as usize * self.width + x as usize) * 3;
        self.pixels[at..at + 3].copy_from_slice(&[color.0, color.1, color.2]);
    }

    /// The colour of one pixel.
    pub fn get(&self, x: usize, y: usize) -> Rgb {
        let at = (y * self.width + x) * 3;
        Rgb(self.pixels[at], self.pixels[at + 1], self.pixels[at + 2])
    }

    /// Copies `other` onto this canvas with its top-left corner at `(x, y)`.
    pub fn paste(&mut self, other: &Canvas, x: usize, y: usize) {
        for yy in 0..other.height {
            for xx in 0..other.width {
                self.set((x + xx) as i64, (y + yy) as i64, other.get(xx, yy));
            }
        }
    }

    /// Fills a rectangle.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, color: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, color);
            }
        }
    }

    /// A straight line (Bresenham), `thickness` pixels wide.
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), color: Rgb, thickness: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.fill_rect(
                x - thickness / 2,
                y - thickness / 2,
                thickness,
                thickness,
                color,
            );
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text with its top-left corner at `(x, y)`, each font pixel drawn `scale`×`scale`.
    pub fn text(&mut self, x: i64, y: i64, text: &str, color: Rgb, scale: i64) {
        for (i, c) in text.chars().enumerate() {
            let left = x + i as i64 * (GLYPH_W as i64 + 1) * scale;
            for (row, bits) in glyph(c).iter().enumerate() {
                for (col, b) in bits.bytes().enumerate() {
                    if b == b'#' {
                        self.fill_rect(
                            left + col as i64 * scale,
                            y + row as i64 * scale,
                            scale,
                            scale,
                            color,
                        );
                    }
                }
            }
        }
    }

    /// Vertical text, reading bottom to top, with its bottom-left corner at `(x, y)`.
    pub fn text_vertical(&mut self, x: i64, y: i64, text: &str, color: Rgb, scale: i64) {
        for (i, c) in text.chars().enumerate() {
            let bottom = y - i as i64 * (GLYPH_W as i64 + 1) * scale;
            for (row, bits) in glyph(c).iter().enumerate() {
                for (col, b) in bits.bytes().enumerate() {
                    if b == b'#' {
                        self.fill_rect(
                            x + row as i64 * scale,
                            bottom - (col as i64 + 1) * scale,
                            scale,
                            scale,
                            color,
                        );
                    }
                }
            }
        }
    }

    /// Width in pixels of `text` at `scale`.
    pub fn text_width(text: &str, scale: i64) -> i64 {
        text.chars().count() as i64 * (GLYPH_W as i64 + 1) * scale
    }

    /// Height in pixels of a line of text at `scale`.
    pub fn text_height(scale: i64) -> i64 {
        GLYPH_H as i64 * scale
    }

    /// The image as PNG bytes.
    pub fn png_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            encoder.set_compression(png::Compression::Best);
            let mut writer = encoder.write_header().expect("writing to memory");
            writer
                .write_image_data(&self.pixels)
                .expect("writing to memory");
        }
        out
    }

    /// Writes the PNG to `path`.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.png_bytes())
    }
}
