//! One training step, the one the trainer, the benchmarks and the parity tests all take:
//! forward and backward over each micro-batch, the gradients summed, clipped by their global
//! norm, and one AdamW update; in f32, or in half precision with f32 master weights
//! ([`train_step_mixed`], see [`crate::precision`]).

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};

use crate::error::TrainError;
use crate::optim::{AdamW, NamedGrads, clip_factor};
use crate::precision::MixedPrecision;

/// What one step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The loss, averaged over the micro-batches.
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether AdamW was applied: false when the loss or the gradient norm is not a finite
    /// number, in which case the model comes back unchanged.
    pub applied: bool,
    /// f16 only: the scaled gradients overflowed, so the step was skipped (the model comes
    /// back unchanged) and the loss scale halved. The caller retries the step; it is not a
    /// divergence unless the scale has fallen to 1 (then `applied` is false and this is
    /// false too).
    pub overflowed: bool,
}

/// One update of `model`: `loss_of` is called `micro_batches` times (each call draws its own
/// batch and returns its scalar loss, shape `[1]`); the gradients of the mean loss are
/// clipped to the global norm `grad_clip` (0 turns clipping off) and AdamW steps with
/// learning rate `lr`.
///
/// When the loss or the gradient norm is NaN or infinite the update is skipped, the model is
/// returned as it was, and the report says so: the caller decides what divergence means.
pub fn train_step<M: Module>(
    model: M,
    optimizer: &mut AdamW,
    micro_batches: usize,
    lr: f64,
    grad_clip: f64,
    loss_of: impl FnMut(&M) -> Result<Tensor<1>, TrainError>,
) -> Result<(M, StepReport), TrainError> {
    let mut f32 = MixedPrecision::default();
    train_step_mixed(
        model,
        optimizer,
        &mut f32,
        micro_batches,
        lr,
        grad_clip,
        loss_of,
    )
}

/// [`train_step`] in `mixed`'s precision: `loss_of` gets the model with its parameters cast
/// to the compute type (by casts autodiff records, so the gradients reach `model`'s f32
/// parameters in f32), and its loss is cast to f32. With f16, the loss is multiplied by the
/// loss scale before the backward pass and the gradients divided by it before clipping and
/// AdamW; a step whose scaled gradients overflow comes back with `overflowed` set, the model
/// unchanged and the scale halved.
pub fn train_step_mixed<M: Module>(
    model: M,
    optimizer: &mut AdamW,
    mixed: &mut MixedPrecision,
    micro_batches: usize,
    lr: f64,
    grad_clip: f64,
    mut loss_of: impl FnMut(&M) -> Result<Tensor<1>, TrainError>,
) -> Result<(M, StepReport), TrainError> {
    // The step is hundreds of short parallel phases: keep the pool's other workers awake
    // between them instead of waking them with a system call each time.
    let _warm = qkv_tensor_ops::pool::KeepWarm::start();
    let micro_batches = micro_batches.max(1);
    let factor = mixed.loss_scale() / micro_batches as f64;
    let mut grads = NamedGrads::default();
    let mut loss_sum = 0.0;
    for _ in 0..micro_batches {
        let compute = mixed.compute_model(&model);
        let mut loss = loss_of(&compute)?;
        if loss.dtype() != DType::F32 {
            loss = loss.cast(FloatDType::F32);
        }
        let scaled = if factor != 1.0 {
            loss.clone().mul_scalar(factor)
        } else {
            loss.clone()
        };
        let g = scaled.backward();
        loss_sum += loss.into_scalar::<f32>() as f64 / micro_batches as f64;
        grads.accumulate(NamedGrads::collect(&model, &g));
    }
    let scale = mixed.loss_scale();
    let scaled_norm = if loss_sum.is_finite() {
        grads.global_norm()
    } else {
        f64::NAN
    };
    let overflowed =
        mixed.scaler().is_some() && loss_sum.is_finite() && !scaled_norm.is_finite() && scale > 1.0;
    if overflowed {
        mixed.record(true);
        let report = StepReport {
            loss: loss_sum,
            grad_norm: f64::INFINITY,
            applied: false,
            overflowed: true,
        };
        return Ok((model, report));
    }
    let (model, report) = finish_update(
        model,
        optimizer,
        grads,
        loss_sum,
        scaled_norm / scale,
        lr,
        grad_clip,
        scale,
    );
    if report.applied {
        mixed.record(false);
    }
    Ok((model, report))
}

/// The end of every step, one device or several: the global norm of the summed gradients,
/// then AdamW, unless the loss or the norm is not a finite number (then the model comes back
/// unchanged and the report says so).
pub(crate) fn apply_update<M: Module>(
    model: M,
    optimizer: &mut AdamW,
    grads: NamedGrads,
    loss_sum: f64,
    lr: f64,
    grad_clip: f64,
) -> (M, StepReport) {
    let grad_norm = if loss_sum.is_finite() {
        grads.global_norm()
    } else {
        f64::NAN
    };
    finish_update(
        model, optimizer, grads, loss_sum, grad_norm, lr, grad_clip, 1.0,
    )
}

/// AdamW on gradients of a loss multiplied by `loss_scale`, whose unscaled global norm is
/// `grad_norm`: clipped by that norm, with the scale divided out as AdamW reads each
/// gradient; skipped when the loss or the norm is not a finite number.
#[allow(clippy::too_many_arguments)]
fn finish_update<M: Module>(
    model: M,
    optimizer: &mut AdamW,
    grads: NamedGrads,
    loss_sum: f64,
    grad_norm: f64,
    lr: f64,
    grad_clip: f64,
    loss_scale: f64,
) -> (M, StepReport) {
    let applied = loss_sum.is_finite() && grad_norm.is_finite();
    let report = StepReport {
        loss: loss_sum,
        grad_norm,
        applied,
        overflowed: false,
    };
    if !applied {
        return (model, report);
    }
    let grad_scale = clip_factor(grad_norm, grad_clip) / loss_scale;
    let model = optimizer.step(model, &grads, lr, grad_scale);
    (model, report)
}
