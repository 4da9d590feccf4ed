//! Small, self-contained PNG charts: a line plot for training curves and a labelled heatmap
//! for attention maps, drawn into an RGB canvas with a built-in 5×7 bitmap font, so that no
//! system fonts or plotting stack are needed.

mod canvas;
mod font;
mod heatmap;
mod line;

pub use canvas::{Canvas, Rgb};
pub use heatmap::{Heatmap, heat_color};
pub use line::{LinePlot, Series};

/// The examples of this crate's README, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
