//! The matrix product of a linear layer as one op on Flex, forward and backward through
//! [`qkv_gemm`], reading a transposed operand in place, with the bias folded in.
//!
//! Burn's matmul on Flex calls the same `gemm` crate, but zero-fills each output and copies it
//! to realign it before the product overwrites it, and its autodiff backward goes through
//! transposed views. [`matmul`] routes 2-D `f32` products on Flex (with or without autodiff)
//! to [`qkv_gemm::product`]; its backward pass computes `dA = dC·Bᵀ` and `dB = Aᵀ·dC` side by side
//! from the stored operands, each transpose only a flag. [`linear`] with a bias starts the
//! output as the bias repeated on every row and accumulates the product into it (one pass
//! over the output instead of a product and a separate add), and its backward pass sums
//! `dbias` from `dC` beside the two products. Every other device and dtype takes Burn's
//! `matmul` and add, which are also the oracle of the tests.

use burn::backend::Dispatch;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, TensorMetadata, backend_extension};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::{DType, Shape};

use super::backend::{contiguous, elems, tensor};
use super::{has_fused_kernels, kernels};
use qkv_gemm::Operand;
use rayon::prelude::*;

/// `a · b` for 2-D tensors: on Flex for `f32` our GEMM forward and backward, elsewhere Burn's
/// `matmul`.
///
/// # Shapes
/// - `a`: `[m, k]`
/// - `b`: `[k, n]`
/// - returns `[m, n]`
///
/// # Panics
/// If the inner dimensions differ.
pub fn matmul(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    let ([m, k], [k2, n]) = (a.dims(), b.dims());
    assert_eq!(
        k, k2,
        "matmul: [{m}, {k}] · [{k2}, {n}]: the inner dimensions differ"
    );
    if !has_fused_kernels(&a.device(), a.dtype()) || b.dtype() != a.dtype() {
        return a.matmul(b);
    }
    Tensor::from_dispatch(<Dispatch as FusedMatmul>::qkv_matmul(
        a.into_dispatch(),
        b.into_dispatch(),
    ))
}

/// A Burn [`Linear`] applied to rows through [`matmul`]: `x · weight + bias`.
///
/// # Shapes
/// - `x`: `[rows, d_in]`
/// - returns `[rows, d_out]` (the weight is `[d_in, d_out]`)
pub fn linear(layer: &Linear, x: Tensor<2>) -> Tensor<2> {
    match &layer.bias {
        Some(bias) => matmul_bias(x, layer.weight.val(), bias.val()),
        None => matmul(x, layer.weight.val()),
    }
}

/// `a · b + bias`, the bias broadcast over the rows: on Flex for `f32` one op forward (the
/// product accumulated into the repeated bias) and one backward, elsewhere Burn's `matmul`
/// and add.
///
/// # Shapes
/// - `a`: `[m, k]`
/// - `b`: `[k, n]`
/// - `bias`: `[n]`
/// - returns `[m, n]`
///
/// # Panics
/// If the inner dimensions differ or the bias is not `n` long.
pub fn matmul_bias(a: Tensor<2>, b: Tensor<2>, bias: Tensor<1>) -> Tensor<2> {
    let ([m, k], [k2, n]) = (a.dims(), b.dims());
    assert_eq!(
        k, k2,
        "matmul: [{m}, {k}] · [{k2}, {n}]: the inner dimensions differ"
    );
    assert_eq!(
        bias.dims(),
        [n],
        "matmul_bias: the bias must have one value per output column ({n})"
    );
    let dtype = a.dtype();
    if !has_fused_kernels(&a.device(), dtype) || b.dtype() != dtype || bias.dtype() != dtype {
        return a.matmul(b) + bias.unsqueeze::<2>();
    }
    Tensor::from_dispatch(<Dispatch as FusedMatmul>::qkv_matmul_bias(
        a.into_dispatch(),
        b.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// The op as a Burn backend extension (Flex, and autodiff over Flex).
#[backend_extension(Flex, Autodiff)]
pub trait FusedMatmul: Backend {
    /// `a · b`: `a` `[m, k]`, `b` `[k, n]`, in any 2-D layout.
    fn qkv_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `a · b + bias`: `a` `[m, k]`, `b` `[k, n]` in any 2-D layout, `bias` `[n]`.
    fn qkv_matmul_bias(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// What the autodiff implementation of [`FusedMatmul`] calls on its inner backend.
pub trait FusedMatmulBackward: Backend {
    /// `(dA, dB, dbias)` of `C = A·B (+ bias)` from `A`, `B` and `dC`, each computed only if
    /// asked for (`dbias = Σ_rows dC`).
    fn qkv_matmul_backward(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        dc: FloatTensor<Self>,
        want: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3];
}

/// A 2-D f32 tensor in a layout the GEMM reads in place, with where its matrix sits.
struct Placed {
    t: FlexTensor,
    /// Index of element `(0, 0)`.
    offset: usize,
    /// Distance between rows of the buffer.
    ld: usize,
    /// Whether the buffer holds the transpose.
    transposed: bool,
}

impl Placed {
    /// `t` as it is when it is row-major or the transpose of row-major, with any row stride;
    /// anything else is first copied into row-major order.
    fn new(t: FlexTensor) -> Self {
        assert_eq!(t.dtype(), DType::F32, "qkv_matmul takes f32 tensors");
        let t = if placement(&t).is_some() {
            t
        } else {
            t.to_contiguous()
        };
        let (offset, ld, transposed) = placement(&t).expect("a contiguous tensor is placed");
        Self {
            t,
            offset,
            ld,
            transposed,
        }
    }

    /// `[rows, cols]` of the logical matrix.
    fn dims(&self) -> (usize, usize) {
        dims2(&self.t)
    }

    /// The tensor as a GEMM operand.
    fn operand(&self) -> Operand<'_> {
        Operand {
            data: &self.t.storage::<f32>()[self.offset..],
            ld: self.ld,
            transposed: self.transposed,
        }
    }
}

/// `(offset, row stride, transposed)` of a 2-D tensor the GEMM can read in place.
fn placement(t: &FlexTensor) -> Option<(usize, usize, bool)> {
    let layout = t.layout();
    let shape = layout.shape();
    let (rows, cols) = (shape[0], shape[1]);
    let strides = layout.strides();
    let offset = layout.start_offset();
    if t.is_contiguous() {
        return Some((offset, cols, false));
    }
    let (s0, s1) = (strides[0], strides[1]);
    if s1 == 1 && s0 >= cols as isize {
        Some((offset, s0 as usize, false))
    } else if s0 == 1 && s1 >= rows as isize {
        Some((offset, s1 as usize, true))
    } else {
        None
    }
}

/// `[rows, cols]` of a 2-D tensor.
fn dims2(t: &FlexTensor) -> (usize, usize) {
    let shape = t.shape();
    (shape[0], shape[1])
}

/// Runs one GEMM into a fresh `[m, n]` tensor.
fn product(m: usize, n: usize, k: usize, a: Operand, b: Operand) -> FlexTensor {
    tensor(qkv_gemm::product(m, n, k, a, b), Shape::new([m, n]))
}

impl FusedMatmul for Flex {
    fn qkv_matmul(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        let (a, b) = (Placed::new(a), Placed::new(b));
        let ((m, k), (_, n)) = (a.dims(), b.dims());
        product(m, n, k, a.operand(), b.operand())
    }

    fn qkv_matmul_bias(a: FlexTensor, b: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let (a, b, bias) = (Placed::new(a), Placed::new(b), contiguous(bias));
        let ((m, k), (_, n)) = (a.dims(), b.dims());
        let bias = elems(&bias);
        assert_eq!(bias.len(), n, "qkv_matmul_bias: one bias value per column");
        let mut c = repeated_rows(m, bias);
        qkv_gemm::gemm(m, n, k, a.operand(), b.operand(), &mut c, true);
        tensor(c, Shape::new([m, n]))
    }
}

/// Outputs below which [`repeated_rows`] fills on one thread.
const PARALLEL_FILL: usize = 1 << 18;

/// `m` copies of `row`, one after the other: the output a biased product accumulates into.
fn repeated_rows(m: usize, row: &[f32]) -> Vec<f32> {
    let n = row.len();
    if m * n < PARALLEL_FILL {
        let mut out = Vec::with_capacity(m * n);
        for _ in 0..m {
            out.extend_from_slice(row);
        }
        return out;
    }
    let mut out = vec![0.0; m * n];
    out.par_chunks_mut(kernels::rows_per_task(n) * n)
        .for_each(|rows| {
            rows.chunks_exact_mut(n)
                .for_each(|out_row| out_row.copy_from_slice(row))
        });
    out
}

/// `Σ_rows dc` of an `[m, n]` operand: the bias gradient of `C = A·B + bias`.
fn column_sums(m: usize, n: usize, dc: Operand) -> Vec<f32> {
    kernels::simd!({
        if dc.transposed {
            // Column `j` of the logical matrix is row `j` of the buffer.
            (0..n)
                .map(|j| kernels::sum(&dc.data[j * dc.ld..j * dc.ld + m]))
                .collect()
        } else {
            let mut sums = vec![0.0f32; n];
            for r in 0..m {
                let row = &dc.data[r * dc.ld..r * dc.ld + n];
                sums.iter_mut().zip(row).for_each(|(s, x)| *s += x);
            }
            sums
        }
    })
}

impl FusedMatmulBackward for Flex {
    fn qkv_matmul_backward(
        a: FlexTensor,
        b: FlexTensor,
        dc: FlexTensor,
        want: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let (a, b, dc) = (Placed::new(a), Placed::new(b), Placed::new(dc));
        let ((m, k), (_, n)) = (a.dims(), b.dims());
        let (a, b, dc) = (a.operand(), b.operand(), dc.operand());
        // The two products are independent; rayon runs them side by side when both are
        // wanted, each on the threads the other leaves idle. The bias gradient, one pass
        // over dC, follows dA on its side.
        let ((da, dbias), db) = rayon::join(
            || {
                (
                    want[0].then(|| product(m, k, n, dc, b.t())),
                    want[2].then(|| tensor(column_sums(m, n, dc), Shape::new([n]))),
                )
            },
            || want[1].then(|| product(k, n, m, a.t(), dc)),
        );
        [da, db, dbias]
    }
}

/// The autodiff node of the product (`N = 2` parents: `a`, `b`) and of the biased product
/// (`N = 3`: `a`, `b`, `bias`): keeps both operands (shared buffers); the bias itself is not
/// needed for any gradient.
#[derive(Debug)]
struct MatmulNode<const N: usize>;

impl<B: FusedMatmulBackward, const N: usize> Backward<B, N> for MatmulNode<N> {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dc = grads.consume::<B>(&ops.node);
        let (a, b) = ops.state;
        // A parent that is absent (the bias of the unbiased product) wants no gradient.
        let want = std::array::from_fn(|i| ops.parents.get(i).is_some_and(Option::is_some));
        let grads_out = B::qkv_matmul_backward(a, b, dc, want);
        for (node, grad) in ops.parents.into_iter().zip(grads_out) {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: FusedMatmul + FusedMatmulBackward, C: CheckpointStrategy> FusedMatmul for Autodiff<B, C> {
    fn qkv_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = MatmulNode::<2>
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful();
        let (a, b) = (a.into_primitive(), b.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => {
                let out = B::qkv_matmul(a.clone(), b.clone());
                prep.finish((a, b), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::qkv_matmul(a, b)),
        }
    }

    fn qkv_matmul_bias(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let prep = MatmulNode::<3>
            .prepare::<C>([a.node(), b.node(), bias.node()])
            .compute_bound()
            .stateful();
        let (a, b, bias) = (
            a.into_primitive(),
            b.into_primitive(),
            bias.into_primitive(),
        );
        match prep {
            OpsKind::Tracked(prep) => {
                let out = B::qkv_matmul_bias(a.clone(), b.clone(), bias);
                prep.finish((a, b), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::qkv_matmul_bias(a, b, bias)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use qkv_test_support::{SeededRng, assert_rel_close, check_parity, random_tensor, values};

    /// Our GEMM as a tracked op against Burn's `matmul` (the oracle), values and both gradients:
    /// odd shapes that leave partial register tiles and panels, several `KC` blocks, a product
    /// large enough to run on both threads, and operands given as transposed views (the tied LM
    /// head reads the embedding table transposed) and as row-strided views.
    #[test]
    fn matmul_matches_burns_values_and_gradients() {
        let device = qkv_test_support::flex().autodiff();
        for (m, k, n) in [(7, 13, 5), (70, 129, 33), (150, 64, 200), (1, 40, 65)] {
            let mut rng = SeededRng::new((m * k + n) as u64);
            let a = random_tensor(&mut rng, [m, k], 1.0, &device);
            let b = random_tensor(&mut rng, [k, n], 1.0, &device);
            check_parity(
                &format!("matmul {m}x{k} @ {k}x{n}"),
                [a.clone(), b.clone()],
                |[a, b]| matmul(a, b),
                |[a, b]| a.matmul(b),
                1e-5 * k as f32,
            );
            // Both operands stored transposed: A as [k, m], B as [n, k].
            let (at, bt) = (a.transpose(), b.transpose());
            check_parity(
                &format!("matmul {m}x{k} @ {k}x{n}, transposed views"),
                [at, bt],
                |[at, bt]| matmul(at.transpose(), bt.transpose()),
                |[at, bt]| at.transpose().matmul(bt.transpose()),
                1e-5 * k as f32,
            );
        }
        // A row-strided view: the first 20 columns of a [30, 50] matrix.
        let mut rng = SeededRng::new(5);
        let wide = random_tensor(&mut rng, [30, 50], 1.0, &device);
        let b = random_tensor(&mut rng, [20, 9], 1.0, &device);
        check_parity(
            "matmul of a column slice",
            [wide, b],
            |[w, b]| matmul(w.slice([0..30, 0..20]), b),
            |[w, b]| w.slice([0..30, 0..20]).matmul(b),
            2e-4,
        );
    }

    /// With one operand untracked (a frozen weight), the other's gradient is still Burn's, and
    /// without autodiff the values are; on NdArray the op is Burn's `matmul` itself.
    #[test]
    fn matmul_with_one_tracked_operand_and_off_flex() {
        let device = qkv_test_support::flex().autodiff();
        let mut rng = SeededRng::new(8);
        let a = random_tensor(&mut rng, [33, 70], 1.0, &device).require_grad();
        let b = random_tensor(&mut rng, [70, 41], 1.0, &device);
        let grad_of = |c: Tensor<2>| {
            let grads = c.powf_scalar(2.0).sum().backward();
            values(a.grad(&grads).expect("a is tracked"))
        };
        let got = grad_of(matmul(a.clone(), b.clone()));
        let want = grad_of(a.clone().matmul(b.clone()));
        assert_rel_close(&got, &want, 1e-5, "gradient of the tracked operand");
        for device in [qkv_test_support::flex(), qkv_test_support::ndarray()] {
            let mut rng = SeededRng::new(9);
            let a = random_tensor(&mut rng, [17, 300], 1.0, &device);
            let b = random_tensor(&mut rng, [300, 19], 1.0, &device);
            let got = values(matmul(a.clone(), b.clone()));
            let want = values(a.matmul(b));
            assert_rel_close(&got, &want, 1e-5, "matmul without autodiff");
        }
    }

    /// `linear` is `Linear::forward` on rows, with and without a bias, in values and in the
    /// gradients of the input, the weight and the bias: on Flex (the folded bias, whose
    /// gradient is summed beside the two products) and on NdArray (Burn's ops), with `dC`
    /// arriving row-major and as a transposed view (the output read transposed downstream),
    /// at shapes that leave partial tiles and one that runs on both threads.
    #[test]
    pub(crate) fn linear_matches_burns_linear_values_and_gradients() {
        let devices = [
            qkv_test_support::flex().autodiff(),
            qkv_test_support::ndarray().autodiff(),
        ];
        for device in devices {
            for (rows, d_in, d_out, bias) in [
                (13, 24, 10, true),
                (13, 24, 10, false),
                (70, 129, 33, true),
                (1, 40, 65, true),
                (300, 128, 384, true),
            ] {
                for transposed_dc in [false, true] {
                    let mut rng = SeededRng::new((rows * d_in + d_out) as u64);
                    let layer = burn::nn::LinearConfig::new(d_in, d_out)
                        .with_bias(bias)
                        .init(&device);
                    let x = random_tensor(&mut rng, [rows, d_in], 1.0, &device).require_grad();
                    let w_out = random_tensor(&mut rng, [d_out, rows], 1.0, &device);
                    // A loss whose gradient is not uniform, so every dbias entry differs.
                    let run = |y: Tensor<2>| {
                        let loss = if transposed_dc {
                            (y.clone().transpose() * w_out.clone()).sum()
                        } else {
                            (y.clone() * w_out.clone().transpose()).sum()
                        };
                        let grads = loss.backward();
                        let mut all = vec![
                            values(y),
                            values(x.grad(&grads).expect("x is tracked")),
                            values(layer.weight.val().grad(&grads).expect("weight")),
                        ];
                        if let Some(b) = &layer.bias {
                            all.push(values(b.val().grad(&grads).expect("bias")));
                        }
                        all
                    };
                    let got = run(linear(&layer, x.clone()));
                    let want = run(layer.forward(x.clone()));
                    for (what, (g, w)) in ["values", "dx", "dweight", "dbias"]
                        .iter()
                        .zip(got.iter().zip(&want))
                    {
                        let case = format!(
                            "linear {rows}x{d_in} -> {d_out}, bias {bias}, dC transposed \
                             {transposed_dc}: {what}"
                        );
                        assert_rel_close(g, w, 1e-5, &case);
                    }
                }
            }
        }
    }

    /// The folded bias on its own: without autodiff, `matmul_bias` is the product plus the
    /// bias on every row, including the one-thread and the parallel fill of the output, and a
    /// bias of the wrong length is refused.
    #[test]
    fn matmul_bias_adds_the_bias_to_every_row() {
        let device = qkv_test_support::flex();
        for (m, k, n) in [(5, 7, 3), (1200, 16, 256)] {
            let mut rng = SeededRng::new((m + k + n) as u64);
            let a = random_tensor(&mut rng, [m, k], 1.0, &device);
            let b = random_tensor(&mut rng, [k, n], 1.0, &device);
            let bias = random_tensor(&mut rng, [n], 1.0, &device);
            let got = values(matmul_bias(a.clone(), b.clone(), bias.clone()));
            let want = values(a.matmul(b) + bias.unsqueeze::<2>());
            assert_rel_close(&got, &want, 1e-5, &format!("matmul_bias {m}x{k}x{n}"));
        }
        let refused = std::panic::catch_unwind(|| {
            matmul_bias(
                Tensor::<2>::zeros([2, 3], &device),
                Tensor::<2>::zeros([3, 4], &device),
                Tensor::<1>::zeros([3], &device),
            )
        });
        let message = refused.expect_err("a 3-long bias on 4 columns must be refused");
        let message = message
            .downcast_ref::<String>()
            .expect("a formatted message");
        assert!(
            message.contains("one value per output column (4)"),
            "{message}"
        );
    }

    /// Mismatched inner dimensions are refused with both shapes named.
    #[test]
    #[should_panic(expected = "the inner dimensions differ")]
    fn matmul_names_mismatched_shapes() {
        let device = qkv_test_support::flex();
        let _ = matmul(
            Tensor::<2>::zeros([2, 3], &device),
            Tensor::<2>::zeros([4, 5], &device),
        );
    }
}
