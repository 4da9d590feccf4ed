//! [`Gpt::run_with_hooks`]: the GPT's forward pass through its [`HookPoint`]s (see
//! `hooks.rs` for the points, the hooks and the cache).

use burn::prelude::*;
use qkv_tensor_ops::{causal_mask, masked_softmax};

use super::hooks::{ActivationCache, HookPoint, Hooks};
use crate::block::Block;
use crate::error::ModelError;
use crate::gpt::Gpt;

impl Gpt {
    /// [`forward`](Self::forward) with hooks: at each [`HookPoint`] the activation goes
    /// through the edits set for it, and is recorded in [`Hooks::cache`] if asked. The
    /// cache of the previous run is dropped first.
    ///
    /// # Shapes
    /// `tokens`: `[batch, seq]` -> `[batch, seq, vocab_size]`; activations as in
    /// [`HookPoint`].
    pub fn run_with_hooks(
        &self,
        tokens: Tensor<2, Int>,
        hooks: &mut Hooks,
    ) -> Result<Tensor<3>, ModelError> {
        self.check_tokens(&tokens, 0)?;
        let n_layers = self.n_layers();
        hooks.check(|_| n_layers)?;
        hooks.clear_cache();
        let mut x = hooks.at3(HookPoint::Embed, self.embed(tokens, 0))?;
        for (layer, block) in self.blocks.iter().enumerate() {
            x = block.run_with_hooks(layer, x, hooks)?;
        }
        let x = hooks.at3(HookPoint::FinalNorm, self.ln_f.forward(x))?;
        hooks.at3(HookPoint::Logits, self.logits(x))
    }

    /// The logits and the activations at `points`, nothing else kept.
    ///
    /// # Shapes
    /// As [`run_with_hooks`](Self::run_with_hooks).
    pub fn run_with_cache(
        &self,
        tokens: Tensor<2, Int>,
        points: impl IntoIterator<Item = HookPoint>,
    ) -> Result<(Tensor<3>, ActivationCache), ModelError> {
        let mut hooks = Hooks::new().record(points);
        let logits = self.run_with_hooks(tokens, &mut hooks)?;
        Ok((logits, hooks.take_cache()))
    }
}

impl Block {
    /// [`forward`](Self::forward) through the hook points of block `layer`.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    fn run_with_hooks(
        &self,
        layer: usize,
        x: Tensor<3>,
        hooks: &mut Hooks,
    ) -> Result<Tensor<3>, ModelError> {
        use HookPoint::*;
        let x = hooks.at3(ResidPre(layer), x)?;
        let h = hooks.at3(AttnIn(layer), self.ln_1.forward(x.clone()))?;
        let attended = if hooks.opens_attention(layer) {
            let heads = self.attention_heads(layer, h, hooks)?;
            qkv_attention::dropout(&self.attn_dropout, self.attn.output_of(heads))
        } else {
            self.attention(h)
        };
        let attended = hooks.at3(AttnOut(layer), attended)?;
        let x = hooks.at3(ResidMid(layer), x + attended)?;
        let h = hooks.at3(MlpIn(layer), self.ln_2.forward(x.clone()))?;
        let fed = if hooks.wants(MlpHidden(layer)) {
            let [batch, seq, d_model] = h.dims();
            let hidden = self.mlp.hidden(h.reshape([batch * seq, d_model]));
            let d_ff = hidden.dims()[1];
            let hidden = hooks.at3(MlpHidden(layer), hidden.reshape([batch, seq, d_ff]))?;
            self.mlp
                .output(hidden.reshape([batch * seq, d_ff]))
                .reshape([batch, seq, d_model])
        } else {
            self.feed_forward(h)
        };
        let fed = hooks.at3(MlpOut(layer), fed)?;
        hooks.at3(ResidPost(layer), x + fed)
    }

    /// Causal self-attention step by step, through the per-head hook points; returns each
    /// head's attended values, `[batch, n_heads, seq, d_head]`.
    fn attention_heads(
        &self,
        layer: usize,
        h: Tensor<3>,
        hooks: &mut Hooks,
    ) -> Result<Tensor<4>, ModelError> {
        use HookPoint::*;
        let attn = &self.attn;
        let q = hooks.at4(Query(layer), attn.queries(h.clone(), 0))?;
        let (k, v) = attn.keys_values(h, false, 0);
        let k = hooks.at4(Key(layer), k)?;
        let v = hooks.at4(Value(layer), v)?;
        let seq = q.dims()[2];
        let hidden = causal_mask(seq, seq, &q.device()).reshape([1, 1, seq, seq]);
        let scores = q
            .matmul(k.transpose())
            .mul_scalar(1.0 / (attn.d_head() as f64).sqrt())
            .mask_fill(hidden.clone(), f32::NEG_INFINITY);
        let scores = hooks.at4(Scores(layer), scores)?;
        // Masked again, so that an edit of the scores cannot reveal a future key.
        let pattern = hooks.at4(Pattern(layer), masked_softmax(scores, Some(hidden)))?;
        let attended = qkv_attention::dropout(&attn.dropout, pattern).matmul(v);
        hooks.at4(HeadOutput(layer), attended)
    }
}
