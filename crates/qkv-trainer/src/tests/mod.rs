//! Tests of the trainer: PyTorch AdamW parity, exact resume, overfitting, crash safety and
//! the errors a user can run into.

mod errors;
mod optim_parity;
mod parallel;
mod parsers;
mod precision;
mod recall_heads;
mod recurrent;
mod runs;
mod translate;

use std::sync::{Mutex, MutexGuard};

use std::path::Path;

use burn::prelude::Device;

use crate::{DataConfig, LanguageModel, ModelSettings, Start, TrainConfig, TrainError, Trainer};

pub(crate) use qkv_test_support::temp_dir;

/// A tiny recall run: 1 layer, 16 wide, batches of 8.
pub(crate) fn tiny_recall(max_iters: usize, dropout: f64) -> TrainConfig {
    let mut config = TrainConfig::recall();
    config.model = ModelSettings {
        n_layers: 1,
        n_heads: 2,
        d_model: 16,
        block_size: 23,
        dropout,
        bias: true,
        positional: qkv_transformer::PositionalEncoding::Learned,
    };
    config.batch_size = 8;
    config.max_iters = max_iters;
    config.lr_decay_iters = max_iters;
    config.warmup_iters = 2;
    config.eval_interval = 4;
    config.eval_iters = 2;
    config.data = DataConfig::Recall {
        n_pairs: 6,
        n_keys: 16,
        n_values: 10,
        gap: 0,
    };
    config
}

/// Burn's Flex backend draws random numbers (initialisation, dropout) from one generator per
/// process. Tests that train hold this lock so that parallel tests do not draw from it in
/// between, which would make two identical runs differ.
pub(crate) fn rng_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A language-model trainer for `config`, data cached in `cache`.
pub(crate) fn lm_trainer(
    config: TrainConfig,
    run_dir: &Path,
    cache: &Path,
    device: &Device,
    start: Start,
) -> Result<Trainer<LanguageModel>, TrainError> {
    Trainer::new(LanguageModel::open(config, cache)?, run_dir, device, start)
}

/// Each step's `(step, loss bits)` from a run's `metrics.jsonl`, for bit-exact comparisons.
pub(crate) fn losses(dir: &Path) -> Vec<(usize, u64)> {
    crate::metrics::read(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| (r.step, r.loss.to_bits()))
        .collect()
}

/// The autodiff Flex device the run tests train on.
pub(crate) fn runs_device() -> Device {
    qkv_test_support::flex().autodiff()
}
