//! The logit lens: the residual stream after the embeddings and after every block, read out
//! through the final LayerNorm and the unembedding as if the model stopped there.

use burn::prelude::*;
use serde::Serialize;

use super::{HookPoint, check_vocab, model_device, prompt_tensor};
use crate::error::ModelError;
use crate::gpt::Gpt;

/// The stream after the embeddings (first) and after each block, each read as logits.
///
/// The last element is what [`Gpt::forward`] returns, bit for bit: the same stream through
/// the same final LayerNorm and head.
///
/// # Shapes
/// `tokens`: `[batch, seq]` -> `n_layers + 1` tensors of `[batch, seq, vocab_size]`
pub fn logit_lens(model: &Gpt, tokens: Tensor<2, Int>) -> Result<Vec<Tensor<3>>, ModelError> {
    let points: Vec<HookPoint> = std::iter::once(HookPoint::Embed)
        .chain((0..model.n_layers()).map(HookPoint::ResidPost))
        .collect();
    let (_, cache) = model.run_with_cache(tokens, points.iter().copied())?;
    Ok(points
        .iter()
        .map(|&point| {
            let stream = cache
                .per_position(point)
                .expect("every lens point is recorded");
            model.unembed(stream)
        })
        .collect())
}

/// One token as the lens sees it at one stage and position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LensToken {
    /// The token id.
    pub id: u32,
    /// Its probability (softmax of that stage's logits).
    pub prob: f32,
}

/// What the logit lens reads at each stage and position of one prompt.
#[derive(Debug, Clone, Serialize)]
pub struct LensReport {
    /// Stage names: `embed`, then `block 0`, `block 1`, ….
    pub stages: Vec<String>,
    /// `[stage][position]`: the `k` most probable next tokens, most probable first.
    pub top: Vec<Vec<Vec<LensToken>>>,
    /// `[stage][position]`: the rank (0 = most probable) and probability of the position's
    /// target token, when it has one.
    pub target: Vec<Vec<Option<(usize, f32)>>>,
}

/// The logit lens of one prompt, summarised on the host: per stage and position, the top
/// `k` tokens, and the rank of `targets[position]` (usually the next token of the text, and
/// the expected answer at the last position).
pub fn logit_lens_report(
    model: &Gpt,
    prompt: &[u32],
    targets: &[Option<u32>],
    k: usize,
) -> Result<LensReport, ModelError> {
    if targets.len() != prompt.len() {
        return Err(ModelError::InvalidInput(format!(
            "{} targets for a prompt of {} tokens",
            targets.len(),
            prompt.len()
        )));
    }
    for &target in targets.iter().flatten() {
        check_vocab(model, target, "target token")?;
    }
    let tokens = prompt_tensor(model, prompt, &model_device(model))?;
    let stages = logit_lens(model, tokens)?;
    let vocab = model.vocab_size;
    let mut report = LensReport {
        stages: std::iter::once("embed".to_string())
            .chain((0..model.n_layers()).map(|l| format!("block {l}")))
            .collect(),
        top: Vec::new(),
        target: Vec::new(),
    };
    for logits in stages {
        let probs = burn::tensor::activation::softmax(logits, 2);
        let values: Vec<f32> = probs
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 logits");
        let mut top = Vec::new();
        let mut target = Vec::new();
        for (position, row) in values.chunks_exact(vocab).enumerate() {
            // The k most probable in O(vocab), then only those sorted.
            let by_prob =
                |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
            let mut order: Vec<u32> = (0..vocab as u32).collect();
            let k = k.min(vocab);
            if k > 0 && k < vocab {
                order.select_nth_unstable_by(k - 1, by_prob);
            }
            order.truncate(k);
            order.sort_by(by_prob);
            top.push(
                order
                    .iter()
                    .map(|&id| LensToken {
                        id,
                        prob: row[id as usize],
                    })
                    .collect(),
            );
            target.push(targets[position].map(|t| {
                let p = row[t as usize];
                (row.iter().filter(|&&q| q > p).count(), p)
            }));
        }
        report.top.push(top);
        report.target.push(target);
    }
    Ok(report)
}
