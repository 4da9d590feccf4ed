//! One pre-LayerNorm transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.

use burn::nn::Dropout;
use burn::prelude::*;
use qkv_attention::{AttentionError, KvCache, MhaInput, MultiHeadAttention};

use crate::mlp::Mlp;
use crate::norm::LayerNorm;

/// A pre-LN decoder block (GPT-2): LayerNorm before each sub-layer, residual around it.
#[derive(Module, Debug)]
pub struct Block {
    /// LayerNorm before attention.
    pub ln_1: LayerNorm,
    /// Causal self-attention.
    pub attn: MultiHeadAttention,
    /// Dropout on the attention branch.
    pub attn_dropout: Dropout,
    /// LayerNorm before the MLP.
    pub ln_2: LayerNorm,
    /// The feed-forward network (with its own output dropout).
    pub mlp: Mlp,
}

impl Block {
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    /// - recorded probabilities: `[batch, n_heads, seq, cache_len + seq]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        cache: Option<&mut KvCache>,
        return_probs: bool,
    ) -> Result<(Tensor<3>, Option<Tensor<4>>), AttentionError> {
        let mut input = MhaInput::self_attn(self.ln_1.forward(x.clone())).causal();
        input.return_probs = return_probs;
        let attended = match cache {
            Some(cache) => self.attn.forward_cached(input, cache)?,
            None => self.attn.try_forward(input)?,
        };
        let x = x + qkv_attention::dropout(&self.attn_dropout, attended.context);
        let [batch, seq, d_model] = x.dims();
        let normed = self.ln_2.forward(x.clone()).reshape([batch * seq, d_model]);
        let x = x + self.mlp.forward(normed).reshape([batch, seq, d_model]);
        Ok((x, attended.probs))
    }
}
