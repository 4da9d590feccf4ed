//! One training step, the one the trainer, the benchmarks and the parity tests all take:
//! forward and backward over each micro-batch, the gradients summed, clipped by their global
//! norm, and one AdamW update.

use burn::module::Module;
use burn::prelude::*;

use crate::error::TrainError;
use crate::optim::{AdamW, NamedGrads, clip_factor};

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
    mut loss_of: impl FnMut(&M) -> Result<Tensor<1>, TrainError>,
) -> Result<(M, StepReport), TrainError> {
    let micro_batches = micro_batches.max(1);
    let mut grads = NamedGrads::default();
    let mut loss_sum = 0.0;
    for _ in 0..micro_batches {
        let loss = loss_of(&model)?;
        let loss = if micro_batches > 1 {
            loss.div_scalar(micro_batches as f64)
        } else {
            loss
        };
        let g = loss.backward();
        loss_sum += loss.into_scalar::<f32>() as f64;
        grads.accumulate(NamedGrads::collect(&model, &g));
    }
    Ok(apply_update(
        model, optimizer, grads, loss_sum, lr, grad_clip,
    ))
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
    let applied = loss_sum.is_finite() && grad_norm.is_finite();
    let report = StepReport {
        loss: loss_sum,
        grad_norm,
        applied,
    };
    if !applied {
        return (model, report);
    }
    let model = optimizer.step(model, &grads, lr, clip_factor(grad_norm, grad_clip));
    (model, report)
}
