//! The autodiff side of the fused ops: one graph node per op, keeping what its backward pass
//! needs (shared buffers, not copies), and the `FusedOps` implementation for `Autodiff`, which
//! records the node and calls the inner backend's forward kernel.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;

use super::backend::{FusedBackward, FusedOps, KeyMask};

/// LayerNorm's autodiff node: keeps `x` and `gamma` (shared buffers, not copies) and `eps`.
#[derive(Debug)]
pub(super) struct LayerNormNode;

impl<B: FusedBackward> Backward<B, 3> for LayerNormNode {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, gamma, eps) = ops.state;
        let (dx, dgamma, dbeta) = B::qkv_layer_norm_backward(x, gamma, dy, eps);
        for (node, grad) in [(x_node, dx), (gamma_node, dgamma), (beta_node, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The scaled softmax's autodiff node: keeps its output and the scale.
#[derive(Debug)]
struct ScaledSoftmaxNode;

impl<B: FusedBackward> Backward<B, 1> for ScaledSoftmaxNode {
    type State = (FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dprobs = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            let (probs, scale) = ops.state;
            grads.register::<B>(
                node.id,
                B::qkv_scaled_softmax_backward(probs, dprobs, scale),
            );
        }
    }
}

/// GELU's autodiff node (exact or tanh-approximated alike): keeps the derivative at its input,
/// computed in the forward pass, so the backward pass is one multiply.
#[derive(Debug)]
struct GeluNode;

impl<B: FusedBackward> Backward<B, 1> for GeluNode {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::qkv_mul_by_slope(dy, ops.state));
        }
    }
}

/// Dropout's autodiff node: keeps only the probability and the seed (the mask is recomputed).
#[derive(Debug)]
struct DropoutNode;

impl<B: FusedOps> Backward<B, 1> for DropoutNode {
    type State = (f64, u64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            let (prob, seed) = ops.state;
            grads.register::<B>(node.id, B::qkv_dropout(dy, prob, seed));
        }
    }
}

/// Flash attention's autodiff node: keeps the inputs, the key mask, the output and its
/// log-sum-exp (shared buffers), and the causal flag and scale.
#[derive(Debug)]
struct FlashAttentionNode;

/// What [`FlashAttentionNode`] keeps for its backward pass.
type FlashState<B> = (
    [FloatTensor<B>; 3],
    Option<KeyMask>,
    FloatTensor<B>,
    FloatTensor<B>,
    bool,
    f64,
    Option<(f64, u64)>,
);

impl<B: FusedBackward> Backward<B, 3> for FlashAttentionNode {
    type State = FlashState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dout = grads.consume::<B>(&ops.node);
        let ([q, k, v], key_hidden, out, lse, causal, scale, dropout) = ops.state;
        let (dq, dk, dv) = B::qkv_flash_attention_backward(
            q, k, v, key_hidden, out, lse, dout, causal, scale, dropout,
        );
        for (node, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// GELU (exact, or the tanh approximation with `tanh_approx`) under autodiff: when tracked,
/// the forward kernel also computes the derivative, which the node keeps in place of `x`.
fn gelu_tracked<B: FusedOps + FusedBackward, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    tanh_approx: bool,
) -> FloatTensor<Autodiff<B, C>> {
    let prep = GeluNode.prepare::<C>([x.node()]).compute_bound().stateful();
    let x = x.into_primitive();
    match prep {
        OpsKind::Tracked(prep) => {
            let (out, slope) = B::qkv_gelu_and_slope(x, tanh_approx);
            prep.finish(slope, out)
        }
        OpsKind::UnTracked(prep) if tanh_approx => prep.finish(B::qkv_gelu_tanh(x)),
        OpsKind::UnTracked(prep) => prep.finish(B::qkv_gelu(x)),
    }
}

impl<B: FusedOps + FusedBackward, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn qkv_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let prep = LayerNormNode
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (x, gamma, beta) = (
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
        );
        match prep {
            OpsKind::Tracked(prep) => {
                let out = B::qkv_layer_norm(x.clone(), gamma.clone(), beta, eps);
                prep.finish((x, gamma, eps), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::qkv_layer_norm(x, gamma, beta, eps)),
        }
    }

    fn qkv_scaled_softmax(
        scores: FloatTensor<Self>,
        scale: f64,
        causal: bool,
    ) -> FloatTensor<Self> {
        let prep = ScaledSoftmaxNode
            .prepare::<C>([scores.node()])
            .compute_bound()
            .stateful();
        let out = B::qkv_scaled_softmax(scores.into_primitive(), scale, causal);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((out.clone(), scale), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn qkv_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        gelu_tracked::<B, C>(x, false)
    }

    fn qkv_gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        gelu_tracked::<B, C>(x, true)
    }

    fn qkv_dropout(x: FloatTensor<Self>, prob: f64, seed: u64) -> FloatTensor<Self> {
        let prep = DropoutNode
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let out = B::qkv_dropout(x.into_primitive(), prob, seed);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((prob, seed), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn qkv_flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        key_hidden: Option<KeyMask>,
        causal: bool,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> FloatTensor<Self> {
        let prep = FlashAttentionNode
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful();
        let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::qkv_flash_attention_with_lse(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    key_hidden.clone(),
                    causal,
                    scale,
                    dropout,
                );
                prep.finish(
                    (
                        [q, k, v],
                        key_hidden,
                        out.clone(),
                        lse,
                        causal,
                        scale,
                        dropout,
                    ),
                    out,
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::qkv_flash_attention(
                q, k, v, key_hidden, causal, scale, dropout,
            )),
        }
    }
}
