//! The qkv training loop, written out: AdamW with weight decay on matrices only, linear
//! warm-up then cosine decay, clipping by the global gradient norm (as nanoGPT and PyTorch's
//! `clip_grad_norm_` do), gradient accumulation, periodic evaluation, checkpoints that a
//! crash cannot corrupt, exact resume, and `metrics.jsonl`.
//!
//! The trainer is handed a device; it never picks a backend. Give it an autodiff one:
//! `Trainer::new(config, run_dir, cache_dir, &device.autodiff(), resume)`.

pub mod checkpoint;
mod config;
mod error;
pub mod metrics;
pub mod optim;
pub mod plot;
mod schedule;
mod source;
mod trainer;
pub mod translate;

pub use config::{DataConfig, ModelSettings, PRESETS, TokenizerChoice, TrainConfig};
pub use error::TrainError;
pub use schedule::WarmupCosine;
pub use source::BatchSource;
pub use trainer::{Event, RunSummary, Trainer, adamw_settings, full_split_loss, tensors};

#[cfg(test)]
mod tests;
