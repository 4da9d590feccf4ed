//! Tests of the attention layer against references: the slow attention of `qkv-tensor-ops`,
//! finite differences, full recomputation (for the cache), and Burn's own layer.

mod burn_parity;
mod cache;
mod errors;
mod gradcheck;
mod masking;

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use qkv_test_support::{SeededRng, random_tensor};

use crate::{MultiHeadAttention, MultiHeadAttentionConfig};

/// A layer whose weights come from `seed` through the test RNG, so that every backend gets
/// the very same numbers.
pub(crate) fn seeded_layer(
    config: &MultiHeadAttentionConfig,
    seed: u64,
    device: &Device,
) -> MultiHeadAttention {
    let mut rng = SeededRng::new(seed);
    let mut layer = config.init(device);
    let d = config.d_model;
    let scale = 1.0 / (d as f32).sqrt();
    let mut reseed = |linear: &mut Linear| {
        linear.weight = Param::from_tensor(random_tensor(&mut rng, [d, d], scale, device));
        if linear.bias.is_some() {
            linear.bias = Some(Param::from_tensor(random_tensor(
                &mut rng,
                [d],
                0.1,
                device,
            )));
        }
    };
    reseed(&mut layer.query);
    reseed(&mut layer.key);
    reseed(&mut layer.value);
    reseed(&mut layer.output);
    layer
}
