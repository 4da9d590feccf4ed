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
    /// The block as the paper writes it: attention, then the MLP, each reading a
    /// LayerNorm of the residual stream and adding its output back to it.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    ///
    /// # Panics
    /// If `x` is not as wide as the block (the model checks its inputs before).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attention(self.ln_1.forward(x));
        x.clone() + self.feed_forward(self.ln_2.forward(x))
    }

    /// [`forward`](Self::forward) as a step of a stack: takes the stream `x` with its
    /// LayerNorm `normed = ln_1(x)` (computed by the step before), and returns the new stream
    /// with its LayerNorm by `next` (the next block's `ln_1`, or the model's final LayerNorm).
    /// Each residual add is one op with the LayerNorm that reads it
    /// ([`LayerNorm::forward_residual`]); the values are [`forward`](Self::forward)'s.
    ///
    /// # Shapes
    /// - `x`, `normed`: `[batch, seq, d_model]`
    /// - returns `([batch, seq, d_model], [batch, seq, d_model])`
    pub(crate) fn forward_normed(
        &self,
        x: Tensor<3>,
        normed: Tensor<3>,
        next: &LayerNorm,
    ) -> (Tensor<3>, Tensor<3>) {
        let (x, h) = self.ln_2.forward_residual(x, self.attention(normed));
        next.forward_residual(x, self.feed_forward(h))
    }

    /// [`forward`](Self::forward), continuing from a KV cache and returning the attention
    /// probabilities when asked: the same two residual steps, with the attention step
    /// taking the cache and the recording.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    /// - recorded probabilities: `[batch, n_heads, seq, cache_len + seq]`
    pub fn forward_detailed(
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
        let x = x.clone() + self.feed_forward(self.ln_2.forward(x));
        Ok((x, attended.probs))
    }

    /// Causal self-attention of the normalised stream, with dropout on its output.
    ///
    /// # Shapes
    /// `h`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    pub(crate) fn attention(&self, h: Tensor<3>) -> Tensor<3> {
        let attended = self.attn.forward(MhaInput::self_attn(h).causal());
        qkv_attention::dropout(&self.attn_dropout, attended.context)
    }

    /// The MLP, applied to every position alike.
    ///
    /// # Shapes
    /// `h`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    pub(crate) fn feed_forward(&self, h: Tensor<3>) -> Tensor<3> {
        let [batch, seq, d_model] = h.dims();
        self.mlp
            .forward(h.reshape([batch * seq, d_model]))
            .reshape([batch, seq, d_model])
    }
}
