//! The training loop, one for every [`Task`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use qkv_tensor_ops::fused::{gpu_kernels_serve, with_dropout_seeds};
use qkv_transformer::SplitMix64;
use qkv_transformer::weights::write_atomically;

use crate::checkpoint::{self, Checkpoint, RunState, SaveHook};
use crate::error::TrainError;
use crate::metrics::{MetricsLog, MetricsRecord};
use crate::optim::AdamW;
use crate::parallel::{Worker, train_step_parallel};
use crate::precision::{MixedPrecision, Precision};
use crate::step::train_step_mixed;
use crate::task::{Evaluation, Task};

/// How [`Trainer::new`] treats the run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run; the directory must not hold one already.
    Fresh,
    /// Continue the run saved in the directory, exactly where its last checkpoint stopped.
    Resume,
    /// A new run that replaces whatever run the directory holds.
    Overwrite,
}

/// What the loop reports as it goes, for a progress display.
#[derive(Debug, Clone)]
pub enum Event {
    /// An update finished.
    Step(MetricsRecord),
    /// An evaluation finished (its figures are also in the step record).
    Eval {
        /// The step.
        step: usize,
        /// What it measured.
        evaluation: Evaluation,
    },
    /// f16 only: the scaled gradients overflowed, so the update was skipped, the loss scale
    /// halved, and the step is taken again with a fresh batch.
    LossScaleCut {
        /// The step that is taken again (1-based, as in the metrics).
        step: usize,
        /// The loss scale from now on.
        scale: f64,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Its step.
        step: usize,
    },
    /// Ctrl-C or the time limit: the run saved and stopped.
    Stopped {
        /// The step it stopped at.
        step: usize,
        /// Why.
        reason: StopReason,
    },
}

/// Why a run stopped before `max_iters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Ctrl-C (the interrupt flag).
    Interrupted,
    /// The recipe's time limit passed.
    TimeLimit,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Updates completed in total (resumed ones included).
    pub step: usize,
    /// The last evaluation, if one ran.
    pub final_eval: Option<Evaluation>,
    /// Why it stopped early, if it did.
    pub stopped: Option<StopReason>,
    /// Seconds this process spent training.
    pub wall_s: f64,
    /// Mean milliseconds per update in this process.
    pub ms_per_iter: f64,
    /// Mean tokens per second in this process.
    pub tokens_per_s: f64,
}

/// A training run: a task, its model and optimizer, and the directory it writes.
pub struct Trainer<T: Task> {
    /// What is trained.
    pub task: T,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The model, on an autodiff device.
    pub model: T::Model,
    /// The optimizer.
    pub optimizer: AdamW,
    /// Updates done.
    pub step: usize,
    /// Batching generator.
    pub rng: SplitMix64,
    /// The precision steps compute in, and the f16 loss scale.
    pub mixed: MixedPrecision,
    device: Device,
    /// Data-parallel workers; empty for a one-device run.
    workers: Vec<Worker>,
    /// Called at each point of every checkpoint save (tests stop saves with it).
    pub save_hook: Option<SaveHook>,
}

use burn::prelude::Device;

impl<T: Task> Trainer<T> {
    /// A run of `task` in `run_dir` on `device`, which must support autodiff
    /// (`Device::flex().autodiff()` and the like). See [`Start`] for what happens to a run
    /// already in the directory.
    pub fn new(task: T, run_dir: &Path, device: &Device, start: Start) -> Result<Self, TrainError> {
        let recipe = task.recipe();
        recipe.precision.check(device)?;
        if start == Start::Fresh && checkpoint::holds_a_run(run_dir) {
            return Err(TrainError::RunExists {
                path: run_dir.to_path_buf(),
            });
        }
        if start == Start::Overwrite {
            for name in ["checkpoint", "checkpoint.old", "checkpoint.tmp"] {
                let dir = run_dir.join(name);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|source| TrainError::Io {
                        path: dir.clone(),
                        source,
                    })?;
                }
            }
        }
        std::fs::create_dir_all(run_dir).map_err(|source| TrainError::Io {
            path: run_dir.into(),
            source,
        })?;
        device.seed(recipe.seed);
        let fresh = task.init_model(device)?;
        // Burn initialises a parameter lazily, on first use, from the device's generator as
        // it is at that moment. Forced here, right after seeding, the initial weights are a
        // function of the seed alone, whatever touches them first (a forward pass, the copy
        // a data-parallel worker takes, a parameter count).
        checkpoint::optimizer_names(&fresh);
        let (model, optimizer, step, rng, scaler) = if start == Start::Resume {
            let checkpoint = Checkpoint::load(run_dir)?;
            if checkpoint.state.task != T::KIND {
                return Err(TrainError::Checkpoint {
                    path: checkpoint.dir.clone(),
                    reason: format!(
                        "it is a {} run, this is a {} run",
                        checkpoint.state.task,
                        T::KIND
                    ),
                });
            }
            task.check_resume(&checkpoint.state, run_dir)?;
            let path = checkpoint.weights_path();
            let model = task.load_weights(fresh, checkpoint.weights.clone(), &path)?;
            let optimizer =
                checkpoint.optimizer(recipe.adamw, &model, &device.clone().without_autodiff())?;
            let rng = SplitMix64 {
                state: checkpoint.state.rng_state,
            };
            let scaler = checkpoint.state.loss_scaler.clone();
            (model, optimizer, checkpoint.state.step, rng, scaler)
        } else {
            (
                fresh,
                AdamW::new(recipe.adamw),
                0,
                SplitMix64::new(recipe.seed),
                None,
            )
        };
        let mixed = MixedPrecision::resume(recipe.precision, scaler);
        for (name, bytes) in task.side_files()? {
            write_atomically(&run_dir.join(name), &bytes)?;
        }
        Ok(Self {
            task,
            run_dir: run_dir.to_path_buf(),
            model,
            optimizer,
            step,
            rng,
            mixed,
            device: device.clone(),
            workers: Vec::new(),
            save_hook: None,
        })
    }

    /// Trains data-parallel from now on: every batch is cut across `devices`
    /// (`(name, autodiff device)` pairs; see [`crate::parallel`]), and the model, the optimizer,
    /// evaluations and checkpoints stay on the trainer's own device. The recipe, the batches,
    /// checkpoints and resume are those of a one-device run; a run may be resumed with other
    /// devices. One device is the same as none: the plain one-device step on the trainer's
    /// own device.
    pub fn with_devices(mut self, devices: Vec<(String, Device)>) -> Result<Self, TrainError> {
        let workers = Worker::list(devices)?;
        if workers.len() > 1 && self.mixed.precision() != Precision::F32 {
            return Err(TrainError::Config(format!(
                "mixed precision ({}) trains on one device for now: drop --devices, or train \
                 in f32 (--dtype f32)",
                self.mixed.precision()
            )));
        }
        if let Some(bad) = workers.iter().find(|w| !w.device.is_autodiff()) {
            return Err(TrainError::Config(format!(
                "device {} has no autodiff: give the trainer autodiff devices",
                bad.name
            )));
        }
        self.workers = if workers.len() > 1 {
            workers
        } else {
            Vec::new()
        };
        Ok(self)
    }

    /// The data-parallel workers (empty for a one-device run).
    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// Runs until the recipe's `max_iters` (or `stop_at`, if sooner), evaluating and
    /// checkpointing every `eval_interval` steps and at the end. Ctrl-C (`interrupt`) and the
    /// time limit evaluate, save and return. A loss or gradient norm that is not a number
    /// stops the run with [`TrainError::Diverged`], keeping the last checkpoint.
    pub fn run(
        &mut self,
        interrupt: &AtomicBool,
        stop_at: Option<usize>,
        mut on_event: impl FnMut(&Event),
    ) -> Result<RunSummary, TrainError> {
        let recipe = self.task.recipe();
        let mut log = MetricsLog::open(&self.run_dir, (self.step > 0).then_some(self.step))?;
        for warning in log.warnings.drain(..) {
            eprintln!("warning: {warning}");
        }
        let end = stop_at.unwrap_or(recipe.max_iters).min(recipe.max_iters);
        let started = Instant::now();
        let stop_reason = || {
            if interrupt.load(Ordering::SeqCst) {
                Some(StopReason::Interrupted)
            } else if recipe
                .time_limit_s
                .is_some_and(|limit| started.elapsed().as_secs_f64() >= limit)
            {
                Some(StopReason::TimeLimit)
            } else {
                None
            }
        };
        let (mut steps_here, mut tokens_here) = (0usize, 0usize);
        let mut last_good = self.step;
        let mut final_eval = None;
        let mut stopped = None;
        while self.step < end {
            // A stop asked for while the last step was reported: save it and return.
            if let Some(reason) = stop_reason() {
                stopped = Some(reason);
                if last_good != self.step {
                    log.sync()?;
                    self.save()?;
                    on_event(&Event::Checkpoint { step: self.step });
                }
                break;
            }
            let t0 = Instant::now();
            let lr = recipe.schedule.at(self.step);
            let (model, report, tokens) = if self.workers.is_empty() {
                // Dropout masks come from the device's generator; seeding it per step makes
                // them a function of the step, so a resumed run draws the same ones. On a GPU,
                // drawing a seed there would wait for the device at every dropout, so the
                // masks' seeds come from a host stream seeded by the step instead.
                let step_seed = recipe.seed.wrapping_add(self.step as u64);
                self.device.seed(step_seed);
                let mut tokens = 0;
                let (task, rng, device) = (&self.task, &mut self.rng, &self.device);
                let (model, optimizer) = (self.model.clone(), &mut self.optimizer);
                let mixed = &mut self.mixed;
                let step = || {
                    train_step_mixed(
                        model,
                        optimizer,
                        mixed,
                        recipe.grad_accum,
                        lr,
                        recipe.grad_clip,
                        |model| {
                            let batch = task.batch(rng);
                            tokens += task.batch_tokens(&batch);
                            task.loss(model, &batch, device)
                        },
                    )
                };
                let (model, report) = if gpu_kernels_serve(device) {
                    with_dropout_seeds(step_seed, step)?
                } else {
                    step()?
                };
                (model, report, tokens)
            } else {
                train_step_parallel(
                    &self.task,
                    self.model.clone(),
                    &mut self.optimizer,
                    &self.workers,
                    &self.device,
                    recipe.grad_accum,
                    lr,
                    recipe.grad_clip,
                    recipe.seed,
                    self.step,
                    &mut self.rng,
                )
                .map_err(|error| match error {
                    TrainError::DeviceFailed { device, reason, .. } => TrainError::DeviceFailed {
                        device,
                        step: self.step + 1,
                        reason,
                        last_good,
                    },
                    other => other,
                })?
            };
            if report.overflowed {
                on_event(&Event::LossScaleCut {
                    step: self.step + 1,
                    scale: self.mixed.loss_scale(),
                });
                continue;
            }
            if !report.applied {
                let bad = if report.loss.is_finite() {
                    report.grad_norm
                } else {
                    report.loss
                };
                return Err(TrainError::Diverged {
                    step: self.step + 1,
                    loss: bad,
                    last_good,
                });
            }
            self.model = model;
            self.step += 1;
            steps_here += 1;
            tokens_here += tokens;
            let elapsed = t0.elapsed().as_secs_f64();
            let mut record = MetricsRecord::update(
                self.step,
                report.loss,
                lr,
                report.grad_norm,
                elapsed,
                tokens,
            );
            stopped = stop_reason();
            let evaluate = self.step.is_multiple_of(recipe.eval_interval)
                || self.step == end
                || stopped.is_some();
            if !evaluate {
                on_event(&Event::Step(record.clone()));
                log.append(&record)?;
                continue;
            }
            let evaluation = {
                use burn::module::Module;
                let device = self.device.clone().without_autodiff();
                self.task
                    .evaluate(&self.model.valid(), self.step, &device)?
            };
            record.train_loss = evaluation.train_loss;
            record.val_loss = Some(evaluation.val_loss);
            record.val_accuracy = Some(evaluation.val_accuracy);
            record.attention = evaluation.attention.clone();
            on_event(&Event::Step(record.clone()));
            on_event(&Event::Eval {
                step: self.step,
                evaluation: evaluation.clone(),
            });
            final_eval = Some(evaluation);
            log.append(&record)?;
            log.sync()?;
            self.save()?;
            last_good = self.step;
            on_event(&Event::Checkpoint { step: self.step });
            if stopped.is_some() {
                break;
            }
        }
        if let Some(reason) = stopped {
            on_event(&Event::Stopped {
                step: self.step,
                reason,
            });
        }
        let records = crate::metrics::read(&self.run_dir.join("metrics.jsonl"))?;
        crate::plot::loss_curve(&records, &self.task.title(), &self.run_dir.join("loss.png"))?;
        if records.iter().any(|r| r.attention.is_some()) {
            crate::plot::attention_curves(&records, &self.run_dir.join("attention_stats.png"))?;
        }
        let wall_s = started.elapsed().as_secs_f64();
        Ok(RunSummary {
            step: self.step,
            final_eval,
            stopped,
            wall_s,
            ms_per_iter: if steps_here > 0 {
                wall_s * 1e3 / steps_here as f64
            } else {
                0.0
            },
            tokens_per_s: tokens_here as f64 / wall_s.max(1e-9),
        })
    }

    /// Writes the checkpoint for the current step.
    pub fn save(&mut self) -> Result<(), TrainError> {
        let state = RunState {
            step: self.step,
            rng_state: self.rng.state,
            optimizer_t: self.optimizer.t,
            task: T::KIND.to_string(),
            config: self.task.config_json(),
            vocab_size: None,
            loss_scaler: self.mixed.scaler().cloned(),
        };
        let weights = self.task.weights_bytes(&self.model);
        checkpoint::save(
            &self.run_dir,
            weights,
            &self.optimizer,
            &state,
            &mut self.save_hook,
        )
    }

    /// The device the model trains on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}
