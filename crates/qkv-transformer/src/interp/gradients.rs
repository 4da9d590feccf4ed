//! How much gradient reaches each position of each layer: the vanishing-gradient claim,
//! measured through backpropagation, for a GPT and for a recurrent model alike.
//!
//! A zero tensor that asks for its gradient is added to a layer's input (a GPT's residual
//! stream entering each block, or a recurrent layer's input at each time step); the loss is
//! backpropagated once, and the gradient of each zero is the gradient of the loss with
//! respect to that layer's input. The figure per layer and position is its Euclidean norm
//! over `d_model`, averaged over the batch.

use burn::prelude::*;

use crate::error::ModelError;
use crate::gpt::Gpt;
use crate::interp::{HookPoint, Hooks};
use crate::recurrent::RecurrentLm;

/// `‖∂loss/∂x‖` per layer and position: `norms[l][t]` for the input of layer `l` at position
/// `t`, where the last layer index (`n_layers`) is the output of the last layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PositionGradients {
    /// `[n_layers + 1][seq]`, each averaged over the batch.
    pub norms: Vec<Vec<f64>>,
}

/// The gradient of `loss(logits)` reaching each block's input of a GPT (and the last block's
/// output) at each position. `model` must live on an autodiff device.
///
/// # Shapes
/// - `tokens`: `[batch, seq]`; `loss` maps `[batch, seq, vocab_size]` logits to `[1]`.
pub fn gpt_position_gradients(
    model: &Gpt,
    tokens: Tensor<2, Int>,
    loss: impl FnOnce(Tensor<3>) -> Tensor<1>,
) -> Result<PositionGradients, ModelError> {
    let [batch, seq] = tokens.dims();
    let device = tokens.device();
    let d_model = model.token_embedding.weight.dims()[1];
    let n_layers = model.n_layers();
    let zeros: Vec<Tensor<3>> = (0..=n_layers)
        .map(|_| Tensor::<3>::zeros([batch, seq, d_model], &device).require_grad())
        .collect();
    let mut hooks = Hooks::new();
    for (layer, z) in zeros.iter().enumerate() {
        let z = z.clone();
        let point = if layer < n_layers {
            HookPoint::ResidPre(layer)
        } else {
            HookPoint::ResidPost(n_layers - 1)
        };
        hooks = hooks.edit_per_position(point, move |x| x + z.clone());
    }
    let logits = model.run_with_hooks(tokens, &mut hooks)?;
    let grads = loss(logits).backward();
    let norms = zeros
        .iter()
        .map(|z| per_position_norms(z.grad(&grads).expect("every probe is on the loss's path")))
        .collect();
    Ok(PositionGradients { norms })
}

/// The gradient of `loss(logits)` reaching each recurrent layer's input (and the last
/// layer's output) at each time step. `model` must live on an autodiff device.
///
/// # Shapes
/// - `tokens`: `[batch, seq]`; `loss` maps `[batch, seq, vocab_size]` logits to `[1]`.
pub fn recurrent_position_gradients(
    model: &RecurrentLm,
    tokens: Tensor<2, Int>,
    loss: impl FnOnce(Tensor<3>) -> Tensor<1>,
) -> PositionGradients {
    let [batch, seq] = tokens.dims();
    let device = tokens.device();
    let d_model = model.token_embedding.weight.dims()[1];
    let layers = model.n_layers() + 1;
    let zeros: Vec<Vec<Tensor<2>>> = (0..layers)
        .map(|_| {
            (0..seq)
                .map(|_| Tensor::<2>::zeros([batch, d_model], &device).require_grad())
                .collect()
        })
        .collect();
    let logits = model.forward_probed(tokens, &mut |layer, t, x| x + zeros[layer][t].clone());
    let grads = loss(logits).backward();
    let norms = zeros
        .iter()
        .map(|layer| {
            let steps: Vec<_> = layer
                .iter()
                .map(|z| {
                    z.grad(&grads)
                        .expect("every probe is on the loss's path")
                        .reshape([batch, 1, d_model])
                })
                .collect();
            per_position_norms(Tensor::cat(steps, 1))
        })
        .collect();
    PositionGradients { norms }
}

/// `[batch, seq, d]` to the norm over `d` at each position, averaged over the batch.
fn per_position_norms(g: Tensor<3>) -> Vec<f64> {
    let [batch, seq, _] = g.dims();
    let norms = g.powi_scalar(2).sum_dim(2).sqrt().reshape([batch, seq]);
    norms
        .mean_dim(0)
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("float norms")
        .into_iter()
        .map(f64::from)
        .collect()
}
