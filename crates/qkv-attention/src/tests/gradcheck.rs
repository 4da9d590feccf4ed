//! Finite-difference gradient checks: backpropagation through the layer agrees with
//! `(L(w + ε) - L(w - ε)) / 2ε` for the input and every projection weight.

use burn::module::Param;
use burn::prelude::*;
use qkv_test_support::{SeededRng, test_on_cpu_backends, values};

use super::seeded_layer;
use crate::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};

const BATCH: usize = 2;
const SEQ: usize = 5;
const D_MODEL: usize = 12;
const N_HEADS: usize = 3;
const EPS: f32 = 1e-2;
const MAX_RELATIVE_ERROR: f64 = 1e-2;

/// Which tensor a gradient is taken with respect to.
#[derive(Debug, Clone, Copy)]
enum Wrt {
    Input,
    Query,
    Key,
    Value,
    Output,
}

/// The host copies of everything the loss depends on.
#[derive(Clone)]
struct Point {
    x: Vec<f32>,
    weights: [Vec<f32>; 4],
}

impl Point {
    fn slot(&mut self, wrt: Wrt) -> &mut Vec<f32> {
        match wrt {
            Wrt::Input => &mut self.x,
            Wrt::Query => &mut self.weights[0],
            Wrt::Key => &mut self.weights[1],
            Wrt::Value => &mut self.weights[2],
            Wrt::Output => &mut self.weights[3],
        }
    }
}

fn layer_at(base: &MultiHeadAttention, p: &Point, device: &Device) -> MultiHeadAttention {
    let mut layer = base.clone();
    let w = |v: &Vec<f32>| {
        Param::from_tensor(Tensor::from_data(
            TensorData::new(v.clone(), [D_MODEL, D_MODEL]),
            device,
        ))
    };
    layer.query.weight = w(&p.weights[0]);
    layer.key.weight = w(&p.weights[1]);
    layer.value.weight = w(&p.weights[2]);
    layer.output.weight = w(&p.weights[3]);
    layer
}

/// L = Σ output · r, with a fixed random `r`, accumulated in f64 on the host.
fn loss(
    base: &MultiHeadAttention,
    p: &Point,
    r: &[f32],
    causal: bool,
    probs: bool,
    device: &Device,
) -> f64 {
    let layer = layer_at(base, p, device);
    let x = Tensor::<3>::from_data(TensorData::new(p.x.clone(), [BATCH, SEQ, D_MODEL]), device);
    let mut input = MhaInput::self_attn(x);
    input.causal = causal;
    input.return_probs = probs;
    let out = values(layer.forward(input).context);
    out.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
}

fn check(device: &Device, causal: bool, explicit: bool) {
    let config = MultiHeadAttentionConfig::new(D_MODEL, N_HEADS).with_rotary_base(Some(100.0));
    let base = seeded_layer(&config, 41, device);
    let mut rng = SeededRng::new(42);
    let point = Point {
        x: rng.vec(BATCH * SEQ * D_MODEL, 1.0),
        weights: [&base.query, &base.key, &base.value, &base.output]
            .map(|l| values(l.weight.val())),
    };
    let r = rng.vec(BATCH * SEQ * D_MODEL, 1.0);

    // Backpropagation on the autodiff version of the same device.
    let ad = device.clone().autodiff();
    let layer = layer_at(&base, &point, &ad).fork(&ad);
    let x = Tensor::<3>::from_data(TensorData::new(point.x.clone(), [BATCH, SEQ, D_MODEL]), &ad)
        .require_grad();
    let mut input = MhaInput::self_attn(x.clone());
    input.causal = causal;
    input.return_probs = explicit;
    let r_t = Tensor::<3>::from_data(TensorData::new(r.clone(), [BATCH, SEQ, D_MODEL]), &ad);
    let grads = (layer.forward(input).context * r_t).sum().backward();
    let analytic = |wrt: Wrt| -> Vec<f32> {
        let t = match wrt {
            Wrt::Input => x.grad(&grads),
            Wrt::Query => layer
                .query
                .weight
                .val()
                .grad(&grads)
                .map(|g| g.reshape([1, D_MODEL, D_MODEL])),
            Wrt::Key => layer
                .key
                .weight
                .val()
                .grad(&grads)
                .map(|g| g.reshape([1, D_MODEL, D_MODEL])),
            Wrt::Value => layer
                .value
                .weight
                .val()
                .grad(&grads)
                .map(|g| g.reshape([1, D_MODEL, D_MODEL])),
            Wrt::Output => layer
                .output
                .weight
                .val()
                .grad(&grads)
                .map(|g| g.reshape([1, D_MODEL, D_MODEL])),
        };
        values(t.unwrap_or_else(|| panic!("no gradient for {wrt:?}")))
    };

    for wrt in [Wrt::Input, Wrt::Query, Wrt::Key, Wrt::Value, Wrt::Output] {
        let analytic = analytic(wrt);
        let mut numeric = vec![0.0f64; analytic.len()];
        for (i, slot) in numeric.iter_mut().enumerate() {
            let mut plus = point.clone();
            plus.slot(wrt)[i] += EPS;
            let mut minus = point.clone();
            minus.slot(wrt)[i] -= EPS;
            *slot = (loss(&base, &plus, &r, causal, explicit, device)
                - loss(&base, &minus, &r, causal, explicit, device))
                / (2.0 * EPS as f64);
        }
        let diff: f64 = analytic
            .iter()
            .zip(&numeric)
            .map(|(a, n)| (*a as f64 - n).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm_a: f64 = analytic
            .iter()
            .map(|a| (*a as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm_n: f64 = numeric.iter().map(|n| n.powi(2)).sum::<f64>().sqrt();
        let relative = diff / norm_a.max(norm_n);
        assert!(norm_a > 1e-3, "{wrt:?}: gradient vanished");
        assert!(
            relative < MAX_RELATIVE_ERROR,
            "{wrt:?} (causal {causal}, explicit {explicit}): relative error {relative:e}"
        );
    }
}

test_on_cpu_backends!(gradients_match_finite_differences, |device: &Device| {
    check(device, true, true);
    check(device, true, false);
    check(device, false, false);
});
