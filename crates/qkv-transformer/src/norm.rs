//! LayerNorm as a module whose forward pass is one fused op (see `qkv_tensor_ops::fused`).

use burn::module::{Initializer, Param};
use burn::prelude::*;

/// LayerNorm over the last dimension, `(x - mean) / sqrt(var + ε) · γ + β`. The parameters
/// are named `weight` (γ) and `bias` (β), as in PyTorch and Hugging Face, so that their
/// module paths are the names in weight files (see `crate::weights`). Its forward pass is `qkv_tensor_ops::fused::layer_norm`: one kernel forward
/// and one backward on Flex, the explicit tensor ops on every other backend.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// The learned scale γ, `[d_model]`, initialised to 1.
    pub weight: Param<Tensor<1>>,
    /// The learned shift β, `[d_model]`, initialised to 0; `None` without biases.
    pub bias: Option<Param<Tensor<1>>>,
    /// Added to the variance before the square root.
    pub epsilon: f64,
}

impl LayerNorm {
    /// A LayerNorm over `d_model` features: γ = 1, β = 0 (when `bias`).
    pub fn new(d_model: usize, epsilon: f64, bias: bool, device: &Device) -> Self {
        Self {
            weight: Initializer::Ones.init([d_model], device),
            bias: bias.then(|| Initializer::Zeros.init([d_model], device)),
            epsilon,
        }
    }

    /// # Shapes
    /// - `x`: `[..., d_model]` -> `[..., d_model]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        qkv_tensor_ops::fused::layer_norm(
            x,
            self.weight.val(),
            self.bias.as_ref().map(Param::val),
            self.epsilon,
        )
    }

    /// The residual add that feeds this LayerNorm, and the LayerNorm, as one op
    /// (`qkv_tensor_ops::fused::add_layer_norm`): returns `(x + branch, self(x + branch))`, the
    /// new residual stream and what the next sub-layer reads.
    ///
    /// # Shapes
    /// - `x`, `branch`: `[..., d_model]`
    /// - returns `([..., d_model], [..., d_model])`
    pub fn forward_residual<const D: usize>(
        &self,
        x: Tensor<D>,
        branch: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        qkv_tensor_ops::fused::add_layer_norm(
            x,
            branch,
            self.weight.val(),
            self.bias.as_ref().map(Param::val),
            self.epsilon,
        )
    }
}
