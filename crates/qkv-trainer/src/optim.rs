//! AdamW with decoupled weight decay on matrices only, global-norm gradient clipping, and
//! gradient accumulation, written out over the model's named parameters.
//!
//! Burn ships an AdamW, but its clipping is per tensor and its weight decay applies to every
//! parameter; nanoGPT (and PyTorch's `clip_grad_norm_`) clip by the norm of *all* gradients
//! together and decay only 2-D weights (not biases, LayerNorms). The state is kept by
//! parameter name, so it can be saved, inspected and resumed exactly.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::Gradients;
use qkv_tensor_ops::fused::{AdamWStep, adamw_update};
use qkv_transformer::weights::{NamedMapper, NamedVisitor, map_named, visit_named};

/// AdamW's hyper-parameters (PyTorch's names and meaning).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWSettings {
    /// β₁, the decay of the first moment.
    pub beta1: f64,
    /// β₂, the decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay, applied to parameters of rank ≥ 2 only.
    pub weight_decay: f64,
}

/// Gradients by parameter name, flattened, on the inner (non-autodiff) device.
#[derive(Debug, Clone, Default)]
pub struct NamedGrads(pub BTreeMap<String, Tensor<1>>);

impl NamedGrads {
    /// Reads every parameter's gradient out of `grads`.
    pub fn collect<M: Module>(model: &M, grads: &Gradients) -> Self {
        struct Collect<'a> {
            grads: &'a Gradients,
            out: BTreeMap<String, Tensor<1>>,
        }
        impl NamedVisitor for Collect<'_> {
            fn visit<const D: usize>(&mut self, name: &str, param: &Param<Tensor<D>>) {
                if let Some(g) = param.val().grad(self.grads) {
                    let n = g.shape().num_elements();
                    self.out.insert(name.to_string(), g.reshape([n]));
                }
            }
        }
        let mut collect = Collect {
            grads,
            out: BTreeMap::new(),
        };
        visit_named(model, &mut collect);
        Self(collect.out)
    }

    /// Adds `other` into `self` (gradient accumulation).
    pub fn accumulate(&mut self, other: NamedGrads) {
        for (name, g) in other.0 {
            let sum = match self.0.remove(&name) {
                Some(old) => old + g,
                None => g,
            };
            self.0.insert(name, sum);
        }
    }

    /// Every gradient moved to `device` (a no-op for those already there).
    pub fn to_device(self, device: &Device) -> Self {
        Self(
            self.0
                .into_iter()
                .map(|(name, g)| (name, g.to_device(device)))
                .collect(),
        )
    }

    /// The L2 norm of all gradients together (one device round trip). The per-parameter sums
    /// of squares are added as one-element tensors rather than concatenated: on a GPU with
    /// Burn's fusion the additions fuse into a few kernels, where a concatenation launches
    /// one copy per parameter.
    pub fn global_norm(&self) -> f64 {
        let total = self
            .0
            .values()
            .map(|g| g.clone().powi_scalar(2).sum())
            .reduce(|a, b| a + b);
        match total {
            Some(total) => (total.into_scalar::<f32>() as f64).sqrt(),
            None => 0.0,
        }
    }
}

/// First and second moments of one parameter, flattened.
#[derive(Debug, Clone)]
pub struct Moments {
    /// Running mean of gradients.
    pub m: Tensor<1>,
    /// Running mean of squared gradients.
    pub v: Tensor<1>,
}

/// AdamW over a module's named parameters.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Hyper-parameters.
    pub settings: AdamWSettings,
    /// Moments by parameter name.
    pub state: BTreeMap<String, Moments>,
    /// Updates taken so far (for bias correction).
    pub t: u64,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(settings: AdamWSettings) -> Self {
        Self {
            settings,
            state: BTreeMap::new(),
            t: 0,
        }
    }

    /// One update with learning rate `lr`, gradients multiplied by `grad_scale` first
    /// (the clipping factor, or `1/accumulation`), PyTorch's `torch.optim.AdamW` formula:
    ///
    /// ```text
    /// p ← p·(1 − lr·wd)              (rank ≥ 2 only)
    /// m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²
    /// p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)
    /// ```
    pub fn step<M: Module>(&mut self, model: M, grads: &NamedGrads, lr: f64, grad_scale: f64) -> M {
        self.t += 1;
        let s = self.settings;
        let bias1 = 1.0 - s.beta1.powi(self.t as i32);
        let bias2_sqrt = (1.0 - s.beta2.powi(self.t as i32)).sqrt();
        struct Update<'a> {
            grads: &'a NamedGrads,
            state: &'a mut BTreeMap<String, Moments>,
            settings: AdamWSettings,
            lr: f64,
            grad_scale: f64,
            bias1: f64,
            bias2_sqrt: f64,
        }
        impl NamedMapper for Update<'_> {
            fn map<const D: usize>(
                &mut self,
                name: &str,
                param: Param<Tensor<D>>,
            ) -> Param<Tensor<D>> {
                let Some(grad) = self.grads.0.get(name) else {
                    return param;
                };
                let s = self.settings;
                let (m, v) = match self.state.remove(name) {
                    Some(Moments { m, v }) => (m, v),
                    None => (grad.zeros_like(), grad.zeros_like()),
                };
                let decay = if D >= 2 { s.weight_decay } else { 0.0 };
                let step = AdamWStep {
                    beta1: s.beta1 as f32,
                    beta2: s.beta2 as f32,
                    eps: s.eps as f32,
                    decay_factor: (1.0 - self.lr * decay) as f32,
                    step_size: (self.lr / self.bias1) as f32,
                    bias2_sqrt: self.bias2_sqrt as f32,
                    grad_scale: self.grad_scale as f32,
                };
                // The value moves out of the parameter (not a clone), so the update can write
                // over it when nothing else holds it.
                let mut moments = None;
                let param = param.map(|p| {
                    let shape = p.shape();
                    let tracked = p.is_require_grad();
                    let on_autodiff = p.is_autodiff();
                    let n = shape.num_elements();
                    let (x, m, v) = adamw_update(p.inner().reshape([n]), grad.clone(), m, v, step);
                    moments = Some(Moments { m, v });
                    let x = x.reshape(shape);
                    match (on_autodiff, tracked) {
                        (false, _) => x,
                        (true, false) => x.autodiff(),
                        (true, true) => x.autodiff().require_grad(),
                    }
                });
                if let Some(moments) = moments {
                    self.state.insert(name.to_string(), moments);
                }
                param
            }
        }
        let mut update = Update {
            grads,
            state: &mut self.state,
            settings: s,
            lr,
            grad_scale,
            bias1,
            bias2_sqrt,
        };
        map_named(model, &mut update)
    }
}

/// PyTorch's `clip_grad_norm_` factor: `min(1, max_norm / (norm + 1e-6))`; 1 when clipping
/// is off (`max_norm <= 0`).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 {
        1.0
    } else {
        (max_norm / (norm + 1e-6)).min(1.0)
    }
}
