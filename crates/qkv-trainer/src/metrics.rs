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
    /// What opening it found wrong and repaired (a torn last line), for the caller to show.
    pub warnings: Vec<String>,
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl`. A new run truncates it; a resumed one keeps the lines
    /// up to `keep_through_step` and drops later ones (they were never checkpointed). A torn
    /// last line (a crash in the middle of a write) is cut with a warning; any other
    /// unreadable line is an error, so that history is never dropped silently.
    pub fn open(run_dir: &Path, keep_through_step: Option<usize>) -> Result<Self, TrainError> {
        let path = run_dir.join("metrics.jsonl");
        let io = |source| TrainError::Io {
            path: path.clone(),
            source,
        };
        let mut warnings = Vec::new();
        let kept: Vec<MetricsRecord> = match keep_through_step {
            Some(step) if path.exists() => {
                let (records, warning) = read_checked(&path)?;
                warnings.extend(warning);
                records.into_iter().filter(|r| r.step <= step).collect()
            }
            _ => Vec::new(),
        };
        let mut text = String::new();
        for record in &kept {
            text.push_str(&serde_json::to_string(record).expect("record serialises"));
            text.push('\n');
        }
        // The kept lines replace the file in one rename: a crash here loses nothing.
        qkv_transformer::weights::write_atomically(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io)?;
        Ok(Self {
            path,
            file,
            warnings,
        })
    }

    /// Appends one record.
    pub fn append(&mut self, record: &MetricsRecord) -> Result<(), TrainError> {
        let line = serde_json::to_string(record).expect("record serialises");
        writeln!(self.file, "{line}").map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes the lines written so far to disk (before a checkpoint names their step).
    pub fn sync(&mut self) -> Result<(), TrainError> {
        self.file.sync_data().map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads every record of a `metrics.jsonl`, leaving out a torn last line.
pub fn read(path: &Path) -> Result<Vec<MetricsRecord>, TrainError> {
    read_checked(path).map(|(records, _)| records)
}

/// Reads every record of a `metrics.jsonl`. A last line that is cut short (no newline at its
/// end, and not JSON) is left out, and the warning says so; any other bad line is an error
/// naming its line number.
pub fn read_checked(path: &Path) -> Result<(Vec<MetricsRecord>, Option<String>), TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.into(),
        source,
    })?;
    let torn_tail = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::with_capacity(lines.len());
    let mut warning = None;
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(_) if torn_tail && i + 1 == lines.len() => {
                warning = Some(format!(
                    "{}: line {} was cut short by a crash ({} bytes); it is left out",
                    path.display(),
                    i + 1,
                    line.len()
                ));
            }
            Err(e) => {
                return Err(TrainError::Config(format!(
                    "{}: line {} is not a metrics record ({e}); move the file away to start its history anew",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    Ok((records, warning))
}
