//! The residual add and the LayerNorm that reads it as one op: `(x + branch, LayerNorm(x +
//! branch))`, for a pre-LN transformer, where every sub-layer's output is added to the stream
//! and the next sub-layer reads the stream's LayerNorm.
//!
//! On Flex the forward pass is one kernel that writes both the new stream and its
//! normalisation (the stream is read once instead of being written by an add and read back by
//! the LayerNorm). Under autodiff the op is two graph nodes over those outputs, the add and the
//! LayerNorm, so the backward pass is the LayerNorm's kernel, and the stream's two gradients
//! (from its LayerNorm and from the next residual add) meet in Burn's gradient accumulation.

use burn::backend::Dispatch;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;

use super::backend::{FusedBackward, contiguous, elems, tensor};
use super::nodes::LayerNormNode;
use super::{half_dtype, has_fused_kernels, kernels, layer_norm, layer_norm_explicit, to_f32};

/// `(x + branch, LayerNorm(x + branch))`: the residual stream after a sub-layer and its
/// LayerNorm (biased variance, as [`layer_norm`]). One kernel forward on Flex for `f32`;
/// elsewhere an add and [`layer_norm`] (which has its own kernels on the GPU).
///
/// # Shapes
/// - `x`, `branch`: `[..., d]`, the same shape
/// - `gamma`, `beta`: `[d]`
/// - returns `([..., d], [..., d])`: the sum, then its normalisation
///
/// # Panics
/// If `x` and `branch` differ in shape.
pub fn add_layer_norm<const D: usize>(
    x: Tensor<D>,
    branch: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    eps: f64,
) -> (Tensor<D>, Tensor<D>) {
    assert_eq!(
        x.dims(),
        branch.dims(),
        "add_layer_norm: the stream and the branch must have the same shape"
    );
    if let Some(half) = half_dtype(x.dtype()) {
        let (x, branch) = (to_f32(x), to_f32(branch));
        let (sum, normed) = add_layer_norm(x, branch, to_f32(gamma), beta.map(to_f32), eps);
        return (sum.cast(half), normed.cast(half));
    }
    if !has_fused_kernels(&x.device(), x.dtype()) {
        let sum = x + branch;
        return (sum.clone(), layer_norm(sum, gamma, beta, eps));
    }
    let beta = beta.unwrap_or_else(|| gamma.zeros_like());
    let (sum, normed) = <Dispatch as FusedAddLayerNorm>::qkv_add_layer_norm(
        x.into_dispatch(),
        branch.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        eps,
    );
    (Tensor::from_dispatch(sum), Tensor::from_dispatch(normed))
}

/// [`add_layer_norm`] as an add and [`layer_norm_explicit`]: the oracle of the tests.
///
/// # Shapes
/// As [`add_layer_norm`].
pub fn add_layer_norm_explicit<const D: usize>(
    x: Tensor<D>,
    branch: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    eps: f64,
) -> (Tensor<D>, Tensor<D>) {
    let sum = x + branch;
    (sum.clone(), layer_norm_explicit(sum, gamma, beta, eps))
}

/// The op as a Burn backend extension (Flex, and autodiff over Flex).
#[backend_extension(Flex, Autodiff)]
pub trait FusedAddLayerNorm: Backend {
    /// `(x + branch, LayerNorm(x + branch))`: `x`, `branch` `[..., d]`; `gamma`, `beta` `[d]`.
    fn qkv_add_layer_norm(
        x: FloatTensor<Self>,
        branch: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl FusedAddLayerNorm for Flex {
    fn qkv_add_layer_norm(
        x: FlexTensor,
        branch: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        eps: f64,
    ) -> (FlexTensor, FlexTensor) {
        let (x, branch) = (contiguous(x), contiguous(branch));
        let (gamma, beta) = (contiguous(gamma), contiguous(beta));
        let shape = x.shape();
        let mut sum = vec![0.0f32; shape.num_elements()];
        let mut out = vec![0.0f32; shape.num_elements()];
        kernels::add_layer_norm_forward(
            elems(&x),
            elems(&branch),
            elems(&gamma),
            elems(&beta),
            eps as f32,
            &mut sum,
            &mut out,
        );
        (tensor(sum, shape.clone()), tensor(out, shape))
    }
}

/// The residual add's autodiff node: the sum's gradient goes to both terms unchanged.
#[derive(Debug)]
struct ResidualNode;

impl<B: Backend> Backward<B, 2> for ResidualNode {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        match ops.parents {
            [Some(x), Some(branch)] => {
                grads.register::<B>(x.id, grad.clone());
                grads.register::<B>(branch.id, grad);
            }
            [Some(only), None] | [None, Some(only)] => grads.register::<B>(only.id, grad),
            [None, None] => {}
        }
    }
}

impl<B: FusedAddLayerNorm + FusedBackward, C: CheckpointStrategy> FusedAddLayerNorm
    for Autodiff<B, C>
{
    fn qkv_add_layer_norm(
        x: FloatTensor<Self>,
        branch: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let residual = ResidualNode
            .prepare::<C>([x.node(), branch.node()])
            .compute_bound();
        let (sum, normed) = B::qkv_add_layer_norm(
            x.into_primitive(),
            branch.into_primitive(),
            gamma.primitive().clone(),
            beta.primitive().clone(),
            eps,
        );
        let sum: FloatTensor<Self> = residual.stateless(sum);
        let norm = LayerNormNode
            .prepare::<C>([sum.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let normed = match norm {
            OpsKind::Tracked(prep) => {
                let stream = sum.primitive().clone();
                prep.finish((stream, gamma.into_primitive(), eps), normed)
            }
            OpsKind::UnTracked(prep) => prep.finish(normed),
        };
        (sum, normed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Parity of [`add_layer_norm`] with its explicit path, on Flex (the kernel, with and
    //! without autodiff) and against NdArray.

    use super::*;
    use qkv_test_support::{SeededRng, assert_close, check_parity, random_tensor, values};

    /// Flex with autodiff, the device training runs on.
    fn flex_autodiff() -> Device {
        qkv_test_support::flex().autodiff()
    }
    /// Both outputs of the residual add + LayerNorm side by side in the last dimension, so that
    /// one parity check covers the values and the gradients that flow through each.
    fn sum_and_normed((sum, normed): (Tensor<3>, Tensor<3>)) -> Tensor<3> {
        Tensor::cat(vec![sum, normed], 2)
    }

    #[test]
    pub(crate) fn add_layer_norm_matches_an_add_and_an_explicit_layer_norm_values_and_gradients() {
        // d = 37 leaves a lane remainder; the offset stream tests the two-pass variance.
        for (rows, d) in [(6, 37), (50, 128), (3, 8)] {
            let device = flex_autodiff();
            let mut rng = SeededRng::new(40 + d as u64);
            let x = random_tensor(&mut rng, [2, rows, d], 3.0, &device).add_scalar(5.0);
            let branch = random_tensor(&mut rng, [2, rows, d], 1.0, &device);
            let gamma = random_tensor(&mut rng, [1, 1, d], 1.0, &device).add_scalar(1.0);
            let beta = random_tensor(&mut rng, [1, 1, d], 1.0, &device);
            let flat = |t: Tensor<3>| t.reshape([d]);
            let eps = 1e-5;
            check_parity(
                &format!("add_layer_norm {rows}x{d}"),
                [x, branch, gamma, beta],
                |[x, r, g, b]| sum_and_normed(add_layer_norm(x, r, flat(g), Some(flat(b)), eps)),
                |[x, r, g, b]| {
                    sum_and_normed(add_layer_norm_explicit(x, r, flat(g), Some(flat(b)), eps))
                },
                2e-5,
            );
        }
    }

    #[test]
    pub(crate) fn add_layer_norm_with_an_untracked_branch_and_no_beta() {
        // The residual node with one tracked parent, and the LayerNorm without a shift.
        let device = flex_autodiff();
        let mut rng = SeededRng::new(77);
        let d = 24;
        let x = random_tensor(&mut rng, [3, 5, d], 2.0, &device);
        let gamma = random_tensor(&mut rng, [1, 1, d], 1.0, &device).add_scalar(1.0);
        let branch = random_tensor(&mut rng, [3, 5, d], 2.0, &device);
        let flat = |t: Tensor<3>| t.reshape([d]);
        check_parity(
            "add_layer_norm, constant branch",
            [x, gamma],
            |[x, g]| sum_and_normed(add_layer_norm(x, branch.clone(), flat(g), None, 1e-5)),
            |[x, g]| {
                sum_and_normed(add_layer_norm_explicit(
                    x,
                    branch.clone(),
                    flat(g),
                    None,
                    1e-5,
                ))
            },
            2e-5,
        );
    }

    #[test]
    fn add_layer_norm_on_flex_matches_ndarray() {
        // NdArray takes the explicit path; the same inputs through Flex's kernel must agree.
        let run = |device: Device| {
            let mut rng = SeededRng::new(13);
            let x = random_tensor(&mut rng, [2, 4, 10], 3.0, &device);
            let branch = random_tensor(&mut rng, [2, 4, 10], 3.0, &device);
            let gamma = random_tensor(&mut rng, [10], 1.0, &device);
            let beta = random_tensor(&mut rng, [10], 1.0, &device);
            let (sum, normed) = add_layer_norm(x, branch, gamma, Some(beta), 1e-5);
            (values(sum), values(normed))
        };
        let (flex_sum, flex_normed) = run(qkv_test_support::flex());
        let (nd_sum, nd_normed) = run(qkv_test_support::ndarray());
        assert_eq!(flex_sum, nd_sum);
        assert_close(
            &flex_normed,
            &nd_normed,
            2e-5,
            "add_layer_norm, Flex vs NdArray",
        );
    }
}
