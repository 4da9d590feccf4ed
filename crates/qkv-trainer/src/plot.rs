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

/// Draws each head's attention entropy and mean look-back distance over the run's
/// evaluations, to `path` (two panels stacked: entropy above, distance below).
pub fn attention_curves(records: &[MetricsRecord], path: &Path) -> Result<(), TrainError> {
    let palette = [
        Rgb(31, 119, 180),
        Rgb(255, 127, 14),
        Rgb(44, 160, 44),
        Rgb(214, 39, 40),
        Rgb(148, 103, 189),
        Rgb(140, 86, 75),
        Rgb(227, 119, 194),
        Rgb(127, 127, 127),
        Rgb(188, 189, 34),
        Rgb(23, 190, 207),
    ];
    let mut heads: Vec<(usize, usize)> = records
        .iter()
        .flat_map(|r| r.attention.iter().flatten().map(|h| (h.layer, h.head)))
        .collect();
    heads.sort_unstable();
    heads.dedup();
    let series = |pick: fn(&crate::metrics::HeadRecord) -> f64| -> Vec<Series> {
        heads
            .iter()
            .enumerate()
            .map(|(i, &(layer, head))| Series {
                name: format!("L{layer} H{head}"),
                color: palette[i % palette.len()],
                points: records
                    .iter()
                    .filter_map(|r| {
                        let h = r
                            .attention
                            .as_ref()?
                            .iter()
                            .find(|h| h.layer == layer && h.head == head)?;
                        Some((r.step as f64, pick(h)))
                    })
                    .collect(),
            })
            .collect()
    };
    let top = LinePlot {
        title: "attention entropy per head".into(),
        x_label: "step".into(),
        y_label: "entropy (nats)".into(),
        series: series(|h| h.entropy),
    }
    .render();
    let bottom = LinePlot {
        title: "mean look-back distance per head".into(),
        x_label: "step".into(),
        y_label: "positions".into(),
        series: series(|h| h.mean_distance),
    }
    .render();
    let mut canvas = qkv_plot::Canvas::new(top.width, top.height + bottom.height);
    canvas.paste(&top, 0, 0);
    canvas.paste(&bottom, 0, top.height);
    canvas.save(path).map_err(|source| TrainError::Io {
        path: path.into(),
        source,
    })
}
