//! Next-token cross-entropy, with an index to ignore (padding).

use burn::prelude::*;

/// Mean cross-entropy of `logits` against `targets`, over the targets that are not
/// `ignore_index` (PyTorch's `F.cross_entropy(..., ignore_index=…)`). When every target is
/// ignored the loss is 0.
///
/// # Shapes
/// - `logits`: `[batch, seq, vocab_size]`
/// - `targets`: `[batch, seq]`
/// - returns `[1]`
pub fn cross_entropy(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    ignore_index: Option<i64>,
) -> Tensor<1> {
    smoothed_cross_entropy(logits, targets, ignore_index, 0.0)
}

/// The same loss, one row at a time on the host, for tests: `logits` `[rows, vocab]`
/// row-major, `targets` `[rows]`.
pub fn reference_cross_entropy(
    logits: &[f32],
    targets: &[i64],
    vocab: usize,
    ignore_index: Option<i64>,
) -> f64 {
    reference_smoothed_cross_entropy(logits, targets, vocab, ignore_index, 0.0)
}

/// Cross-entropy with label smoothing (Szegedy et al. 2016, as "Attention Is All You Need"
/// trains): the target distribution puts `1 − smoothing` on the right token and spreads
/// `smoothing` uniformly over the whole vocabulary, so the loss per position is
/// `(1 − ε)·(−log p_target) + ε·mean_v(−log p_v)`. Averaged over the targets that are not
/// `ignore_index`; `smoothing = 0` is [`cross_entropy`].
///
/// # Shapes
/// - `logits`: `[batch, seq, vocab_size]`
/// - `targets`: `[batch, seq]`
/// - returns `[1]`
pub fn smoothed_cross_entropy(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    ignore_index: Option<i64>,
    smoothing: f64,
) -> Tensor<1> {
    let [batch, seq, vocab] = logits.dims();
    let rows = batch * seq;
    qkv_tensor_ops::fused::cross_entropy(
        logits.reshape([rows, vocab]),
        targets.reshape([rows]),
        ignore_index,
        smoothing,
    )
}

/// [`smoothed_cross_entropy`] one row at a time on the host, for tests.
pub fn reference_smoothed_cross_entropy(
    logits: &[f32],
    targets: &[i64],
    vocab: usize,
    ignore_index: Option<i64>,
    smoothing: f64,
) -> f64 {
    let mut total = 0.0f64;
    let mut count = 0usize;
    for (row, &target) in targets.iter().enumerate() {
        if Some(target) == ignore_index {
            continue;
        }
        let row = &logits[row * vocab..(row + 1) * vocab];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        let mut expected = 0.0;
        for (v, &logit) in row.iter().enumerate() {
            let q = smoothing / vocab as f64
                + if v as i64 == target {
                    1.0 - smoothing
                } else {
                    0.0
                };
            expected += q * (lse - logit as f64);
        }
        total += expected;
        count += 1;
    }
    if count == 0 {
        0.0
    } else {
        total / count as f64
    }
}
