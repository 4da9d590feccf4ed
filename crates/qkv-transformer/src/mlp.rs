//! The position-wise feed-forward network of a transformer block, and GELU.

use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use crate::config::Activation;

/// `dropout(proj(act(fc(x))))`: widen to `d_ff`, apply GELU, project back to `d_model`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[d_model, d_ff]`
    pub fc: Linear,
    /// `[d_ff, d_model]`
    pub proj: Linear,
    /// Dropout on the output (the residual branch).
    pub dropout: Dropout,
    /// Whether GELU uses its tanh approximation.
    pub tanh_gelu: bool,
}

impl Mlp {
    /// A new MLP. `proj_std` is the standard deviation of the output projection's weights
    /// (GPT-2 scales it down with depth).
    pub fn new(
        d_model: usize,
        d_ff: usize,
        bias: bool,
        dropout: f64,
        activation: &Activation,
        proj_std: f64,
        device: &Device,
    ) -> Self {
        let linear = |d_in, d_out, std| {
            LinearConfig::new(d_in, d_out)
                .with_bias(bias)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device)
        };
        Self {
            fc: crate::gpt::zero_bias(linear(d_model, d_ff, 0.02)),
            proj: crate::gpt::zero_bias(linear(d_ff, d_model, proj_std)),
            dropout: DropoutConfig::new(dropout).init(),
            tanh_gelu: *activation == Activation::GeluTanh,
        }
    }

    /// # Shapes
    /// `x`: `[rows, d_model]` -> `[rows, d_model]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let hidden = self.fc.forward(x);
        let hidden = if self.tanh_gelu {
            gelu_tanh(hidden)
        } else {
            gelu(hidden)
        };
        self.dropout.forward(self.proj.forward(hidden))
    }
}

/// GELU's tanh approximation, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, as GPT-2 uses.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let sqrt_2_over_pi = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner =
        (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(sqrt_2_over_pi);
    (x.clone() * (inner.tanh().add_scalar(1.0))).mul_scalar(0.5)
}
