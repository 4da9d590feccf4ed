//! Dropout with `burn::nn::Dropout`'s rules and the fused kernel of `qkv_tensor_ops::fused`.

use burn::nn::Dropout;
use burn::prelude::*;

/// Applies `layer` to `x` as `burn::nn::Dropout::forward` would (active only while training,
/// on an autodiff device, with a non-zero probability), through
/// [`qkv_tensor_ops::fused::dropout`]: a counter-based mask computed in one pass on Flex,
/// recomputed rather than stored for the backward pass.
///
/// - `x`: any shape; returns the same shape
pub fn dropout<const D: usize>(layer: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !is_active(layer, &x.device()) {
        return x;
    }
    qkv_tensor_ops::fused::dropout(x, layer.prob)
}

/// Whether [`dropout`] with `layer` changes tensors on `device`: training, on an autodiff
/// device, with a non-zero probability.
pub fn is_active(layer: &Dropout, device: &Device) -> bool {
    layer.training.is_enabled() && device.is_autodiff() && layer.prob != 0.0
}
