//! A softmax over the last dimension that hides masked entries with true minus infinity.

use burn::prelude::*;
use burn::tensor::activation::softmax;

/// Softmax over the last dimension, with masked entries (`true` in `mask`) given probability
/// exactly 0.
///
/// Masked scores are replaced by `-inf`, not by a large finite negative number. A finite
/// fill (Burn's `MultiHeadAttention` uses `-1e4`) is not a mask: once real scores grow past
/// it, which happens at high learning rates, the hidden keys get weight again and a causal
/// model can see the future.
///
/// A row whose entries are *all* masked has no valid distribution. It comes out as **all
/// zeros** (not NaN, and not uniform), so the attention output for such a query is the zero
/// vector and no gradient flows through the row. This is also what Burn's fused
/// `module::attention` returns for such a row.
///
/// # Shapes
/// `scores`: `[.., n]`; `mask`: broadcastable to `scores` -> `[.., n]`
pub fn masked_softmax<const D: usize>(
    scores: Tensor<D>,
    mask: Option<Tensor<D, Bool>>,
) -> Tensor<D> {
    if let Some(half) = crate::fused::half_dtype(scores.dtype()) {
        return masked_softmax(crate::fused::to_f32(scores), mask).cast(half);
    }
    let last = D - 1;
    let Some(mask) = mask else {
        return softmax(scores, last);
    };
    let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    // Subtracting the row maximum only guards exp() against overflow; softmax does not depend
    // on it, so it is detached. A fully masked row has maximum -inf; clamping it to the
    // smallest finite float keeps `-inf - max` at -inf instead of NaN.
    let max = scores.clone().detach().max_dim(last).clamp_min(f32::MIN);
    let exp = (scores - max).exp();
    let sum = exp.clone().sum_dim(last);
    // A fully masked row sums to 0; dividing by 1 instead leaves it all zeros, and keeps the
    // backward pass (which divides by sum²) free of 0/0.
    let empty_row = sum.clone().equal_elem(0.0);
    exp / sum.mask_fill(empty_row, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::reference_masked_softmax;
    use qkv_test_support::{SeededRng, assert_close, random_tensor, test_on_cpu_backends, values};

    test_on_cpu_backends!(matches_reference_with_random_mask, |device: &Device| {
        let mut rng = SeededRng::new(7);
        let shape = [3, 5, 7, 13];
        let scores = random_tensor(&mut rng, shape, 4.0, device);
        let hidden: Vec<bool> = (0..shape.iter().product::<usize>())
            .map(|_| rng.below(3) == 0)
            .collect();
        let mask = Tensor::<4, Bool>::from_data(TensorData::new(hidden.clone(), shape), device);
        let got = values(masked_softmax(scores.clone(), Some(mask)));
        let want = reference_masked_softmax(&values(scores), &hidden, 13);
        assert_close(&got, &want, 1e-6, "masked softmax vs reference");
        // Hidden entries are exactly zero, not merely small.
        for (p, h) in got.iter().zip(&hidden) {
            if *h {
                assert_eq!(*p, 0.0);
            }
        }
    });

    test_on_cpu_backends!(fully_masked_row_is_zeros_not_nan, |device: &Device| {
        let scores = Tensor::<2>::from_data([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], device);
        let mask = Tensor::<2, Bool>::from_data([[true, true, true], [false, true, false]], device);
        let got = values(masked_softmax(scores, Some(mask)));
        assert_eq!(&got[..3], &[0.0, 0.0, 0.0]);
        let e = (2.0f32).exp();
        assert_close(
            &got[3..],
            &[1.0 / (1.0 + e), 0.0, e / (1.0 + e)],
            1e-6,
            "row 2",
        );
    });

    test_on_cpu_backends!(huge_scores_stay_hidden, |device: &Device| {
        // A finite fill of -1e4 would lose against scores of this size; -inf never does.
        let scores = Tensor::<2>::from_data([[-3.0e4, 5.0e4, 0.0]], device);
        let mask = Tensor::<2, Bool>::from_data([[false, true, false]], device);
        let got = values(masked_softmax(scores, Some(mask)));
        assert_eq!(got, vec![0.0, 0.0, 1.0]);
    });

    test_on_cpu_backends!(
        fully_masked_row_has_finite_zero_gradient,
        |device: &Device| {
            let device = device.clone().autodiff();
            let scores = Tensor::<2>::from_data([[1.0, 2.0], [3.0, 4.0]], &device).require_grad();
            let mask = Tensor::<2, Bool>::from_data([[true, true], [false, false]], &device);
            let weights = Tensor::<2>::from_data([[1.0, 2.0], [3.0, -1.0]], &device);
            let loss = (masked_softmax(scores.clone(), Some(mask)) * weights).sum();
            let grads = loss.backward();
            let g = values(scores.grad(&grads).unwrap());
            assert!(g.iter().all(|x| x.is_finite()), "gradient {g:?}");
            assert_eq!(&g[..2], &[0.0, 0.0]);
            assert!(g[2].abs() > 0.0);
        }
    );
}
