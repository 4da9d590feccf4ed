//! `metrics.jsonl`: one JSON object per line, appended as the run goes.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// The update this line describes (1-based: the number of updates done).
    pub step: usize,
    /// Training loss of the update's batch.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall time of the update, in milliseconds.
    pub ms_per_iter: f64,
    /// Tokens processed per second in the update.
    pub tokens_per_s: f64,
    /// At evaluation steps: mean loss on training batches.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub train_loss: Option<f64>,
    /// At evaluation steps: mean loss on validation batches.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    /// At evaluation steps: fraction of validation targets predicted exactly (argmax).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_accuracy: Option<f64>,
    /// At evaluation steps: attention statistics of every layer and head on a validation
    /// batch.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attention: Option<Vec<HeadRecord>>,
}

impl MetricsRecord {
    /// The record of one update that took `elapsed_s` seconds over `tokens` tokens, with
    /// the evaluation fields empty.
    pub fn update(
        step: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        elapsed_s: f64,
        tokens: usize,
    ) -> Self {
        Self {
            step,
            loss,
            lr,
            grad_norm,
            ms_per_iter: elapsed_s * 1e3,
            tokens_per_s: tokens as f64 / elapsed_s.max(1e-9),
            train_loss: None,
            val_loss: None,
            val_accuracy: None,
            attention: None,
        }
    }
}

/// Attention statistics of one head at one evaluation (see `qkv_tensor_ops::HeadStats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadRecord {
    /// Layer index.
    pub layer: usize,
    /// Head index.
    pub head: usize,
    /// Mean entropy of the head's distributions, in nats.
    pub entropy: f64,
    /// Mean number of positions it looks back.
    pub mean_distance: f64,
    /// Mean largest probability.
    pub max_prob: f64,
    /// Mean probability on the first token.
    pub first_token_mass: f64,
}

/// Appends records to `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl`. A new run truncates it; a resumed one keeps the lines
    /// up to `keep_through_step` and drops later ones (they were never checkpointed).
    pub fn open(run_dir: &Path, keep_through_step: Option<usize>) -> Result<Self, TrainError> {
        let path = run_dir.join("metrics.jsonl");
        let kept: Vec<String> = match keep_through_step {
            Some(step) => read(&path)
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.step <= step)
                .map(|r| serde_json::to_string(&r).expect("record serialises"))
                .collect(),
            None => Vec::new(),
        };
        let io = |source| TrainError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::create(&path).map_err(io)?;
        for line in kept {
            writeln!(file, "{line}").map_err(io)?;
        }
        Ok(Self { path, file })
    }

    /// Appends one record.
    pub fn append(&mut self, record: &MetricsRecord) -> Result<(), TrainError> {
        let line = serde_json::to_string(record).expect("record serialises");
        writeln!(self.file, "{line}").map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads every record of a `metrics.jsonl`.
pub fn read(path: &Path) -> Result<Vec<MetricsRecord>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.into(),
        source,
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| TrainError::Config(format!("{}: bad line: {e}", path.display())))
        })
        .collect()
}
