//! Activation patching: run a corrupted prompt with one activation taken from a clean
//! prompt's run, and measure how much of the clean answer comes back.
//!
//! The measure is the logit difference at the last position, `logit(answer) −
//! logit(wrong)`, and a patch's effect is the fraction of the clean–corrupted gap it closes:
//! `(patched − corrupted) / (clean − corrupted)`, so 1 restores the clean behaviour and 0
//! does nothing. Every run computes attention step by step
//! ([`Hooks::explicit_attention`]), so a patch that changes nothing leaves the logits equal
//! bit for bit.

use burn::prelude::*;
use serde::Serialize;

use super::{ActivationCache, HookPoint, Hooks, check_vocab, model_device, prompt_tensor};
use crate::error::ModelError;
use crate::gpt::Gpt;

/// Which activation of the clean run to put into the corrupted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patch {
    /// One head's output (`z`) at every position.
    Head {
        /// The block.
        layer: usize,
        /// The head.
        head: usize,
    },
    /// The residual stream entering a block, at one position or (`None`) at all of them.
    ResidPre {
        /// The block.
        layer: usize,
        /// The position, or every position.
        position: Option<usize>,
    },
    /// A block's whole attention output, at every position.
    AttnOut(usize),
    /// A block's MLP output, at every position.
    MlpOut(usize),
}

impl Patch {
    /// The hook point the patch replaces.
    pub fn point(self) -> HookPoint {
        match self {
            Patch::Head { layer, .. } => HookPoint::HeadOutput(layer),
            Patch::ResidPre { layer, .. } => HookPoint::ResidPre(layer),
            Patch::AttnOut(layer) => HookPoint::AttnOut(layer),
            Patch::MlpOut(layer) => HookPoint::MlpOut(layer),
        }
    }
}

/// The points a clean run must record for every [`Patch`] of a model with `n_layers` blocks.
fn patch_points(n_layers: usize) -> Vec<HookPoint> {
    (0..n_layers)
        .flat_map(|l| {
            [
                HookPoint::HeadOutput(l),
                HookPoint::ResidPre(l),
                HookPoint::AttnOut(l),
                HookPoint::MlpOut(l),
            ]
        })
        .collect()
}

/// Runs `tokens` with `patch` taken from `clean` (a cache recorded on a prompt of the same
/// shape, holding the patch's point).
///
/// # Shapes
/// `tokens`: `[batch, seq]` -> logits `[batch, seq, vocab_size]`
pub fn run_patched(
    model: &Gpt,
    tokens: Tensor<2, Int>,
    clean: &ActivationCache,
    patch: Patch,
) -> Result<Tensor<3>, ModelError> {
    let point = patch.point();
    let missing = || ModelError::InvalidInput(format!("the clean cache has no {point}"));
    let [batch, seq] = tokens.dims();
    let d_model = model.token_embedding.weight.val().dims()[1];
    let (n_heads, d_head) = model
        .blocks
        .first()
        .map_or((0, 0), |b| (b.attn.n_heads, b.attn.d_head()));
    let expected: Vec<usize> = if point.is_per_head() {
        vec![batch, n_heads, seq, d_head]
    } else {
        vec![batch, seq, d_model]
    };
    let found = clean.get(point).ok_or_else(missing)?.dims();
    if found != expected {
        return Err(ModelError::InvalidInput(format!(
            "the clean cache's {point} has shape {found:?}, but this run needs {expected:?}: \
             record it on a prompt of the same length, with the same model"
        )));
    }
    let hooks = Hooks::new().explicit_attention();
    let mut hooks = match patch {
        Patch::Head { head, .. } => {
            let source = clean.per_head(point).ok_or_else(missing)?;
            let n_heads = source.dims()[1];
            if head >= n_heads {
                return Err(ModelError::InvalidInput(format!(
                    "head {head} does not exist; layers have heads 0..{n_heads}"
                )));
            }
            let piece = source.slice(s![.., head..head + 1, .., ..]);
            hooks.edit_per_head(point, move |z| {
                z.slice_assign(s![.., head..head + 1, .., ..], piece.clone())
            })
        }
        Patch::ResidPre {
            position: Some(p), ..
        } => {
            let source = clean.per_position(point).ok_or_else(missing)?;
            let seq = source.dims()[1];
            if p >= seq {
                return Err(ModelError::InvalidInput(format!(
                    "position {p} does not exist; the prompt has positions 0..{seq}"
                )));
            }
            let piece = source.slice(s![.., p..p + 1, ..]);
            hooks.edit_per_position(point, move |x| {
                x.slice_assign(s![.., p..p + 1, ..], piece.clone())
            })
        }
        Patch::ResidPre { position: None, .. } | Patch::AttnOut(_) | Patch::MlpOut(_) => {
            let source = clean.per_position(point).ok_or_else(missing)?;
            hooks.edit_per_position(point, move |_| source.clone())
        }
    };
    model.run_with_hooks(tokens, &mut hooks)
}

/// `logit(answer) − logit(wrong)` at the last position of the first sequence.
///
/// # Shapes
/// `logits`: `[batch, seq, vocab_size]`
pub fn logit_difference(logits: Tensor<3>, answer: u32, wrong: u32) -> f32 {
    let [_, seq, vocab] = logits.dims();
    let last: Vec<f32> = logits
        .slice(s![0..1, seq - 1..seq, ..])
        .reshape([vocab])
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 logits");
    last[answer as usize] - last[wrong as usize]
}

/// What patching found: each entry is the fraction of the clean–corrupted logit difference
/// that the patch restores (see the module docs).
#[derive(Debug, Clone, Serialize)]
pub struct PatchingResult {
    /// The logit difference on the clean prompt.
    pub clean_difference: f32,
    /// The logit difference on the corrupted prompt.
    pub corrupted_difference: f32,
    /// `[layer][head]`: one head's output at every position.
    pub heads: Vec<Vec<f32>>,
    /// `[layer][position]`: the residual stream entering a block at one position.
    pub resid_pre: Vec<Vec<f32>>,
    /// `[layer]`: a block's attention output.
    pub attn_out: Vec<f32>,
    /// `[layer]`: a block's MLP output.
    pub mlp_out: Vec<f32>,
}

/// Smallest clean–corrupted gap in the logit difference that patching can measure against.
pub const MIN_GAP: f32 = 1e-3;

/// Patches every head, every block's attention and MLP output, and the residual stream at
/// every block and position, one at a time, from `clean` into `corrupted` (two prompts of
/// the same length), measuring `logit(answer) − logit(wrong)` at the last position. Costs
/// `n_layers · (n_heads + seq + 2) + 2` forward passes.
pub fn activation_patching(
    model: &Gpt,
    clean: &[u32],
    corrupted: &[u32],
    answer: u32,
    wrong: u32,
) -> Result<PatchingResult, ModelError> {
    if clean.len() != corrupted.len() {
        return Err(ModelError::InvalidInput(format!(
            "the clean prompt has {} tokens and the corrupted one {}; patching needs the same length",
            clean.len(),
            corrupted.len()
        )));
    }
    check_vocab(model, answer, "the answer token")?;
    check_vocab(model, wrong, "the wrong token")?;
    if answer == wrong {
        return Err(ModelError::InvalidInput(
            "the answer and the wrong token are the same: their logit difference is always 0"
                .into(),
        ));
    }
    let device = model_device(model);
    let clean_tokens = prompt_tensor(model, clean, &device)?;
    let corrupted_tokens = prompt_tensor(model, corrupted, &device)?;
    let n_layers = model.n_layers();
    let mut record = Hooks::new()
        .explicit_attention()
        .record(patch_points(n_layers));
    let clean_logits = model.run_with_hooks(clean_tokens, &mut record)?;
    let cache = record.take_cache();
    let corrupted_logits = model.run_with_hooks(
        corrupted_tokens.clone(),
        &mut Hooks::new().explicit_attention(),
    )?;
    let clean_difference = logit_difference(clean_logits, answer, wrong);
    let corrupted_difference = logit_difference(corrupted_logits, answer, wrong);
    let gap = clean_difference - corrupted_difference;
    if gap.abs() < MIN_GAP || !gap.is_finite() {
        return Err(ModelError::InvalidInput(format!(
            "the clean and corrupted prompts give logit differences {clean_difference} and \
             {corrupted_difference}: with a gap under {MIN_GAP} there is nothing to restore. \
             Choose a corrupted prompt that changes the answer"
        )));
    }
    let restored = |patch: Patch| -> Result<f32, ModelError> {
        let logits = run_patched(model, corrupted_tokens.clone(), &cache, patch)?;
        Ok((logit_difference(logits, answer, wrong) - corrupted_difference) / gap)
    };
    let n_heads = model.blocks.first().map_or(0, |b| b.attn.n_heads);
    let mut result = PatchingResult {
        clean_difference,
        corrupted_difference,
        heads: Vec::new(),
        resid_pre: Vec::new(),
        attn_out: Vec::new(),
        mlp_out: Vec::new(),
    };
    for layer in 0..n_layers {
        result.heads.push(
            (0..n_heads)
                .map(|head| restored(Patch::Head { layer, head }))
                .collect::<Result<_, _>>()?,
        );
        result.resid_pre.push(
            (0..clean.len())
                .map(|p| {
                    restored(Patch::ResidPre {
                        layer,
                        position: Some(p),
                    })
                })
                .collect::<Result<_, _>>()?,
        );
        result.attn_out.push(restored(Patch::AttnOut(layer))?);
        result.mlp_out.push(restored(Patch::MlpOut(layer))?);
    }
    Ok(result)
}
