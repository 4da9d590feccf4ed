//! What the trainer trains: a [`Task`] says what a batch is, what the loss is, what an
//! evaluation reports and which files describe a run; the [`Trainer`](crate::Trainer) owns
//! everything else (the loop, the optimizer, checkpoints and resume, divergence, Ctrl-C and
//! time limits, metrics and plots).
//!
//! The language model ([`LanguageModel`](crate::LanguageModel)) and the encoder–decoder
//! ([`TranslationRun`](crate::translate::TranslationRun)) are the two tasks; a third is one
//! more implementation of this trait.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use qkv_transformer::SplitMix64;
use qkv_transformer::weights::HostTensors;

use crate::checkpoint::RunState;
use crate::error::TrainError;
use crate::metrics::HeadRecord;
use crate::optim::AdamWSettings;
use crate::parallel::Shard;
use crate::precision::Precision;
use crate::schedule::WarmupCosine;

/// The optimisation settings every task has: how long, how fast, how often to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// Updates to run.
    pub max_iters: usize,
    /// Micro-batches whose gradients are summed into one update.
    pub grad_accum: usize,
    /// Learning rate over the steps.
    pub schedule: WarmupCosine,
    /// AdamW's settings.
    pub adamw: AdamWSettings,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    pub grad_clip: f64,
    /// Evaluate and checkpoint every this many steps (and at the end).
    pub eval_interval: usize,
    /// Seed of initialisation, batches and dropout.
    pub seed: u64,
    /// Stop, after evaluating and saving, once this many seconds have passed.
    pub time_limit_s: Option<f64>,
    /// The float type the forward and backward passes compute in (f32 master weights
    /// whatever it is; see [`crate::precision`]).
    pub precision: Precision,
}

impl Recipe {
    /// Checks learning rates, betas, weight decay, clipping and the time limit, naming the
    /// first bad value and its flag: the one check behind every task's config.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        let (lr, min_lr) = (self.schedule.lr, self.schedule.min_lr);
        if !(lr > 0.0 && lr.is_finite()) {
            return bad(format!(
                "the learning rate must be a positive number, got {lr} (--lr)"
            ));
        }
        if !(min_lr >= 0.0 && min_lr <= lr) {
            return bad(format!(
                "min_lr must be in [0, lr = {lr}], got {min_lr} (--min-lr)"
            ));
        }
        let AdamWSettings {
            beta1,
            beta2,
            weight_decay,
            ..
        } = self.adamw;
        if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
            return bad(format!("betas must be in [0, 1), got {beta1} and {beta2}"));
        }
        let usable = |x: f64| x >= 0.0 && x.is_finite();
        if !(usable(weight_decay) && usable(self.grad_clip)) {
            return bad(format!(
                "weight_decay and grad_clip must be finite and not negative, got {weight_decay} and {} (--weight-decay, --grad-clip)",
                self.grad_clip
            ));
        }
        if let Some(s) = self.time_limit_s
            && !(s.is_finite() && s > 0.0)
        {
            return bad(format!(
                "the time limit must be a positive number of seconds, got {s} (--time-limit)"
            ));
        }
        Ok(())
    }
}

/// What an evaluation measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Mean loss on training data, when the task measures it.
    pub train_loss: Option<f64>,
    /// Mean loss on held-out data.
    pub val_loss: f64,
    /// The task's held-out accuracy (next-token argmax, or exact-match translations).
    pub val_accuracy: f64,
    /// Attention statistics of every layer and head, when the task records them.
    pub attention: Option<Vec<HeadRecord>>,
}

/// A kind of training run. See the [module documentation](self).
///
/// A task is `Sync` and its batches are [`Shard`]s so that data-parallel workers can share it
/// and take their rows of every batch.
pub trait Task: Sync {
    /// The model it trains.
    type Model: Module;
    /// One micro-batch, on the host.
    type Batch: Shard + Send;

    /// The task's name in `state.json` (`lm`, `translate`).
    const KIND: &'static str;

    /// The loop's settings.
    fn recipe(&self) -> Recipe;

    /// The whole config, as saved in the checkpoint's `state.json`.
    fn config_json(&self) -> serde_json::Value;

    /// A freshly initialised model on `device` (whose generator the trainer has seeded).
    fn init_model(&self, device: &Device) -> Result<Self::Model, TrainError>;

    /// The model's weights as a safetensors file.
    fn weights_bytes(&self, model: &Self::Model) -> Vec<u8>;

    /// `model` with the weights of a checkpoint (read from `path`) loaded into it.
    fn load_weights(
        &self,
        model: Self::Model,
        weights: HostTensors,
        path: &Path,
    ) -> Result<Self::Model, TrainError>;

    /// Checks that a saved run can be continued by this task (same kind of model, same
    /// vocabulary), naming the difference when not.
    fn check_resume(&self, saved: &RunState, run_dir: &Path) -> Result<(), TrainError>;

    /// The files besides the checkpoint that describe the run (configs, tokenizer), by name.
    fn side_files(&self) -> Result<Vec<(String, Vec<u8>)>, TrainError>;

    /// A training micro-batch drawn with `rng`.
    fn batch(&self, rng: &mut SplitMix64) -> Self::Batch;

    /// Tokens in a batch, for the throughput figures.
    fn batch_tokens(&self, batch: &Self::Batch) -> usize;

    /// The scalar training loss (shape `[1]`) of `model` on `batch`, on `device`.
    fn loss(
        &self,
        model: &Self::Model,
        batch: &Self::Batch,
        device: &Device,
    ) -> Result<Tensor<1>, TrainError>;

    /// Evaluates `model` (already in evaluation mode, on a device without autodiff) after
    /// `step` updates.
    fn evaluate(
        &self,
        model: &Self::Model,
        step: usize,
        device: &Device,
    ) -> Result<Evaluation, TrainError>;

    /// The title of the run's loss plot.
    fn title(&self) -> String;
}
