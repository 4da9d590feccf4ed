//! Errors of the trainer.

use std::path::PathBuf;

/// What can stop a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is wrong.
    #[error("invalid training config: {0}")]
    Config(String),
    /// From the data crate.
    #[error(transparent)]
    Data(#[from] qkv_data::DataError),
    /// From the model crate.
    #[error(transparent)]
    Model(#[from] qkv_transformer::ModelError),
    /// From weight files.
    #[error(transparent)]
    Weights(#[from] qkv_transformer::WeightsError),
    /// A sentence the translation model cannot take (unknown word, empty, too long).
    #[error(transparent)]
    Translate(#[from] qkv_data::TranslateError),
    /// A file of the run could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A checkpoint that does not fit this run.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A new run was started in a directory that holds one.
    #[error(
        "{path} already holds a run; continue it with --resume, start over with --overwrite, or choose another --out"
    )]
    RunExists {
        /// The run directory.
        path: PathBuf,
    },
    /// The loss stopped being a number.
    #[error(
        "the loss became {loss} at step {step}; training stopped and {}. Try a lower --lr, or --grad-clip 1.0",
        kept(*.last_good)
    )]
    Diverged {
        /// The step.
        step: usize,
        /// The bad value.
        loss: f64,
        /// The step of the kept checkpoint (0 if none).
        last_good: usize,
    },
    /// A device of a data-parallel run failed during a step (a remote device's server stopped,
    /// its connection broke, its backend panicked). The step was not applied.
    #[error(
        "device {device} failed at step {step}: {reason}; training stopped and {}. Bring the device back (or leave it out of --devices) and continue with --resume",
        kept(*.last_good)
    )]
    DeviceFailed {
        /// The device, as it was named in `--devices`.
        device: String,
        /// The step being computed.
        step: usize,
        /// What failed (the panic or error message).
        reason: String,
        /// The step of the kept checkpoint (0 if none).
        last_good: usize,
    },
}

fn kept(last_good: usize) -> String {
    if last_good == 0 {
        "no checkpoint had been written yet".into()
    } else {
        format!("the last good checkpoint (step {last_good}) was kept")
    }
}
