//! A linear layer's bias and the GELU after it as one op: `gelu(h + bias)`, with a backward pass
//! that writes `dh` and sums `dbias` in the same pass.
//!
//! Burn's `Linear` adds its bias as a separate pass over the `[rows, d_ff]` product, and its
//! backward pass sums the bias gradient in another; GELU then reads and writes the same
//! tensor again each way. The MLP computes its widening product without the bias and calls
//! [`bias_gelu`], which on Flex does both in one kernel each way.

use burn::backend::Dispatch;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::Shape;
use rayon::prelude::*;

use super::backend::{contiguous, elems, tensor};
use super::{gelu, gelu_tanh, has_fused_kernels, kernels};

/// `gelu(h + bias)`, the bias broadcast over the rows: exact GELU, or with `tanh_approx` its
/// tanh approximation. One kernel forward and one backward on Flex for `f32`;
/// [`bias_gelu_explicit`] (an add, then [`gelu`] or [`gelu_tanh`]) elsewhere.
///
/// # Shapes
/// - `h`: `[rows, d]`
/// - `bias`: `[d]`
/// - returns `[rows, d]`
///
/// # Panics
/// If `bias` is not as long as a row of `h`.
pub fn bias_gelu(h: Tensor<2>, bias: Tensor<1>, tanh_approx: bool) -> Tensor<2> {
    let [_, d] = h.dims();
    assert_eq!(
        bias.dims(),
        [d],
        "bias_gelu: the bias must be as long as a row"
    );
    if !has_fused_kernels(&h.device(), h.dtype()) {
        return bias_gelu_explicit(h, bias, tanh_approx);
    }
    Tensor::from_dispatch(<Dispatch as FusedBiasGelu>::qkv_bias_gelu(
        h.into_dispatch(),
        bias.into_dispatch(),
        tanh_approx,
    ))
}

/// [`bias_gelu`] as an add and a GELU: the oracle of the tests and the path off Flex.
///
/// # Shapes
/// `h`: `[rows, d]`, `bias`: `[d]` -> `[rows, d]`
pub fn bias_gelu_explicit(h: Tensor<2>, bias: Tensor<1>, tanh_approx: bool) -> Tensor<2> {
    let z = h + bias.unsqueeze::<2>();
    if tanh_approx { gelu_tanh(z) } else { gelu(z) }
}

/// The op as a Burn backend extension (Flex, and autodiff over Flex).
#[backend_extension(Flex, Autodiff)]
pub trait FusedBiasGelu: Backend {
    /// `gelu(h + bias)`: `h` `[rows, d]`, `bias` `[d]`.
    fn qkv_bias_gelu(
        h: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        tanh_approx: bool,
    ) -> FloatTensor<Self>;
}

/// What the autodiff implementation of [`FusedBiasGelu`] calls on its inner backend.
pub trait FusedBiasGeluBackward: Backend {
    /// `(dh, dbias)` from the inputs and the output's gradient `dy`.
    fn qkv_bias_gelu_backward(
        h: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        tanh_approx: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl FusedBiasGelu for Flex {
    fn qkv_bias_gelu(h: FlexTensor, bias: FlexTensor, tanh_approx: bool) -> FlexTensor {
        let (h, bias) = (contiguous(h), contiguous(bias));
        let shape = h.shape();
        let mut out = vec![0.0f32; shape.num_elements()];
        if tanh_approx {
            forward_kernel::<true>(elems(&h), elems(&bias), &mut out);
        } else {
            forward_kernel::<false>(elems(&h), elems(&bias), &mut out);
        }
        tensor(out, shape)
    }
}

impl FusedBiasGeluBackward for Flex {
    fn qkv_bias_gelu_backward(
        h: FlexTensor,
        bias: FlexTensor,
        dy: FlexTensor,
        tanh_approx: bool,
    ) -> (FlexTensor, FlexTensor) {
        let (h, bias, dy) = (contiguous(h), contiguous(bias), contiguous(dy));
        let shape = h.shape();
        let mut dh = vec![0.0f32; shape.num_elements()];
        let (h_, b_, dy_) = (elems(&h), elems(&bias), elems(&dy));
        let dbias = if tanh_approx {
            backward_kernel::<true>(h_, b_, dy_, &mut dh)
        } else {
            backward_kernel::<false>(h_, b_, dy_, &mut dh)
        };
        let d = dbias.len();
        (tensor(dh, shape), tensor(dbias, Shape::new([d])))
    }
}

/// `out = gelu(h + bias)` over rows of `d = bias.len()` (exact GELU, or with `TANH` the tanh
/// approximation): a linear layer's bias and its activation in one pass.
fn forward_kernel<const TANH: bool>(h: &[f32], bias: &[f32], out: &mut [f32]) {
    let d = bias.len();
    let chunk = kernels::rows_per_task(d) * d;
    out.par_chunks_mut(chunk)
        .zip(h.par_chunks(chunk))
        .for_each(|(out, h)| {
            kernels::simd!({
                for (out, h) in out.chunks_exact_mut(d).zip(h.chunks_exact(d)) {
                    for j in 0..d {
                        out[j] = kernels::gelu_at::<TANH>(h[j] + bias[j]);
                    }
                }
            })
        });
}

/// Backward of [`forward_kernel`]: writes `dh = dy · gelu'(h + bias)` and returns
/// `dbias = Σ_rows dh`.
fn backward_kernel<const TANH: bool>(
    h: &[f32],
    bias: &[f32],
    dy: &[f32],
    dh: &mut [f32],
) -> Vec<f32> {
    let d = bias.len();
    let chunk = kernels::rows_per_task(d) * d;
    dh.par_chunks_mut(chunk)
        .zip(h.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .map(|(dh, (h, dy))| {
            kernels::simd!({
                let mut dbias = vec![0.0f32; d];
                let rows = dh
                    .chunks_exact_mut(d)
                    .zip(h.chunks_exact(d).zip(dy.chunks_exact(d)));
                for (dh, (h, dy)) in rows {
                    for j in 0..d {
                        let g = dy[j] * kernels::gelu_slope::<TANH>(h[j] + bias[j]);
                        dh[j] = g;
                        dbias[j] += g;
                    }
                }
                dbias
            })
        })
        .reduce(
            || vec![0.0f32; d],
            |mut a, b| {
                for j in 0..d {
                    a[j] += b[j];
                }
                a
            },
        )
}

/// The op's autodiff node: keeps `h` and `bias` (shared buffers) and which GELU it was.
#[derive(Debug)]
struct BiasGeluNode;

impl<B: FusedBiasGeluBackward> Backward<B, 2> for BiasGeluNode {
    type State = (FloatTensor<B>, FloatTensor<B>, bool);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (h, bias, tanh_approx) = ops.state;
        let (dh, dbias) = B::qkv_bias_gelu_backward(h, bias, dy, tanh_approx);
        for (node, grad) in ops.parents.into_iter().zip([dh, dbias]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: FusedBiasGelu + FusedBiasGeluBackward, C: CheckpointStrategy> FusedBiasGelu
    for Autodiff<B, C>
{
    fn qkv_bias_gelu(
        h: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        tanh_approx: bool,
    ) -> FloatTensor<Self> {
        let prep = BiasGeluNode
            .prepare::<C>([h.node(), bias.node()])
            .compute_bound()
            .stateful();
        let (h, bias) = (h.into_primitive(), bias.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => {
                let out = B::qkv_bias_gelu(h.clone(), bias.clone(), tanh_approx);
                prep.finish((h, bias, tanh_approx), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::qkv_bias_gelu(h, bias, tanh_approx)),
        }
    }
}
