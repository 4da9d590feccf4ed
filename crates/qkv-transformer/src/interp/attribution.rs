//! Direct logit attribution: the logit of one token at one position, split into what each
//! part of the model writes into the residual stream towards it.
//!
//! The final stream is a sum of parts: the embeddings, each head's output through its slice
//! of the output projection, each attention output bias, each MLP's output. The final
//! LayerNorm is linear in the stream once its scale `σ` (the stream's standard deviation at
//! that position) is fixed, so with `u = γ ⊙ W_U[:, token]` each part `c` contributes
//! `(c − mean(c)) · u / σ`, and the contributions plus the final LayerNorm's bias term
//! `β · W_U[:, token]` add up to the logit. Each part's contribution is "direct": what it
//! writes that later layers pass on untouched, not what it causes them to write.

use burn::prelude::*;
use serde::Serialize;

use super::{HookPoint, check_vocab, model_device, prompt_tensor};
use crate::error::ModelError;
use crate::gpt::Gpt;

/// One token's logit at one position, split by part (see the module docs).
#[derive(Debug, Clone, Serialize)]
pub struct Attribution {
    /// The token whose logit is split.
    pub token: u32,
    /// The position read.
    pub position: usize,
    /// The model's logit for `token` there.
    pub logit: f32,
    /// The embeddings' contribution.
    pub embed: f32,
    /// `[layer][head]`: each head's.
    pub heads: Vec<Vec<f32>>,
    /// `[layer]`: each attention output bias's (0 without biases).
    pub attn_bias: Vec<f32>,
    /// `[layer]`: each MLP's.
    pub mlps: Vec<f32>,
    /// `β · W_U[:, token]`, the final LayerNorm's shift read through the head.
    pub final_bias: f32,
}

impl Attribution {
    /// The sum of every contribution and the final bias term: equal to [`logit`](Self::logit)
    /// up to rounding.
    pub fn total(&self) -> f32 {
        let heads: f32 = self.heads.iter().flatten().sum();
        self.embed
            + heads
            + self.attn_bias.iter().sum::<f32>()
            + self.mlps.iter().sum::<f32>()
            + self.final_bias
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("f32 tensor")
}

/// Splits the logit of `token` at `position` of `prompt` by part (see the module docs).
pub fn direct_logit_attribution(
    model: &Gpt,
    prompt: &[u32],
    position: usize,
    token: u32,
) -> Result<Attribution, ModelError> {
    if position >= prompt.len() {
        return Err(ModelError::InvalidInput(format!(
            "position {position} does not exist; the prompt has positions 0..{}",
            prompt.len()
        )));
    }
    check_vocab(model, token, "token")?;
    let device = model_device(model);
    let tokens = prompt_tensor(model, prompt, &device)?;
    let n_layers = model.n_layers();
    let mut points = vec![HookPoint::Embed];
    for l in 0..n_layers {
        points.extend([HookPoint::HeadOutput(l), HookPoint::MlpOut(l)]);
    }
    let last = match n_layers {
        0 => HookPoint::Embed,
        n => HookPoint::ResidPost(n - 1),
    };
    points.push(last);
    let mut hooks = super::Hooks::new().explicit_attention().record(points);
    let logits = model.run_with_hooks(tokens, &mut hooks)?;
    let cache = hooks.take_cache();
    let vocab = model.vocab_size;
    let logit = host(
        logits
            .slice(s![0..1, position..position + 1, ..])
            .reshape([vocab]),
    )[token as usize];

    let row = |point: HookPoint| -> Vec<f32> {
        let t = cache.per_position(point).expect("recorded");
        let d = t.dims()[2];
        host(t.slice(s![0..1, position..position + 1, ..]).reshape([d]))
    };
    let stream = row(last);
    let d = stream.len();
    let mean = stream.iter().sum::<f32>() / d as f32;
    let var = stream.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / d as f32;
    let sigma = (var + model.ln_f.epsilon as f32).sqrt();
    let gamma = host(model.ln_f.weight.val());
    let w_u = host(
        model
            .unembedding()
            .slice(s![.., token as usize..token as usize + 1])
            .reshape([d]),
    );
    let u: Vec<f32> = gamma.iter().zip(&w_u).map(|(g, w)| g * w).collect();
    // (c − mean(c))·u / σ for one part c of the stream.
    let contribution = |c: &[f32]| -> f32 {
        let m = c.iter().sum::<f32>() / d as f32;
        c.iter().zip(&u).map(|(x, u)| (x - m) * u).sum::<f32>() / sigma
    };
    let final_bias = match &model.ln_f.bias {
        Some(beta) => host(beta.val()).iter().zip(&w_u).map(|(b, w)| b * w).sum(),
        None => 0.0,
    };

    let mut attribution = Attribution {
        token,
        position,
        logit,
        embed: contribution(&row(HookPoint::Embed)),
        heads: Vec::new(),
        attn_bias: Vec::new(),
        mlps: Vec::new(),
        final_bias,
    };
    for (layer, block) in model.blocks.iter().enumerate() {
        let z = cache
            .per_head(HookPoint::HeadOutput(layer))
            .expect("recorded");
        let [_, n_heads, _, d_head] = z.dims();
        // Each head's output at this position through its rows of W_O: [n_heads, d_model].
        let z = z
            .slice(s![0..1, .., position..position + 1, ..])
            .reshape([n_heads, 1, d_head]);
        let w_o = block.attn.output.weight.val().reshape([n_heads, d_head, d]);
        let written = host(z.matmul(w_o).reshape([n_heads, d]));
        attribution
            .heads
            .push(written.chunks_exact(d).map(contribution).collect());
        attribution.attn_bias.push(match &block.attn.output.bias {
            Some(b) => contribution(&host(b.val())),
            None => 0.0,
        });
        attribution
            .mlps
            .push(contribution(&row(HookPoint::MlpOut(layer))));
    }
    Ok(attribution)
}
