//! What `compare` and `lengths` share: a trained model of either family, recall scored by
//! the distance to each answer, and the checks of their numeric flags.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::prelude::*;
use qkv_data::{IGNORE, RecallTask, Split};
use qkv_trainer::tensors;
use qkv_transformer::interp::{gpt_position_gradients, recurrent_position_gradients};
use qkv_transformer::recurrent::RecurrentLm;
use qkv_transformer::{Gpt, SplitMix64, cross_entropy};

/// A trained model of either family, for evaluation.
pub(crate) enum Model {
    /// The transformer.
    Gpt(Gpt),
    /// An LSTM or GRU.
    Rnn(RecurrentLm),
}

impl Model {
    /// Next-token logits, `[batch, seq]` -> `[batch, seq, vocab_size]`.
    pub(crate) fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        match self {
            Model::Gpt(m) => m.forward(tokens),
            Model::Rnn(m) => m.forward(tokens),
        }
    }

    /// Norms of the gradient of the recall loss reaching each layer at each position
    /// (`model` on an autodiff device).
    pub(crate) fn position_gradients(
        &self,
        x: Tensor<2, Int>,
        y: Tensor<2, Int>,
    ) -> Result<Vec<Vec<f64>>> {
        let loss = |logits| cross_entropy(logits, y, Some(IGNORE));
        Ok(match self {
            Model::Gpt(m) => gpt_position_gradients(m, x, loss)?.norms,
            Model::Rnn(m) => recurrent_position_gradients(m, x, loss).norms,
        })
    }
}

/// Held-out accuracy on `examples` recall examples: overall, and `(distance, correct,
/// total)` for each distance between a pair and its query.
pub(crate) fn accuracy_by_distance(
    model: &Model,
    task: &RecallTask,
    examples: usize,
    seed: u64,
    device: &Device,
) -> (f64, Vec<(usize, usize, usize)>) {
    let mut rng = SplitMix64::new(seed ^ 0xd157_a9ce);
    let mut tally: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    let mut left = examples;
    while left > 0 {
        let n = left.min(64);
        left -= n;
        let batch = task.batch(Split::Val, n, &mut |k| rng.below(k));
        let (x, _) = tensors(&batch, device);
        let predicted: Vec<i64> = model
            .forward(x)
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .try_into_vec_as::<i64>()
            .expect("int predictions");
        for row in 0..n {
            let span = row * batch.seq..(row + 1) * batch.seq;
            let distances = task.answer_distances(&batch.inputs[span.clone()]);
            for (t, d) in distances.into_iter().enumerate() {
                if let Some(d) = d {
                    let i = span.start + t;
                    let entry = tally.entry(d).or_default();
                    entry.0 += (predicted[i] == batch.targets[i]) as usize;
                    entry.1 += 1;
                }
            }
        }
    }
    let (correct, total) = tally
        .values()
        .fold((0, 0), |(c, t), &(dc, dt)| (c + dc, t + dt));
    let rows = tally.into_iter().map(|(d, (c, t))| (d, c, t)).collect();
    (correct as f64 / total.max(1) as f64, rows)
}

/// Errors unless every count is in `1..=2^20`, naming its flag.
pub(crate) fn check_counts(counts: &[(usize, &str)]) -> Result<()> {
    for &(value, flag) in counts {
        if value == 0 || value > 1 << 20 {
            bail!("{flag} must be in 1..=1048576, got {value}");
        }
    }
    Ok(())
}

/// Errors unless `--lr` is a positive, finite number.
pub(crate) fn check_lr(lr: f64) -> Result<()> {
    if !(lr > 0.0 && lr.is_finite()) {
        bail!("--lr must be a positive number, got {lr}");
    }
    Ok(())
}
