//! Gradient norms per layer and position against central finite differences: every
//! coordinate of a layer's input at a position nudged up and down, the loss's change giving
//! that coordinate's derivative, and the norm of those compared with the backpropagated one.

use burn::prelude::*;
use qkv_test_support::flex;

use crate::interp::{HookPoint, Hooks, gpt_position_gradients, recurrent_position_gradients};
use crate::recurrent::{RecurrentCell, RecurrentConfig};
use crate::{GptConfig, cross_entropy};

const VOCAB: usize = 11;
const SEQ: usize = 5;
const D: usize = 8;
const EPS: f64 = 3e-3;

fn batch(device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let x = Tensor::from_data([[1i64, 4, 7, 2, 9]], device);
    let y = Tensor::from_data([[4i64, 7, 2, 9, 3]], device);
    (x, y)
}

/// The norm of the finite-difference gradient at `(layer, t)`, given the loss with
/// `delta` (`[d_model]`, all zero but one coordinate) added there.
fn finite_difference_norm(
    loss_with: &dyn Fn(usize, usize, Vec<f32>) -> f64,
    layer: usize,
    t: usize,
) -> f64 {
    (0..D)
        .map(|i| {
            let nudge = |sign: f64| {
                let mut delta = vec![0.0f32; D];
                delta[i] = (sign * EPS) as f32;
                loss_with(layer, t, delta)
            };
            let derivative = (nudge(1.0) - nudge(-1.0)) / (2.0 * EPS);
            derivative * derivative
        })
        .sum::<f64>()
        .sqrt()
}

fn check(norms: &[Vec<f64>], loss_with: &dyn Fn(usize, usize, Vec<f32>) -> f64) {
    let largest = norms.iter().flatten().fold(0.0f64, |a, &b| a.max(b));
    assert!(largest > 1e-3, "gradients too small to test: {norms:?}");
    for (layer, row) in norms.iter().enumerate() {
        assert_eq!(row.len(), SEQ);
        for (t, &norm) in row.iter().enumerate() {
            let fd = finite_difference_norm(loss_with, layer, t);
            assert!(
                (fd - norm).abs() <= 0.02 * norm + 3e-4 * largest,
                "layer {layer} position {t}: backprop {norm}, finite differences {fd}"
            );
        }
    }
}

#[test]
fn gpt_gradient_norms_equal_finite_differences() {
    let device = flex().autodiff();
    let model = GptConfig::new(VOCAB, 8, 2, 2, D).init(&device);
    let (x, y) = batch(&device);
    let grads = gpt_position_gradients(&model, x.clone(), |logits| {
        cross_entropy(logits, y.clone(), None)
    })
    .unwrap();
    assert_eq!(grads.norms.len(), 3);
    let loss_with = |layer: usize, t: usize, delta: Vec<f32>| {
        let mut full = vec![0.0f32; SEQ * D];
        full[t * D..(t + 1) * D].copy_from_slice(&delta);
        let delta = Tensor::<3>::from_data(TensorData::new(full, [1, SEQ, D]), &device);
        let point = if layer < 2 {
            HookPoint::ResidPre(layer)
        } else {
            HookPoint::ResidPost(1)
        };
        let mut hooks = Hooks::new().edit_per_position(point, move |a| a + delta.clone());
        let logits = model.run_with_hooks(x.clone(), &mut hooks).unwrap();
        cross_entropy(logits, y.clone(), None).into_scalar::<f32>() as f64
    };
    check(&grads.norms, &loss_with);
    // Causality: the loss at the last position only reaches every earlier position, but the
    // loss at the first position reaches no later one.
    let first_only = gpt_position_gradients(&model, x.clone(), |logits| {
        cross_entropy(
            logits.slice([0..1, 0..1, 0..VOCAB]),
            y.clone().slice([0..1, 0..1]),
            None,
        )
    })
    .unwrap();
    for row in &first_only.norms {
        assert!(
            row[0] > 0.0 && row[1..].iter().all(|&g| g == 0.0),
            "{row:?}"
        );
    }
}

#[test]
fn recurrent_gradient_norms_equal_finite_differences() {
    let device = flex().autodiff();
    for cell in [RecurrentCell::Lstm, RecurrentCell::Gru] {
        let model = RecurrentConfig {
            vocab_size: VOCAB,
            d_model: D,
            n_layers: 2,
            cell,
        }
        .try_init(&device)
        .unwrap();
        let (x, y) = batch(&device);
        let grads = recurrent_position_gradients(&model, x.clone(), |logits| {
            cross_entropy(logits, y.clone(), None)
        });
        assert_eq!(grads.norms.len(), 3);
        let loss_with = |layer: usize, t: usize, delta: Vec<f32>| {
            let delta = Tensor::<2>::from_data(TensorData::new(delta, [1, D]), &device);
            let logits = model.forward_probed(x.clone(), &mut |l, s, a| {
                if (l, s) == (layer, t) {
                    a + delta.clone()
                } else {
                    a
                }
            });
            cross_entropy(logits, y.clone(), None).into_scalar::<f32>() as f64
        };
        check(&grads.norms, &loss_with);
    }
}
