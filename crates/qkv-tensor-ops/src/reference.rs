//! Slow, obviously-correct reference implementations on plain `Vec<f32>`s.
//!
//! Each function is written as a direct transcription of its formula, one loop per index and
//! `f64` accumulation, so that it can be checked by reading. They are public so that the
//! attention and model crates can test their own fast paths against them. Never use them
//! for real work.

/// The sizes of one attention problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionDims {
    /// Sequences in the batch.
    pub batch: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Query positions.
    pub seq_q: usize,
    /// Key (and value) positions.
    pub seq_k: usize,
    /// Width of one head's query, key and value vectors.
    pub d_head: usize,
}

/// Softmax over consecutive rows of length `row_len`, with `hidden[i]` entries given
/// probability 0; a row with every entry hidden becomes all zeros.
pub fn reference_masked_softmax(scores: &[f32], hidden: &[bool], row_len: usize) -> Vec<f32> {
    assert_eq!(scores.len(), hidden.len());
    let mut out = vec![0.0f32; scores.len()];
    for row in 0..scores.len() / row_len {
        let range = row * row_len..(row + 1) * row_len;
        let mut max = f64::NEG_INFINITY;
        for i in range.clone() {
            if !hidden[i] {
                max = max.max(scores[i] as f64);
            }
        }
        if max == f64::NEG_INFINITY {
            continue; // every key hidden: leave the row at zero
        }
        let mut sum = 0.0f64;
        for i in range.clone() {
            if !hidden[i] {
                sum += (scores[i] as f64 - max).exp();
            }
        }
        for i in range {
            if !hidden[i] {
                out[i] = ((scores[i] as f64 - max).exp() / sum) as f32;
            }
        }
    }
    out
}

/// Scaled dot-product attention, one query, one key at a time.
///
/// `q`: `[batch, n_heads, seq_q, d_head]`, `k` and `v`: `[batch, n_heads, seq_k, d_head]`,
/// row-major. Key `j` is hidden from query `i` of sequence `b` when `causal` and
/// `j > seq_k - seq_q + i` (bottom-right alignment), or when `key_padding[b * seq_k + j]`.
///
/// Returns `(context [batch, n_heads, seq_q, d_head], probs [batch, n_heads, seq_q, seq_k])`.
pub fn reference_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttentionDims,
    causal: bool,
    key_padding: Option<&[bool]>,
) -> (Vec<f32>, Vec<f32>) {
    let AttentionDims {
        batch,
        n_heads,
        seq_q,
        seq_k,
        d_head,
    } = dims;
    let scale = 1.0 / (d_head as f64).sqrt();
    let q_at =
        |b: usize, h: usize, i: usize, d: usize| q[((b * n_heads + h) * seq_q + i) * d_head + d];
    let k_at =
        |b: usize, h: usize, j: usize, d: usize| k[((b * n_heads + h) * seq_k + j) * d_head + d];
    let v_at =
        |b: usize, h: usize, j: usize, d: usize| v[((b * n_heads + h) * seq_k + j) * d_head + d];

    let mut scores = vec![0.0f32; batch * n_heads * seq_q * seq_k];
    let mut hidden = vec![false; scores.len()];
    for b in 0..batch {
        for h in 0..n_heads {
            for i in 0..seq_q {
                for j in 0..seq_k {
                    let mut dot = 0.0f64;
                    for d in 0..d_head {
                        dot += q_at(b, h, i, d) as f64 * k_at(b, h, j, d) as f64;
                    }
                    let at = ((b * n_heads + h) * seq_q + i) * seq_k + j;
                    scores[at] = (dot * scale) as f32;
                    let future = causal && j > seq_k - seq_q + i;
                    let padded = key_padding.is_some_and(|pad| pad[b * seq_k + j]);
                    hidden[at] = future || padded;
                }
            }
        }
    }
    let probs = reference_masked_softmax(&scores, &hidden, seq_k);

    let mut context = vec![0.0f32; batch * n_heads * seq_q * d_head];
    for b in 0..batch {
        for h in 0..n_heads {
            for i in 0..seq_q {
                for d in 0..d_head {
                    let mut acc = 0.0f64;
                    for j in 0..seq_k {
                        let p = probs[((b * n_heads + h) * seq_q + i) * seq_k + j] as f64;
                        acc += p * v_at(b, h, j, d) as f64;
                    }
                    context[((b * n_heads + h) * seq_q + i) * d_head + d] = acc as f32;
                }
            }
        }
    }
    (context, probs)
}

/// Rotary position embedding, rotate-half form (GPT-NeoX, LLaMA): for each position `p` and
/// pair `(x[i], x[i + d_head/2])`, a rotation by the angle `p · base^(-2i/d_head)`.
///
/// `x`: `[rows, seq, d_head]` row-major, the first position being `offset`.
pub fn reference_rotary(
    x: &[f32],
    rows: usize,
    seq: usize,
    d_head: usize,
    offset: usize,
    base: f64,
) -> Vec<f32> {
    let half = d_head / 2;
    let mut out = vec![0.0f32; x.len()];
    for r in 0..rows {
        for t in 0..seq {
            let pos = (offset + t) as f64;
            for i in 0..half {
                let angle = pos * base.powf(-2.0 * i as f64 / d_head as f64);
                let (sin, cos) = angle.sin_cos();
                let at = (r * seq + t) * d_head;
                let a = x[at + i] as f64;
                let b = x[at + i + half] as f64;
                out[at + i] = (a * cos - b * sin) as f32;
                out[at + i + half] = (b * cos + a * sin) as f32;
            }
        }
    }
    out
}
