//! Data-parallel training: one worker thread per device, each on its shard of every batch.
//! The gradients come back to the main device, are summed there (each shard weighted by its
//! share of the batch's loss), and one AdamW update follows there: the same update, up to
//! the order of floating-point sums, as one device computing the whole batch.
//!
//! This is multi-device gradient accumulation, the route of burn-train's multi-device
//! strategy. It asks nothing of a backend but moving tensors between devices, so it runs on
//! every backend: several GPUs, a device served by another process or machine through
//! `burn-remote`, a mix of them, and several workers on the one Flex CPU device. Burn's
//! collectives (`burn::tensor::distributed`, NCCL's all-reduce) exist only on its CUDA
//! backend, which this workspace cannot build or run here; they are not used (see
//! ARCHITECTURE.md).
//!
//! What keeps a run the same as on one device:
//! - the batch is drawn once, on the main thread, by the trainer's generator, and cut into
//!   consecutive rows ([`Shard`]): the effective batch, the data order and the checkpointed
//!   generator state do not depend on the number of devices;
//! - each shard's mean loss is weighted by its share of the batch's loss targets, so the sum
//!   is the batch's mean loss even when shards differ in size or padding;
//! - dropout: each worker draws its masks from a stream seeded by the run's seed, the step,
//!   the micro-batch and its position in the device list (the fused kernels' per-thread
//!   stream, [`qkv_tensor_ops::fused::with_dropout_seeds`], and the device's own generator
//!   elsewhere), so a resumed run draws the same masks. They differ from a one-device run's.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::module::Module;
use burn::prelude::*;
use qkv_data::translate::PAD;
use qkv_data::{IGNORE, TokenBatch, TranslationBatch};
use qkv_tensor_ops::fused::{has_fused_kernels, with_dropout_seeds};
use qkv_transformer::SplitMix64;

use crate::error::TrainError;
use crate::optim::{AdamW, NamedGrads};
use crate::step::{StepReport, apply_update};
use crate::task::Task;

/// A batch that can be cut into shards of consecutive rows for data-parallel workers.
pub trait Shard: Sized {
    /// Rows (sequences, sentence pairs) in the batch.
    fn rows(&self) -> usize;

    /// The rows `rows` as a batch of their own, laid out as in `self` (same padding).
    fn slice_rows(&self, rows: Range<usize>) -> Self;

    /// How many targets the batch's mean loss averages over (labels the loss does not
    /// ignore). A shard's loss weighted by its count over the whole batch's count sums to the
    /// batch's loss.
    fn loss_targets(&self) -> usize;
}

impl Shard for TokenBatch {
    fn rows(&self) -> usize {
        self.batch
    }

    fn slice_rows(&self, rows: Range<usize>) -> Self {
        let cells = rows.start * self.seq..rows.end * self.seq;
        TokenBatch {
            batch: rows.len(),
            seq: self.seq,
            inputs: self.inputs[cells.clone()].to_vec(),
            targets: self.targets[cells].to_vec(),
        }
    }

    fn loss_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }
}

impl Shard for TranslationBatch {
    fn rows(&self) -> usize {
        self.batch
    }

    fn slice_rows(&self, rows: Range<usize>) -> Self {
        let src = rows.start * self.src_len..rows.end * self.src_len;
        let tgt = rows.start * self.tgt_len..rows.end * self.tgt_len;
        TranslationBatch {
            batch: rows.len(),
            src_len: self.src_len,
            tgt_len: self.tgt_len,
            source: self.source[src].to_vec(),
            decoder_input: self.decoder_input[tgt.clone()].to_vec(),
            labels: self.labels[tgt].to_vec(),
        }
    }

    fn loss_targets(&self) -> usize {
        self.labels.iter().filter(|&&t| t != PAD as i64).count()
    }
}

/// `rows` cut into `parts` consecutive ranges whose sizes differ by at most one (the first
/// ones take the remainder). Empty ranges when `parts > rows`.
pub fn split_rows(rows: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1);
    let (base, extra) = (rows / parts, rows % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// One device of a data-parallel run.
#[derive(Debug, Clone)]
pub struct Worker {
    /// How the user named it (`0`, `ws://10.0.0.2:3000`), for messages.
    pub name: String,
    /// The device, with autodiff.
    pub device: Device,
    /// Whether another worker computes on the same device (several workers on one CPU).
    pub shared: bool,
}

impl Worker {
    /// Workers for `devices` (`(name, autodiff device)` pairs, in order). A device may appear
    /// more than once only where each worker can draw its own dropout masks (Flex, whose
    /// fused kernels take a per-thread seed stream); elsewhere the workers would share the
    /// device's one generator and a run would not be repeatable.
    pub fn list(devices: Vec<(String, Device)>) -> Result<Vec<Worker>, TrainError> {
        if devices.is_empty() {
            return Err(TrainError::Config(
                "data-parallel training needs at least one device (--devices)".into(),
            ));
        }
        let mut workers: Vec<Worker> = Vec::with_capacity(devices.len());
        for (name, device) in devices {
            let twin = workers.iter().position(|w| w.device == device);
            if let Some(first) = twin {
                if !has_fused_kernels(&device, burn::tensor::DType::F32) {
                    return Err(TrainError::Config(format!(
                        "device {name} is the same device as {}: only the flex backend runs several workers on one device; list each device once",
                        workers[first].name
                    )));
                }
                workers[first].shared = true;
            }
            workers.push(Worker {
                name,
                device,
                shared: twin.is_some(),
            });
        }
        Ok(workers)
    }
}

/// The dropout seed of worker `worker` for micro-batch `micro` of the update after `step`
/// updates, in a run seeded with `seed`.
fn worker_seed(seed: u64, step: usize, micro: usize, worker: usize) -> u64 {
    let mut rng = SplitMix64::new(seed ^ 0xD1B5_4A32_D192_ED03);
    let mut next = |x: u64| {
        rng.state ^= x;
        rng.next_u64()
    };
    next(step as u64);
    next(micro as u64);
    next(worker as u64)
}

thread_local! {
    /// Whether this thread is computing a worker's share of a step.
    static IN_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the thread as a worker's until dropped.
struct WorkerFlag(bool);

impl WorkerFlag {
    fn set() -> Self {
        Self(IN_WORKER.with(|w| w.replace(true)))
    }
}

impl Drop for WorkerFlag {
    fn drop(&mut self) {
        IN_WORKER.with(|w| w.set(self.0));
    }
}

/// Whether the calling thread is computing a data-parallel worker's share of a step. A
/// program's panic hook can stay quiet for these threads: their panics (a remote device that
/// went away) are caught and come back as [`TrainError::DeviceFailed`].
pub fn in_worker() -> bool {
    IN_WORKER.with(|w| w.get())
}

/// What one worker brought back from a micro-batch.
struct Share {
    loss: f64,
    grads: NamedGrads,
}

/// The message of a caught panic's payload (a device failure's description).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the device's backend panicked".into())
}

/// One data-parallel update of `model` (on the autodiff device `main`, where the optimizer's
/// state lives): `micro_batches` batches drawn from `rng`, each cut across `workers`, whose
/// gradients are summed on `main`, clipped to the global norm `grad_clip` and applied by
/// AdamW with learning rate `lr`. `seed` and `step` (updates done so far) seed the dropout
/// masks. Returns the new model, the report and the tokens computed.
///
/// The first worker computes on the calling thread, the others on threads named
/// `qkv-worker-<i>`; see [`in_worker`]. A worker that fails (an error, or a panic of
/// its backend, such as a remote device whose server went away) makes this return
/// [`TrainError::DeviceFailed`] naming the first failed device, with the model and the
/// optimizer untouched; `step` and `last_good` in it are for the caller to fill in.
#[allow(clippy::too_many_arguments)]
pub fn train_step_parallel<T: Task>(
    task: &T,
    model: T::Model,
    optimizer: &mut AdamW,
    workers: &[Worker],
    main: &Device,
    micro_batches: usize,
    lr: f64,
    grad_clip: f64,
    seed: u64,
    step: usize,
    rng: &mut SplitMix64,
) -> Result<(T::Model, StepReport, usize), TrainError> {
    let (loss_sum, grads, tokens) =
        parallel_gradients(task, &model, workers, main, micro_batches, seed, step, rng)?;
    let (model, report) = apply_update(model, optimizer, grads, loss_sum, lr, grad_clip);
    Ok((model, report, tokens))
}

/// The first half of [`train_step_parallel`]: the summed loss, the summed gradients (on
/// `main`'s inner device) and the tokens of `micro_batches` batches cut across `workers`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn parallel_gradients<T: Task>(
    task: &T,
    model: &T::Model,
    workers: &[Worker],
    main: &Device,
    micro_batches: usize,
    seed: u64,
    step: usize,
    rng: &mut SplitMix64,
) -> Result<(f64, NamedGrads, usize), TrainError> {
    let micro_batches = micro_batches.max(1);
    let main_inner = main.clone().without_autodiff();
    let mut grads = NamedGrads::default();
    let (mut loss_sum, mut tokens) = (0.0, 0);
    for micro in 0..micro_batches {
        let batch = task.batch(rng);
        tokens += task.batch_tokens(&batch);
        if batch.rows() < workers.len() {
            return Err(TrainError::Config(format!(
                "a batch of {} rows cannot be split across {} devices: raise --batch-size to at least {} or list fewer --devices",
                batch.rows(),
                workers.len(),
                workers.len()
            )));
        }
        let total = batch.loss_targets().max(1) as f64;
        let shards: Vec<T::Batch> = split_rows(batch.rows(), workers.len())
            .into_iter()
            .map(|rows| batch.slice_rows(rows))
            .collect();
        let mut jobs: Vec<_> = shards
            .into_iter()
            .zip(workers)
            .enumerate()
            .map(|(i, (shard, worker))| {
                let replica = model.clone();
                let main_inner = main_inner.clone();
                let weight = shard.loss_targets() as f64 / total / micro_batches as f64;
                let worker_seed = worker_seed(seed, step, micro, i);
                move || -> Result<Option<Share>, TrainError> {
                    if weight == 0.0 {
                        return Ok(None);
                    }
                    let work = || {
                        if !worker.shared {
                            worker.device.seed(worker_seed);
                        }
                        with_dropout_seeds(worker_seed, || {
                            let replica = replica.fork(&worker.device);
                            let loss = task
                                .loss(&replica, &shard, &worker.device)?
                                .mul_scalar(weight);
                            let g = loss.backward();
                            let loss = loss.into_scalar::<f32>() as f64;
                            let grads = NamedGrads::collect(&replica, &g).to_device(&main_inner);
                            Ok(Some(Share { loss, grads }))
                        })
                    };
                    let _flag = WorkerFlag::set();
                    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
                        Err(TrainError::DeviceFailed {
                            device: worker.name.clone(),
                            step: 0,
                            reason: panic_text(panic.as_ref()),
                            last_good: 0,
                        })
                    })
                }
            })
            .collect();
        // The first worker runs on the calling thread (on the command line, a thread of the
        // CPU backend's pool, which would otherwise sit idle waiting), the others on threads
        // of their own.
        let first = jobs.remove(0);
        let shares: Vec<Result<Option<Share>, TrainError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .into_iter()
                .enumerate()
                .map(|(i, job)| {
                    std::thread::Builder::new()
                        .name(format!("qkv-worker-{}", i + 1))
                        .spawn_scoped(scope, job)
                        .expect("the OS starts a worker thread")
                })
                .collect();
            let mut shares = vec![first()];
            shares.extend(
                handles
                    .into_iter()
                    .map(|h| h.join().expect("worker panics are caught in the thread")),
            );
            shares
        });
        for share in shares {
            match share {
                Ok(Some(share)) => {
                    loss_sum += share.loss;
                    grads.accumulate(share.grads);
                }
                Ok(None) => {}
                // A panic was caught as `DeviceFailed`; any other error (a batch the model
                // refuses) is the task's, as on one device.
                Err(error) => return Err(error),
            }
        }
    }
    Ok((loss_sum, grads, tokens))
}
