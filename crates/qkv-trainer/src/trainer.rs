//! The training loop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::prelude::*;
use qkv_data::{IGNORE, Split, TokenBatch};
use qkv_tensor_ops::attention_stats;
use qkv_transformer::{Gpt, SplitMix64, cross_entropy};

use crate::checkpoint::{self, Checkpoint, RunState};
use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::metrics::{HeadRecord, MetricsLog, MetricsRecord};
use crate::optim::{AdamW, AdamWSettings, NamedGrads, clip_factor};
use crate::schedule::WarmupCosine;
use crate::source::BatchSource;

/// What the loop reports as it goes, for a progress display.
#[derive(Debug, Clone)]
pub enum Event {
    /// An update finished.
    Step(MetricsRecord),
    /// An evaluation finished (its figures are also in the step record).
    Eval {
        /// The step.
        step: usize,
        /// Mean training loss.
        train_loss: f64,
        /// Mean validation loss.
        val_loss: f64,
        /// Validation accuracy of next-token argmax.
        val_accuracy: f64,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Its step.
        step: usize,
    },
    /// Ctrl-C: the run saved and stopped.
    Interrupted {
        /// The step it stopped at.
        step: usize,
    },
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Updates completed in total (resumed ones included).
    pub step: usize,
    /// The final evaluation, if one ran.
    pub final_eval: Option<(f64, f64, f64)>,
    /// Whether Ctrl-C stopped it.
    pub interrupted: bool,
    /// Seconds this process spent training.
    pub wall_s: f64,
    /// Mean milliseconds per update in this process.
    pub ms_per_iter: f64,
    /// Mean tokens per second in this process.
    pub tokens_per_s: f64,
}

/// A training run: model, optimizer, data, and where it writes.
pub struct Trainer {
    /// The resolved configuration.
    pub config: TrainConfig,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The model, on an autodiff device.
    pub model: Gpt,
    /// The optimizer.
    pub optimizer: AdamW,
    /// The data.
    pub source: BatchSource,
    /// Updates done.
    pub step: usize,
    /// Batching generator.
    pub rng: SplitMix64,
    device: Device,
    /// For tests: make the next checkpoint write fail after this many files.
    pub fail_checkpoint_after_files: Option<usize>,
}

impl Trainer {
    /// A new run in `run_dir` (created; an existing checkpoint there is replaced), or, with
    /// `resume`, the continuation of the run saved there. `device` must support autodiff
    /// (`Device::flex().autodiff()` and the like).
    pub fn new(
        config: TrainConfig,
        run_dir: &Path,
        cache_dir: &Path,
        device: &Device,
        resume: bool,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        std::fs::create_dir_all(run_dir).map_err(|source| TrainError::Io {
            path: run_dir.into(),
            source,
        })?;
        let source = BatchSource::open(&config, cache_dir)?;
        let tokenizer = source.tokenizer();
        let vocab_size = tokenizer.vocab_size();
        let gpt_config = config.model.gpt(vocab_size);
        let settings = adamw_settings(&config);
        device.seed(config.seed);
        let fresh = gpt_config.try_init(device)?;

        let (model, optimizer, step, rng) = if resume {
            let checkpoint = Checkpoint::load(run_dir)?;
            let saved = &checkpoint.state;
            let path = checkpoint::checkpoint_dir(run_dir);
            if saved.config.model != config.model {
                return Err(TrainError::Checkpoint {
                    path,
                    reason: format!(
                        "it was saved from a model with another config ({:?}), this run asks for {:?}",
                        saved.config.model, config.model
                    ),
                });
            }
            if saved.vocab_size != vocab_size {
                return Err(TrainError::Checkpoint {
                    path,
                    reason: format!(
                        "its vocabulary has {} tokens, this data's has {vocab_size}",
                        saved.vocab_size
                    ),
                });
            }
            let saved_tokenizer = qkv_data::Tokenizer::load(&run_dir.join("tokenizer.json"))?;
            if saved_tokenizer.to_json()? != tokenizer.to_json()? {
                return Err(TrainError::Checkpoint {
                    path,
                    reason: "its tokenizer differs from this data's".into(),
                });
            }
            let model =
                fresh.load_named(checkpoint.weights.clone(), &path.join("model.safetensors"))?;
            let optimizer =
                checkpoint.optimizer(settings, &model, &device.clone().without_autodiff())?;
            (
                model,
                optimizer,
                saved.step,
                SplitMix64 {
                    state: saved.rng_state,
                },
            )
        } else {
            (fresh, AdamW::new(settings), 0, SplitMix64::new(config.seed))
        };
        let config_json = serde_json::to_string_pretty(&config).expect("config serialises");
        std::fs::write(run_dir.join("config.json"), config_json).map_err(|source| {
            TrainError::Io {
                path: run_dir.join("config.json"),
                source,
            }
        })?;
        tokenizer.save(&run_dir.join("tokenizer.json"))?;
        std::fs::write(
            run_dir.join("model_config.json"),
            serde_json::to_string_pretty(&gpt_config).expect("config"),
        )
        .map_err(|source| TrainError::Io {
            path: run_dir.join("model_config.json"),
            source,
        })?;
        Ok(Self {
            config,
            run_dir: run_dir.to_path_buf(),
            model,
            optimizer,
            source,
            step,
            rng,
            device: device.clone(),
            fail_checkpoint_after_files: None,
        })
    }

    fn batch(&mut self, split: Split) -> TokenBatch {
        let rng = &mut self.rng;
        self.source.batch(
            split,
            self.config.batch_size,
            self.config.model.block_size,
            &mut |n| rng.below(n),
        )
    }

    /// Runs until `max_iters` (or `stop_at`, for tests), evaluating and checkpointing every
    /// `eval_interval` steps and at the end. Ctrl-C (`interrupt`) saves and returns.
    pub fn run(
        &mut self,
        interrupt: &AtomicBool,
        stop_at: Option<usize>,
        mut on_event: impl FnMut(&Event),
    ) -> Result<RunSummary, TrainError> {
        let mut log = MetricsLog::open(&self.run_dir, (self.step > 0).then_some(self.step))?;
        let schedule = WarmupCosine {
            lr: self.config.lr,
            min_lr: self.config.min_lr,
            warmup_iters: self.config.warmup_iters,
            decay_iters: self.config.lr_decay_iters,
        };
        let end = stop_at
            .unwrap_or(self.config.max_iters)
            .min(self.config.max_iters);
        let started = Instant::now();
        let (mut steps_here, mut tokens_here) = (0usize, 0usize);
        let mut last_good = if self.step > 0 { self.step } else { 0 };
        let mut final_eval = None;
        while self.step < end {
            if interrupt.load(Ordering::SeqCst) {
                self.save()?;
                on_event(&Event::Interrupted { step: self.step });
                return Ok(self.summary(final_eval, true, started, steps_here, tokens_here));
            }
            let t0 = Instant::now();
            let lr = schedule.at(self.step);
            // Dropout masks come from the device's generator; seeding it per step makes them
            // a function of the step, so a resumed run draws the same ones.
            self.device
                .seed(self.config.seed.wrapping_add(self.step as u64));
            let mut grads = NamedGrads::default();
            let mut loss_sum = 0.0;
            for _ in 0..self.config.grad_accum {
                let batch = self.batch(Split::Train);
                let (x, y) = tensors(&batch, &self.device);
                let loss = cross_entropy(self.model.forward(x), y, Some(IGNORE));
                let loss = if self.config.grad_accum > 1 {
                    loss.div_scalar(self.config.grad_accum as f64)
                } else {
                    loss
                };
                let g = loss.backward();
                loss_sum += loss.into_scalar::<f32>() as f64;
                grads.accumulate(NamedGrads::collect(&self.model, &g));
            }
            if !loss_sum.is_finite() {
                return Err(TrainError::Diverged {
                    step: self.step + 1,
                    loss: loss_sum,
                    last_good,
                });
            }
            let grad_norm = grads.global_norm();
            if !grad_norm.is_finite() {
                return Err(TrainError::Diverged {
                    step: self.step + 1,
                    loss: grad_norm,
                    last_good,
                });
            }
            let scale = clip_factor(grad_norm, self.config.grad_clip);
            let model = self.model.clone();
            self.model = self.optimizer.step(model, &grads, lr, scale);
            self.step += 1;
            let elapsed = t0.elapsed().as_secs_f64();
            let tokens =
                self.config.batch_size * self.config.grad_accum * self.config.model.block_size;
            steps_here += 1;
            tokens_here += tokens;
            let mut record =
                MetricsRecord::update(self.step, loss_sum, lr, grad_norm, elapsed, tokens);
            if self.step.is_multiple_of(self.config.eval_interval) || self.step == end {
                let (train_loss, _) = self.evaluate(Split::Train);
                let (val_loss, val_accuracy) = self.evaluate(Split::Val);
                record.train_loss = Some(train_loss);
                record.val_loss = Some(val_loss);
                record.val_accuracy = Some(val_accuracy);
                record.attention = Some(self.attention_stats()?);
                final_eval = Some((train_loss, val_loss, val_accuracy));
                on_event(&Event::Step(record.clone()));
                on_event(&Event::Eval {
                    step: self.step,
                    train_loss,
                    val_loss,
                    val_accuracy,
                });
                log.append(&record)?;
                self.save()?;
                last_good = self.step;
                on_event(&Event::Checkpoint { step: self.step });
            } else {
                on_event(&Event::Step(record.clone()));
                log.append(&record)?;
            }
        }
        Ok(self.summary(final_eval, false, started, steps_here, tokens_here))
    }

    fn summary(
        &self,
        final_eval: Option<(f64, f64, f64)>,
        interrupted: bool,
        started: Instant,
        steps: usize,
        tokens: usize,
    ) -> RunSummary {
        let wall_s = started.elapsed().as_secs_f64();
        RunSummary {
            step: self.step,
            final_eval,
            interrupted,
            wall_s,
            ms_per_iter: if steps > 0 {
                wall_s * 1e3 / steps as f64
            } else {
                0.0
            },
            tokens_per_s: tokens as f64 / wall_s.max(1e-9),
        }
    }

    /// Mean loss and argmax accuracy over `eval_iters` batches of `split`, without autodiff
    /// or dropout. The batches come from a generator seeded by the step, so evaluation does
    /// not disturb the training batch sequence.
    pub fn evaluate(&self, split: Split) -> (f64, f64) {
        let model = self.model.valid();
        let device = self.device.clone().without_autodiff();
        let mut rng = SplitMix64::new(self.config.seed ^ 0x5eed_0e7a1 ^ (self.step as u64) << 20);
        let (mut loss, mut correct, mut counted) = (0.0, 0usize, 0usize);
        for _ in 0..self.config.eval_iters {
            let batch = self.source.batch(
                split,
                self.config.batch_size,
                self.config.model.block_size,
                &mut |n| rng.below(n),
            );
            let (x, y) = tensors(&batch, &device);
            let logits = model.forward(x);
            let predicted: Vec<i64> = logits
                .clone()
                .argmax(2)
                .into_data()
                .convert::<i64>()
                .try_into_vec_as::<i64>()
                .expect("int predictions");
            for (p, t) in predicted.iter().zip(&batch.targets) {
                if *t != IGNORE {
                    counted += 1;
                    correct += (*p == *t) as usize;
                }
            }
            loss += cross_entropy(logits, y, Some(IGNORE)).into_scalar::<f32>() as f64;
        }
        (
            loss / self.config.eval_iters as f64,
            correct as f64 / counted.max(1) as f64,
        )
    }

    /// Per-layer, per-head attention statistics on one validation batch.
    pub fn attention_stats(&self) -> Result<Vec<HeadRecord>, TrainError> {
        let model = self.model.valid();
        let device = self.device.clone().without_autodiff();
        let mut rng = SplitMix64::new(self.config.seed ^ 0xa77e_4710);
        let batch = self.source.batch(
            Split::Val,
            self.config.batch_size,
            self.config.model.block_size,
            &mut |n| rng.below(n),
        );
        let (x, _) = tensors(&batch, &device);
        let recorded = model.forward_detailed(x, None, true)?;
        let mut out = Vec::new();
        for (layer, probs) in recorded.attention.into_iter().enumerate() {
            for (head, s) in attention_stats(probs).into_iter().enumerate() {
                out.push(HeadRecord {
                    layer,
                    head,
                    entropy: s.entropy,
                    mean_distance: s.mean_distance,
                    max_prob: s.max_prob,
                    first_token_mass: s.first_token_mass,
                });
            }
        }
        Ok(out)
    }

    /// Writes the checkpoint for the current step.
    pub fn save(&mut self) -> Result<(), TrainError> {
        let state = RunState {
            step: self.step,
            rng_state: self.rng.state,
            optimizer_t: self.optimizer.t,
            config: self.config.clone(),
            vocab_size: self.model.vocab_size,
        };
        let fail = self.fail_checkpoint_after_files.take();
        checkpoint::save(&self.run_dir, &self.model, &self.optimizer, &state, fail)
    }
}

/// The AdamW settings of a config.
pub fn adamw_settings(config: &TrainConfig) -> AdamWSettings {
    AdamWSettings {
        beta1: config.beta1,
        beta2: config.beta2,
        eps: 1e-8,
        weight_decay: config.weight_decay,
    }
}

/// A batch as `[batch, seq]` input and target tensors.
pub fn tensors(batch: &TokenBatch, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let shape = [batch.batch, batch.seq];
    (
        Tensor::from_data(TensorData::new(batch.inputs.clone(), shape), device),
        Tensor::from_data(TensorData::new(batch.targets.clone(), shape), device),
    )
}

/// Mean next-token loss over an entire split of a text dataset, in consecutive windows of
/// `block_size` tokens (the last partial window dropped), `batch_size` windows at a time. Unlike
/// the periodic estimate on random batches, this is the same number every time it is run.
pub fn full_split_loss(
    model: &Gpt,
    dataset: &qkv_data::TextDataset,
    split: Split,
    block_size: usize,
    batch_size: usize,
    device: &Device,
) -> f64 {
    let ids = match split {
        Split::Train => &dataset.train,
        Split::Val => &dataset.val,
    };
    let windows = (ids.len().saturating_sub(1)) / block_size;
    let (mut total, mut count) = (0.0f64, 0usize);
    for first in (0..windows).step_by(batch_size.max(1)) {
        let n = batch_size.min(windows - first);
        let mut batch = TokenBatch {
            batch: n,
            seq: block_size,
            inputs: Vec::new(),
            targets: Vec::new(),
        };
        for w in first..first + n {
            let start = w * block_size;
            batch
                .inputs
                .extend(ids[start..start + block_size].iter().map(|&t| t as i64));
            batch.targets.extend(
                ids[start + 1..start + block_size + 1]
                    .iter()
                    .map(|&t| t as i64),
            );
        }
        let (x, y) = tensors(&batch, device);
        let loss = cross_entropy(model.forward(x), y, None).into_scalar::<f32>() as f64;
        total += loss * (n * block_size) as f64;
        count += n * block_size;
    }
    total / count.max(1) as f64
}
