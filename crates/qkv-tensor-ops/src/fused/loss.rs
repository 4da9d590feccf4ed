//! Softmax cross-entropy of a language model's logits in one op: the loss and its gradient from
//! one pass over each row, with no `log_softmax` tensor, no gather and no scatter.
//!
//! Written with tensor ops, the loss is a `log_softmax` (a max, a subtraction, an `exp`, a sum,
//! a `log` and another subtraction, each writing a `[rows, vocab]` tensor), a gather, a mask
//! and a mean; its backward pass walks the same chain in reverse. Here the forward pass reads
//! each row once to find its log-sum-exp and, when autodiff tracks the logits, writes the
//! row's gradient `(softmax − target distribution) / count` straight away (the row is still in
//! cache). The backward pass only scales that gradient by the incoming one, which for a loss
//! that is the graph's root is 1, so it returns the stored tensor as it is.
//!
//! [`cross_entropy`] routes: the kernel on Flex for `f32` logits; with the `gpu` feature, a row
//! kernel on CubeCL devices (each row's loss and gradient, averaged on the device); and
//! [`cross_entropy_explicit`] (tensor ops, the oracle of the tests) everywhere else.

use std::sync::Arc;

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
use burn::tensor::activation::log_softmax;
use rayon::prelude::*;

use super::backend::{contiguous, tensor};
use super::has_fused_kernels;
use super::kernels::{LANES, exp, max, simd, sum};

/// The targets of one loss on the host: one id per row, and the id that marks a row to skip.
#[derive(Debug, Clone)]
pub struct Targets {
    /// One target id per row of the logits.
    pub ids: Arc<[i64]>,
    /// Rows whose target is this id count for nothing (padding).
    pub ignore: Option<i64>,
}

impl Targets {
    /// Whether row `r` counts towards the loss.
    fn keeps(&self, r: usize) -> bool {
        Some(self.ids[r]) != self.ignore
    }

    /// How many rows count towards the loss.
    fn count(&self) -> usize {
        (0..self.ids.len()).filter(|&r| self.keeps(r)).count()
    }
}

/// Mean softmax cross-entropy of `logits` against `targets`, with label smoothing `smoothing`
/// (the target distribution puts `1 − smoothing` on the target and spreads `smoothing`
/// uniformly over the vocabulary), over the rows whose target is not `ignore_index`; 0 when
/// every row is ignored. PyTorch's `F.cross_entropy(logits, targets, ignore_index=…,
/// label_smoothing=…)`.
///
/// One kernel on Flex for `f32` logits (see the module documentation); tensor ops elsewhere.
///
/// - `logits`: `[rows, vocab]`
/// - `targets`: `[rows]`
/// - returns `[1]`, in f32 (half-precision logits are cast to f32 first)
///
/// # Panics
/// If `smoothing` is outside `[0, 1)`, if the shapes disagree, or (on the kernel's path) if a
/// target that is not `ignore_index` lies outside `0..vocab`. Callers check their data first.
pub fn cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    ignore_index: Option<i64>,
    smoothing: f64,
) -> Tensor<1> {
    assert!(
        (0.0..1.0).contains(&smoothing),
        "label smoothing must be in [0, 1), got {smoothing}"
    );
    if super::half_dtype(logits.dtype()).is_some() {
        return cross_entropy(super::to_f32(logits), targets, ignore_index, smoothing);
    }
    let [rows, vocab] = logits.dims();
    assert_eq!(
        targets.dims()[0],
        rows,
        "cross_entropy: {rows} rows of logits but {} targets",
        targets.dims()[0]
    );
    #[cfg(feature = "gpu")]
    if super::has_gpu_kernels(&logits) && vocab < 1 << 24 {
        return gpu_cross_entropy(logits, targets, ignore_index, smoothing);
    }
    if !has_fused_kernels(&logits.device(), logits.dtype()) {
        return cross_entropy_explicit(logits, targets, ignore_index, smoothing);
    }
    let ids: Arc<[i64]> = targets
        .into_data()
        .try_into_vec_as::<i64>()
        .expect("integer targets convert to i64")
        .into();
    if let Some((row, &id)) = ids
        .iter()
        .enumerate()
        .find(|&(_, &id)| Some(id) != ignore_index && !(0..vocab as i64).contains(&id))
    {
        panic!(
            "cross_entropy: target {id} of row {row} is outside the vocabulary 0..{vocab}; \
             the data's token ids must come from the model's tokenizer"
        );
    }
    let targets = Targets {
        ids,
        ignore: ignore_index,
    };
    Tensor::from_dispatch(<Dispatch as FusedLoss>::qkv_cross_entropy(
        logits.into_dispatch(),
        targets,
        smoothing,
    ))
}

/// [`cross_entropy`] on the GPU: one row kernel writes each row's loss (and, under autodiff,
/// its gradient); the mean over the kept rows stays on the device, so nothing waits for the
/// host. The targets go to the kernel as floats, exact for ids below 2²⁴.
///
/// - `logits`: `[rows, vocab]`; `targets`: `[rows]`; returns `[1]`
#[cfg(feature = "gpu")]
fn gpu_cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    ignore_index: Option<i64>,
    smoothing: f64,
) -> Tensor<1> {
    let keep = ignore_index.map(|ignore| targets.clone().not_equal_elem(ignore));
    let ids = targets.float();
    let ids = match &keep {
        Some(keep) => ids.mask_fill(keep.clone().bool_not(), -1.0),
        None => ids,
    };
    let row_loss = Tensor::<1>::from_dispatch(
        <Dispatch as super::gpu::GpuFusedOps>::qkv_gpu_cross_entropy_rows(
            logits.into_dispatch(),
            ids.into_dispatch(),
            smoothing,
        ),
    );
    match keep {
        None => row_loss.mean(),
        Some(keep) => row_loss.sum() / keep.float().sum().clamp_min(1.0),
    }
}

/// [`cross_entropy`] with tensor ops (`log_softmax`, gather, masked mean), differentiated by
/// autodiff: the oracle of the tests and the path off Flex.
///
/// - `logits`: `[rows, vocab]`
/// - `targets`: `[rows]`
/// - returns `[1]`
pub fn cross_entropy_explicit(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    ignore_index: Option<i64>,
    smoothing: f64,
) -> Tensor<1> {
    let [rows, _] = logits.dims();
    let log_probs = log_softmax(logits, 1);
    let keep = ignore_index.map(|ignore| targets.clone().not_equal_elem(ignore));
    // Ignored targets may hold any id (often -1); point them at 0 for the gather, then drop them.
    let safe = match &keep {
        Some(keep) => targets.mask_fill(keep.clone().bool_not(), 0),
        None => targets,
    };
    let nll = log_probs
        .clone()
        .gather(1, safe.reshape([rows, 1]))
        .reshape([rows])
        .neg();
    let per_row = if smoothing == 0.0 {
        nll
    } else {
        let uniform = log_probs.mean_dim(1).reshape([rows]).neg();
        nll.mul_scalar(1.0 - smoothing) + uniform.mul_scalar(smoothing)
    };
    match keep {
        None => per_row.mean(),
        Some(keep) => {
            let keep = keep.float();
            let count = keep.clone().sum().clamp_min(1.0);
            (per_row * keep).sum() / count
        }
    }
}

/// The loss as a Burn backend extension (Flex, and autodiff over Flex).
#[backend_extension(Flex, Autodiff)]
pub trait FusedLoss: Backend {
    /// Mean smoothed cross-entropy of `logits` (`[rows, vocab]`) against `targets`: `[1]`.
    fn qkv_cross_entropy(
        logits: FloatTensor<Self>,
        targets: Targets,
        smoothing: f64,
    ) -> FloatTensor<Self>;
}

/// What the autodiff implementation of [`FusedLoss`] calls on its inner backend.
pub trait FusedLossBackward: Backend {
    /// The loss (`[1]`) and its gradient with respect to the logits (`[rows, vocab]`) for an
    /// incoming gradient of 1.
    fn qkv_cross_entropy_with_grad(
        logits: FloatTensor<Self>,
        targets: Targets,
        smoothing: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `dlogits · dloss`, where `dloss` is `[1]`; `dlogits` itself when `dloss` is 1.
    fn qkv_cross_entropy_backward(
        dlogits: FloatTensor<Self>,
        dloss: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The contiguous `f32` elements of a Flex tensor and its `[rows, vocab]` shape.
fn rows_of(logits: &FlexTensor) -> (&[f32], usize, usize) {
    let shape = logits.shape();
    assert_eq!(
        shape.num_dims(),
        2,
        "cross_entropy takes [rows, vocab] logits"
    );
    let data = logits
        .as_slice::<f32>()
        .expect("a contiguous f32 tensor has a slice view");
    (data, shape[0], shape[1])
}

/// A `[1]` tensor holding `loss`.
fn scalar(loss: f32) -> FlexTensor {
    tensor(vec![loss], Shape::new([1]))
}

impl FusedLoss for Flex {
    fn qkv_cross_entropy(logits: FlexTensor, targets: Targets, smoothing: f64) -> FlexTensor {
        let logits = contiguous(logits);
        let (data, _, vocab) = rows_of(&logits);
        scalar(forward(data, vocab, &targets, smoothing as f32, None))
    }
}

impl FusedLossBackward for Flex {
    fn qkv_cross_entropy_with_grad(
        logits: FlexTensor,
        targets: Targets,
        smoothing: f64,
    ) -> (FlexTensor, FlexTensor) {
        let logits = contiguous(logits);
        let (data, rows, vocab) = rows_of(&logits);
        let mut grad = vec![0.0f32; data.len()];
        let loss = forward(data, vocab, &targets, smoothing as f32, Some(&mut grad));
        let grad = tensor(grad, Shape::new([rows, vocab]));
        (scalar(loss), grad)
    }

    fn qkv_cross_entropy_backward(dlogits: FlexTensor, dloss: FlexTensor) -> FlexTensor {
        let dloss = contiguous(dloss);
        let g = dloss.as_slice::<f32>().expect("an f32 loss gradient")[0];
        if g == 1.0 {
            return dlogits;
        }
        let dlogits = contiguous(dlogits);
        let shape = dlogits.shape();
        let scaled = dlogits
            .as_slice::<f32>()
            .expect("an f32 gradient")
            .par_iter()
            .map(|d| d * g)
            .collect();
        tensor(scaled, shape)
    }
}

/// Rows per rayon task: about 16K elements each, as the other kernels.
fn rows_per_task(vocab: usize) -> usize {
    (16 * 1024 / vocab.max(1)).max(1)
}

/// The loss over `logits` (rows of `vocab`), and with `grad`, its gradient for an incoming 1.
/// Per kept row with target `t`, log-sum-exp `lse` and smoothing `ε`:
/// `loss = lse − (1 − ε)·x_t − ε·mean(x)` and `grad_v = (e^(x_v − lse) − (1 − ε)·[v = t] −
/// ε/vocab) / count`; ignored rows contribute nothing and get a zero gradient.
fn forward(
    logits: &[f32],
    vocab: usize,
    targets: &Targets,
    smoothing: f32,
    grad: Option<&mut [f32]>,
) -> f32 {
    let count = targets.count();
    if count == 0 || vocab == 0 {
        return 0.0;
    }
    let inv_count = 1.0 / count as f32;
    let per_task = rows_per_task(vocab);
    let chunk = per_task * vocab;
    let task = |(i, logits): (usize, &[f32]), grad: Option<&mut [f32]>| -> f64 {
        simd!({
            rows_loss(
                logits,
                vocab,
                i * per_task,
                targets,
                smoothing,
                inv_count,
                grad,
            )
        })
    };
    let total: f64 = match grad {
        Some(grad) => logits
            .par_chunks(chunk)
            .enumerate()
            .zip(grad.par_chunks_mut(chunk))
            .map(|(rows, grad)| task(rows, Some(grad)))
            .sum(),
        None => logits
            .par_chunks(chunk)
            .enumerate()
            .map(|rows| task(rows, None))
            .sum(),
    };
    (total / count as f64) as f32
}

/// [`forward`] on whole rows, the first of them row `first_row`: returns their summed loss.
#[inline(always)]
fn rows_loss(
    logits: &[f32],
    vocab: usize,
    first_row: usize,
    targets: &Targets,
    smoothing: f32,
    inv_count: f32,
    mut grad: Option<&mut [f32]>,
) -> f64 {
    let mut total = 0.0f64;
    for (r, x) in logits.chunks_exact(vocab).enumerate() {
        let row = first_row + r;
        let g = grad
            .as_deref_mut()
            .map(|g| &mut g[r * vocab..(r + 1) * vocab]);
        if !targets.keeps(row) {
            // The gradient buffer starts zeroed: an ignored row keeps its zeros.
            continue;
        }
        let t = targets.ids[row] as usize;
        let m = max(x);
        let lse = match g {
            Some(g) => {
                for (g, &x) in g.iter_mut().zip(x) {
                    *g = exp(x - m);
                }
                let s = sum(g);
                let scale = inv_count / s;
                let floor = smoothing / vocab as f32 * inv_count;
                for g in g.iter_mut() {
                    *g = *g * scale - floor;
                }
                g[t] -= (1.0 - smoothing) * inv_count;
                m + s.ln()
            }
            None => m + sum_exp(x, m).ln(),
        };
        let mut loss = lse - (1.0 - smoothing) * x[t];
        if smoothing != 0.0 {
            loss -= smoothing * sum(x) / vocab as f32;
        }
        total += loss as f64;
    }
    total
}

/// `Σ e^(x − m)`, in [`LANES`]-wide accumulators so that it vectorises.
#[inline(always)]
fn sum_exp(xs: &[f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&x| exp(x - m)).sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += exp(c[l] - m);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The loss's autodiff node: keeps the gradient its forward pass wrote.
#[derive(Debug)]
struct CrossEntropyNode;

impl<B: FusedLossBackward> Backward<B, 1> for CrossEntropyNode {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dloss = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::qkv_cross_entropy_backward(ops.state, dloss));
        }
    }
}

impl<B: FusedLoss + FusedLossBackward, C: CheckpointStrategy> FusedLoss for Autodiff<B, C> {
    fn qkv_cross_entropy(
        logits: FloatTensor<Self>,
        targets: Targets,
        smoothing: f64,
    ) -> FloatTensor<Self> {
        let prep = CrossEntropyNode
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful();
        let logits = logits.into_primitive();
        match prep {
            OpsKind::Tracked(prep) => {
                let (loss, grad) = B::qkv_cross_entropy_with_grad(logits, targets, smoothing);
                prep.finish(grad, loss)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::qkv_cross_entropy(logits, targets, smoothing))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The loss against an `f64` row-by-row reference and against the explicit path, values
    //! and gradients, on Flex (the kernel, with and without autodiff) and NdArray.

    use super::*;
    use qkv_test_support::{SeededRng, assert_close, loss_and_grad, values};

    /// Flex with autodiff, the device training runs on.
    fn flex_autodiff() -> Device {
        qkv_test_support::flex().autodiff()
    }

    /// The loss on the host in `f64`, row by row: the oracle of both paths of [`cross_entropy`].
    fn reference_loss(
        logits: &[f32],
        ids: &[i64],
        vocab: usize,
        ignore: Option<i64>,
        eps: f64,
    ) -> f64 {
        let (mut total, mut count) = (0.0f64, 0usize);
        for (r, &t) in ids.iter().enumerate() {
            if Some(t) == ignore {
                continue;
            }
            let x: Vec<f64> = logits[r * vocab..(r + 1) * vocab]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            let mean = x.iter().sum::<f64>() / vocab as f64;
            total += lse - (1.0 - eps) * x[t as usize] - eps * mean;
            count += 1;
        }
        if count == 0 {
            0.0
        } else {
            total / count as f64
        }
    }

    #[test]
    pub(crate) fn cross_entropy_matches_explicit_and_reference_values_and_gradients() {
        // Odd vocabularies exercise the lane remainder; -100 rows are ignored; a weight of 1 takes
        // the stored gradient as it is, any other scales it.
        let cases = [
            (24, 65, Some(-100), 0.0, 1.0),
            (7, 37, None, 0.0, 0.7),
            (40, 1000, Some(-100), 0.1, 1.0),
            (3, 5, Some(4), 0.25, -1.5),
        ];
        for (rows, vocab, ignore, eps, weight) in cases {
            let mut rng = SeededRng::new((rows * vocab) as u64);
            let data = rng.vec(rows * vocab, 6.0);
            let mut ids: Vec<i64> = (0..rows).map(|r| ((r * 7919 + 3) % vocab) as i64).collect();
            if let Some(ignore) = ignore {
                ids[0] = ignore;
                ids[rows - 1] = ignore;
            }
            let want = reference_loss(&data, &ids, vocab, ignore, eps) as f32;
            let what =
                format!("cross_entropy {rows}x{vocab} ignore={ignore:?} eps={eps} w={weight}");
            let at = |device: &Device| {
                Tensor::<2>::from_data(TensorData::new(data.clone(), [rows, vocab]), device)
            };
            let kernel = |l, t| cross_entropy(l, t, ignore, eps);
            let explicit = |l, t| cross_entropy_explicit(l, t, ignore, eps);
            let (fast, fast_grad) = loss_and_grad(at(&flex_autodiff()), &ids, weight, kernel);
            let (oracle, oracle_grad) = loss_and_grad(at(&flex_autodiff()), &ids, weight, explicit);
            let ndarray = at(&qkv_test_support::ndarray().autodiff());
            let (nd, nd_grad) = loss_and_grad(ndarray, &ids, weight, kernel);
            for (got, path) in [(fast, "kernel"), (oracle, "explicit"), (nd, "ndarray")] {
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{what}: {path} loss {got} against the f64 reference {want}"
                );
            }
            let scale = oracle_grad.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "{what}: the oracle's gradient is all zeros");
            assert_close(
                &fast_grad,
                &oracle_grad,
                1e-5 * scale,
                &format!("{what}: kernel gradient"),
            );
            assert_close(
                &nd_grad,
                &oracle_grad,
                1e-5 * scale,
                &format!("{what}: ndarray gradient"),
            );
            if let Some(ignore) = ignore {
                let ignored = ids
                    .iter()
                    .position(|&t| t == ignore)
                    .expect("an ignored row");
                let row = &fast_grad[ignored * vocab..(ignored + 1) * vocab];
                assert!(
                    row.iter().all(|&g| g == 0.0),
                    "{what}: an ignored row has a gradient"
                );
            }
        }
    }

    #[test]
    fn cross_entropy_without_autodiff_and_with_every_row_ignored() {
        let device = qkv_test_support::flex();
        let mut rng = SeededRng::new(8);
        let data = rng.vec(4 * 9, 3.0);
        let ids = [1i64, 8, 0, 4];
        let logits = Tensor::<2>::from_data(TensorData::new(data.clone(), [4, 9]), &device);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(ids.to_vec(), [4]), &device);
        let got = values(cross_entropy(logits.clone(), targets, None, 0.0))[0];
        let want = reference_loss(&data, &ids, 9, None, 0.0) as f32;
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "loss {got} against {want}"
        );
        let ignored = Tensor::<1, Int>::from_data(TensorData::new(vec![-1i64; 4], [4]), &device);
        assert_eq!(
            values(cross_entropy(logits, ignored, Some(-1), 0.1))[0],
            0.0
        );
    }

    #[test]
    #[should_panic(expected = "target 9 of row 1 is outside the vocabulary 0..9")]
    fn cross_entropy_names_a_target_outside_the_vocabulary() {
        let device = qkv_test_support::flex();
        let logits = Tensor::<2>::zeros([2, 9], &device);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 9], [2]), &device);
        let _ = cross_entropy(logits, targets, Some(-100), 0.0);
    }
}
