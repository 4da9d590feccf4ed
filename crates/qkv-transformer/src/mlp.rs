//! The position-wise feed-forward network of a transformer block, and GELU.

use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;

use crate::config::Activation;
use qkv_tensor_ops::fused::linear;

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
            fc: crate::init::zero_bias(linear(d_model, d_ff, 0.02)),
            proj: crate::init::zero_bias(linear(d_ff, d_model, proj_std)),
            dropout: DropoutConfig::new(dropout).init(),
            tanh_gelu: *activation == Activation::GeluTanh,
        }
    }

    /// # Shapes
    /// `x`: `[rows, d_model]` -> `[rows, d_model]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.output(self.hidden(x))
    }

    /// The first half: the widened, activated features (the MLP's "neurons").
    ///
    /// # Shapes
    /// `x`: `[rows, d_model]` -> `[rows, d_ff]`
    pub fn hidden(&self, x: Tensor<2>) -> Tensor<2> {
        match &self.fc.bias {
            // The bias and the activation in one op (one kernel each way on Flex).
            Some(bias) => qkv_tensor_ops::fused::bias_gelu(
                qkv_tensor_ops::fused::matmul(x, self.fc.weight.val()),
                bias.val(),
                self.tanh_gelu,
            ),
            None if self.tanh_gelu => gelu_tanh(linear(&self.fc, x)),
            None => qkv_tensor_ops::fused::gelu(linear(&self.fc, x)),
        }
    }

    /// The second half: the features projected back to the model's width, with dropout.
    ///
    /// # Shapes
    /// `hidden`: `[rows, d_ff]` -> `[rows, d_model]`
    pub fn output(&self, hidden: Tensor<2>) -> Tensor<2> {
        qkv_attention::dropout(&self.dropout, linear(&self.proj, hidden))
    }
}

/// Exact GELU, `x·Φ(x) = 0.5·x·(1 + erf(x/√2))` (PyTorch's `nn.GELU()`), written with
/// tensor ops so that autodiff differentiates the function it computes.
///
/// The MLP calls `qkv_tensor_ops::fused::gelu` instead: one kernel forward and one backward
/// on Flex, with the exact derivative, and these same tensor ops on every other backend.
/// This function is the reference the tests hold it against.
pub fn gelu_exact<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let cdf = x
        .clone()
        .div_scalar(std::f64::consts::SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    x * cdf
}

/// GELU's tanh approximation, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, as GPT-2 uses:
/// one fused kernel each way on Flex, tensor ops elsewhere
/// (`qkv_tensor_ops::fused::gelu_tanh_explicit`, the oracle of the tests).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    qkv_tensor_ops::fused::gelu_tanh(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkv_test_support::{assert_close, test_on_cpu_backends, values};

    fn erf(x: f64) -> f64 {
        // Abramowitz-Stegun 7.1.26 is not precise enough; integrate exp(-t²) instead.
        let steps = 20_000;
        let h = x / steps as f64;
        let f = |t: f64| (-t * t).exp();
        let mut sum = f(0.0) + f(x);
        for i in 1..steps {
            sum += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        sum * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    test_on_cpu_backends!(exact_gelu_and_its_gradient, |device: &Device| {
        let points = [-3.0, -1.5, -0.7, 0.0, 0.4, 1.0, 2.2];
        let ad = device.clone().autodiff();
        let x = Tensor::<1>::from_data(points, &ad).require_grad();
        let y = gelu_exact(x.clone());
        let grads = y.clone().sum().backward();
        let cdf = |x: f64| 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
        let pdf = |x: f64| (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let want_y: Vec<f32> = points.iter().map(|&x| (x * cdf(x)) as f32).collect();
        let want_dy: Vec<f32> = points
            .iter()
            .map(|&x| (cdf(x) + x * pdf(x)) as f32)
            .collect();
        assert_close(&values(y), &want_y, 1e-5, "GELU");
        assert_close(&values(x.grad(&grads).unwrap()), &want_dy, 1e-5, "GELU'");
        // Burn's gelu: exact forward; its gradient within 1e-3 of the exact one (exact on
        // Flex, the tanh approximation's on NdArray).
        let xb = Tensor::<1>::from_data(points, &ad).require_grad();
        let yb = burn::tensor::activation::gelu(xb.clone());
        assert_close(&values(yb.clone()), &want_y, 1e-5, "Burn's GELU");
        let gb = yb.sum().backward();
        assert_close(
            &values(xb.grad(&gb).unwrap()),
            &want_dy,
            1e-3,
            "Burn's GELU'",
        );
    });
}
