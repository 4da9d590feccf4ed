//! Rotary position embedding (RoPE, Su et al. 2021, <https://arxiv.org/abs/2104.09864>):
//! queries and keys are rotated by an angle proportional to their absolute position, so that
//! their dot product depends only on the distance between them.

use burn::prelude::*;

/// The `cos` and `sin` tables for positions `offset..offset + seq_len`, rotate-half layout:
/// column `i` and column `i + d_head/2` share the angle `position · base^(-2i/d_head)`.
///
/// # Shapes
/// returns `([seq_len, d_head], [seq_len, d_head])`
///
/// # Panics
/// If `d_head` is odd: rotation acts on pairs of features.
pub fn rotary_tables(
    seq_len: usize,
    d_head: usize,
    offset: usize,
    base: f64,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    assert!(
        d_head.is_multiple_of(2),
        "rotary embedding needs an even d_head, got {d_head}"
    );
    let half = d_head / 2;
    let mut cos = Vec::with_capacity(seq_len * d_head);
    let mut sin = Vec::with_capacity(seq_len * d_head);
    for t in 0..seq_len {
        let pos = (offset + t) as f64;
        for column in 0..d_head {
            let i = column % half;
            let angle = pos * base.powf(-2.0 * i as f64 / d_head as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [seq_len, d_head]), device),
        Tensor::from_data(TensorData::new(sin, [seq_len, d_head]), device),
    )
}

/// Rotates `x` by its positions, the first being `offset` (the number of positions already
/// in a KV cache when decoding).
///
/// `x·cos + rotate_half(x)·sin`, where `rotate_half([a, b]) = [-b, a]` on the two halves of
/// the last dimension.
///
/// # Shapes
/// `x`: `[batch, n_heads, seq_len, d_head]` -> `[batch, n_heads, seq_len, d_head]`
///
/// # Panics
/// If `d_head` is odd.
pub fn apply_rotary(x: Tensor<4>, offset: usize, base: f64) -> Tensor<4> {
    let [_, _, seq_len, d_head] = x.dims();
    let (cos, sin) = rotary_tables(seq_len, d_head, offset, base, &x.device());
    // The tables are f32; a half-precision `x` (mixed precision) takes them in its type.
    let (cos, sin) = match crate::fused::half_dtype(x.dtype()) {
        Some(half) => (cos.cast(half), sin.cast(half)),
        None => (cos, sin),
    };
    let half = d_head / 2;
    let first = x.clone().narrow(3, 0, half);
    let second = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos.unsqueeze::<4>() + rotated * sin.unsqueeze::<4>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::reference_rotary;
    use qkv_test_support::{SeededRng, assert_close, random_tensor, test_on_cpu_backends, values};

    test_on_cpu_backends!(matches_reference_at_an_offset, |device: &Device| {
        let mut rng = SeededRng::new(11);
        let x = random_tensor(&mut rng, [3, 5, 7, 8], 1.0, device);
        let got = values(apply_rotary(x.clone(), 4, 10_000.0));
        let want = reference_rotary(&values(x), 15, 7, 8, 4, 10_000.0);
        assert_close(&got, &want, 1e-5, "rotary vs reference");
    });

    test_on_cpu_backends!(scores_depend_only_on_distance, |device: &Device| {
        let mut rng = SeededRng::new(12);
        let q = random_tensor(&mut rng, [1, 1, 1, 8], 1.0, device);
        let k = random_tensor(&mut rng, [1, 1, 1, 8], 1.0, device);
        let score = |pq: usize, pk: usize| {
            let q = apply_rotary(q.clone(), pq, 10_000.0);
            let k = apply_rotary(k.clone(), pk, 10_000.0);
            values(q.matmul(k.transpose()))[0]
        };
        assert!((score(5, 2) - score(13, 10)).abs() < 1e-5);
        assert!(
            (score(5, 2) - score(5, 4)).abs() > 1e-4,
            "position must matter"
        );
    });
}
