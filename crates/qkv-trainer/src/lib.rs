//! The qkv training layer, written out: one [`Trainer`] for every [`Task`] (the language
//! model, its LSTM/GRU baseline and the encoder–decoder are three), AdamW with weight decay on matrices only, linear
//! warm-up then cosine decay, clipping by the global gradient norm (as nanoGPT and PyTorch's
//! `clip_grad_norm_` do), gradient accumulation, periodic evaluation, checkpoints that no
//! crash can corrupt, exact resume, divergence checks, Ctrl-C and time limits, and
//! `metrics.jsonl` with its plots.
//!
//! The trainer is handed a device; it never picks a backend. Give it an autodiff one:
//! `Trainer::new(LanguageModel::open(config, cache_dir)?, run_dir, &device.autodiff(), Start::Fresh)`.

pub mod checkpoint;
mod config;
mod error;
mod lm;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod precision;
mod recurrent;
mod schedule;
mod source;
mod step;
mod task;
mod trainer;
pub mod translate;

pub use config::{DataConfig, ModelSettings, PRESETS, TokenizerChoice, TrainConfig};
pub use error::TrainError;
pub use lm::{LanguageModel, full_split_loss, tensors};
pub use parallel::{Shard, Worker, train_step_parallel};
pub use precision::{LossScaler, MixedPrecision, Precision};
pub use recurrent::{RecurrentLanguageModel, RecurrentRunConfig};
pub use schedule::WarmupCosine;
pub use source::BatchSource;
pub use step::{StepReport, train_step, train_step_mixed};
pub use task::{Evaluation, Recipe, Task};
pub use trainer::{Event, RunSummary, Start, StopReason, Trainer};

#[cfg(test)]
mod tests;

/// The examples of this crate's README, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
