//! Mixed precision: the forward and backward passes in f16 or bf16, the weights, their
//! gradients and AdamW's moments in f32, and (for f16) a dynamic loss scale.
//!
//! Each micro-batch casts the f32 model's parameters to the compute type with a cast that
//! autodiff records ([`cast_params`]), so the half-precision model is a function of the f32
//! one: `loss.backward()` runs the graph in half precision and the casts' backward hands
//! every parameter its gradient in f32. The ops that lose most in half precision (LayerNorm,
//! the attention softmax and the loss) compute in f32 inside `qkv_tensor_ops`; the loss is
//! always an f32 scalar.
//!
//! f16 has 5 exponent bits, so small gradients flush to zero: the loss is multiplied by
//! [`LossScaler::scale`] before the backward pass and the gradients are divided by it before
//! clipping and AdamW. A step whose scaled gradients overflow is skipped and the scale
//! halved; after [`LossScaler::GROWTH_INTERVAL`] good steps in a row it doubles (PyTorch's
//! `GradScaler` defaults). bf16 has f32's exponent range and needs no scale.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// The float type a training step computes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the default).
    #[default]
    F32,
    /// Forward and backward in IEEE half precision, with a dynamic loss scale.
    F16,
    /// Forward and backward in bfloat16 (f32's range, 8 bits of mantissa).
    Bf16,
}

impl Precision {
    /// Every choice, in the order `--dtype` lists them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    /// The dtype the model computes in: `None` for [`Precision::F32`] (no casts at all).
    pub fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::F16 => Some(FloatDType::F16),
            Precision::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// Whether the loss needs scaling: f16 only.
    pub fn loss_scaled(self) -> bool {
        self == Precision::F16
    }

    /// Whether `device` computes in this precision: an error naming the device and what to
    /// do when it does not (NdArray has no half types; wgpu has no bf16, and f16 only on
    /// adapters with 16-bit float shaders).
    pub fn check(self, device: &Device) -> Result<(), TrainError> {
        match self.compute_dtype() {
            Some(dtype) if !device.supports_dtype(dtype) => Err(TrainError::Config(format!(
                "this device ({device:?}) cannot compute in {self}: train in f32 (--dtype f32), or \
                 on a backend that has it (flex; cuda; wgpu and vulkan have f16 where the \
                 adapter supports 16-bit floats, and no bf16)"
            ))),
            _ => Ok(()),
        }
    }

    /// The name `--dtype` and `config.json` use.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown dtype {s:?}: use f32, f16 or bf16"))
    }
}

/// `model` with every float parameter cast to `dtype`, by casts that autodiff records: the
/// result's parameters are not leaves, and a backward pass through them reaches `model`'s
/// f32 parameters with f32 gradients. Parameter ids are kept.
pub fn cast_params<M: Module>(model: M, dtype: FloatDType) -> M {
    struct Cast(FloatDType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            param.map(|t| t.cast(dtype))
        }
    }
    model.map(&mut Cast(dtype))
}

/// The dynamic loss scale of f16 training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The factor the loss is multiplied by before the backward pass.
    scale: f64,
    /// Good steps in a row since the scale last changed.
    good_steps: usize,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

impl LossScaler {
    /// The first scale, 2¹⁶.
    pub const INITIAL_SCALE: f64 = 65536.0;
    /// Good steps in a row after which the scale doubles.
    pub const GROWTH_INTERVAL: usize = 2000;

    /// A scaler at [`Self::INITIAL_SCALE`].
    pub fn new() -> Self {
        Self {
            scale: Self::INITIAL_SCALE,
            good_steps: 0,
        }
    }

    /// A scaler at `scale` (a power of two keeps the scaling exact).
    pub fn starting_at(scale: f64) -> Self {
        Self {
            scale,
            good_steps: 0,
        }
    }

    /// The factor the loss is multiplied by.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Records a step's outcome: gradients that overflowed halve the scale and start the
    /// count again; [`Self::GROWTH_INTERVAL`] good steps in a row double it.
    pub fn update(&mut self, overflowed: bool) {
        if overflowed {
            self.scale /= 2.0;
            self.good_steps = 0;
        } else {
            self.good_steps += 1;
            if self.good_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        }
    }
}

/// What a training step needs to know about precision, and the loss scale it carries from
/// step to step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MixedPrecision {
    precision: Precision,
    scaler: Option<LossScaler>,
}

impl MixedPrecision {
    /// Steps in `precision`, with a fresh loss scale where it needs one.
    pub fn new(precision: Precision) -> Self {
        Self::resume(precision, None)
    }

    /// Steps in `precision` resuming from `scaler` (ignored unless the precision scales).
    pub fn resume(precision: Precision, scaler: Option<LossScaler>) -> Self {
        Self {
            precision,
            scaler: precision.loss_scaled().then(|| scaler.unwrap_or_default()),
        }
    }

    /// The precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The loss scaler, when the precision has one.
    pub fn scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref()
    }

    /// The current loss scale (1 without a scaler).
    pub fn loss_scale(&self) -> f64 {
        self.scaler.as_ref().map_or(1.0, LossScaler::scale)
    }

    /// Whether `device` computes in this precision (see [`Precision::check`]).
    pub fn check(&self, device: &Device) -> Result<(), TrainError> {
        self.precision.check(device)
    }

    /// The model to run the forward pass on: `model` itself in f32, else its tracked cast.
    pub fn compute_model<M: Module>(&self, model: &M) -> M {
        match self.precision.compute_dtype() {
            None => model.clone(),
            Some(dtype) => cast_params(model.clone(), dtype),
        }
    }

    /// Records whether this step's scaled gradients overflowed (no-op without a scaler).
    pub(crate) fn record(&mut self, overflowed: bool) {
        if let Some(scaler) = &mut self.scaler {
            scaler.update(overflowed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_halves_on_overflow_and_doubles_after_the_interval() {
        let mut s = LossScaler::new();
        s.update(true);
        assert_eq!(s.scale(), LossScaler::INITIAL_SCALE / 2.0);
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert_eq!(s.scale(), LossScaler::INITIAL_SCALE / 2.0);
        s.update(false);
        assert_eq!(s.scale(), LossScaler::INITIAL_SCALE);
        // An overflow restarts the count.
        for _ in 0..10 {
            s.update(false);
        }
        s.update(true);
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert_eq!(s.scale(), LossScaler::INITIAL_SCALE / 2.0);
    }

    #[test]
    fn names_round_trip_and_bad_names_say_what_to_use() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.name()));
        }
        let err = "fp16".parse::<Precision>().unwrap_err();
        assert!(err.contains("f32, f16 or bf16"), "{err}");
        assert!(MixedPrecision::new(Precision::F16).scaler().is_some());
        assert!(MixedPrecision::new(Precision::Bf16).scaler().is_none());
    }
}
