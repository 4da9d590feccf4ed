//! Summary statistics of attention probabilities, per head: how spread out each head's
//! attention is, how far back it looks, how peaked it is, and how much it parks on the first
//! token (an "attention sink").

use burn::prelude::*;

/// Statistics of one head, averaged over the batch and the query positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadStats {
    /// Mean entropy of a query's distribution over keys, in nats (0 = looks at one key).
    pub entropy: f64,
    /// Mean of `Σ_j p_ij · (i − j)`: how many positions back the head looks, on average.
    pub mean_distance: f64,
    /// Mean of a query's largest probability.
    pub max_prob: f64,
    /// Mean probability on key 0.
    pub first_token_mass: f64,
}

/// Per-head statistics of causal self-attention probabilities.
///
/// Query `i` is taken to sit at position `seq_k − seq_q + i` (bottom-right alignment, as
/// everywhere in qkv), so distances are right for a KV-cached step too.
///
/// # Shapes
/// `probs`: `[batch, n_heads, seq_q, seq_k]` -> one [`HeadStats`] per head
pub fn attention_stats(probs: Tensor<4>) -> Vec<HeadStats> {
    let [batch, n_heads, seq_q, seq_k] = probs.dims();
    let p: Vec<f32> = probs
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("float probabilities");
    let mut out = Vec::with_capacity(n_heads);
    for h in 0..n_heads {
        let (mut entropy, mut distance, mut max_prob, mut first) = (0.0, 0.0, 0.0, 0.0);
        for b in 0..batch {
            for i in 0..seq_q {
                let row = &p[((b * n_heads + h) * seq_q + i) * seq_k..][..seq_k];
                let pos = (seq_k - seq_q + i) as f64;
                let mut row_max = 0.0f64;
                for (j, &pj) in row.iter().enumerate() {
                    let pj = pj as f64;
                    if pj > 0.0 {
                        entropy -= pj * pj.ln();
                    }
                    distance += pj * (pos - j as f64);
                    row_max = row_max.max(pj);
                }
                max_prob += row_max;
                first += row[0] as f64;
            }
        }
        let n = (batch * seq_q).max(1) as f64;
        out.push(HeadStats {
            entropy: entropy / n,
            mean_distance: distance / n,
            max_prob: max_prob / n,
            first_token_mass: first / n,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkv_test_support::test_on_cpu_backends;

    test_on_cpu_backends!(stats_of_known_patterns, |device: &Device| {
        // Head 0 looks at the previous token (or itself at 0); head 1 is uniform over the past.
        let seq = 4;
        let mut p = vec![0.0f32; 2 * seq * seq];
        for i in 0..seq {
            p[i * seq + i.saturating_sub(1)] = 1.0;
            for j in 0..=i {
                p[seq * seq + i * seq + j] = 1.0 / (i + 1) as f32;
            }
        }
        let probs = Tensor::<4>::from_data(TensorData::new(p, [1, 2, seq, seq]), device);
        let stats = attention_stats(probs);
        assert!(stats[0].entropy.abs() < 1e-9);
        assert!(
            (stats[0].mean_distance - 0.75).abs() < 1e-9,
            "{:?}",
            stats[0]
        ); // (0+1+1+1)/4
        assert!((stats[0].max_prob - 1.0).abs() < 1e-9);
        assert!((stats[0].first_token_mass - 0.5).abs() < 1e-9); // queries 0 and 1
        let want_entropy = (0.0 + 2f64.ln() + 3f64.ln() + 4f64.ln()) / 4.0;
        assert!((stats[1].entropy - want_entropy).abs() < 1e-6);
        let want_distance = (0.0 + 0.5 + 1.0 + 1.5) / 4.0;
        assert!((stats[1].mean_distance - want_distance).abs() < 1e-6);
        let want_first = (1.0 + 0.5 + 1.0 / 3.0 + 0.25) / 4.0;
        assert!((stats[1].first_token_mass - want_first).abs() < 1e-6);
    });
}
