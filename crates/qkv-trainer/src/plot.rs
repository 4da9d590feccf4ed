//! The loss-curve PNG written at the end of a run.

use std::path::Path;

use qkv_plot::{LinePlot, Rgb, Series};

use crate::error::TrainError;
use crate::metrics::MetricsRecord;

/// Draws training loss per step, and train and validation loss at evaluations, to `path`.
pub fn loss_curve(records: &[MetricsRecord], title: &str, path: &Path) -> Result<(), TrainError> {
    let per_step = records.iter().map(|r| (r.step as f64, r.loss)).collect();
    let evals = |pick: fn(&MetricsRecord) -> Option<f64>| {
        records
            .iter()
            .filter_map(|r| pick(r).map(|v| (r.step as f64, v)))
            .collect()
    };
    let plot = LinePlot {
        title: title.to_string(),
        x_label: "step".into(),
        y_label: "cross-entropy loss".into(),
        series: vec![
            Series {
                name: "batch loss".into(),
                color: Rgb(170, 190, 230),
                points: per_step,
            },
            Series {
                name: "train (eval)".into(),
                color: Rgb(31, 90, 200),
                points: evals(|r| r.train_loss),
            },
            Series {
                name: "val (eval)".into(),
                color: Rgb(220, 90, 20),
                points: evals(|r| r.val_loss),
            },
        ],
    };
    plot.render().save(path).map_err(|source| TrainError::Io {
        path: path.into(),
        source,
    })
}
