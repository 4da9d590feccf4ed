//! Hook points of the encoder–decoder: the same [`Hooks`] and [`ActivationCache`] as for a
//! GPT, over [`Seq2SeqPoint`]s, so that the encoder's self-attention, the decoder's
//! self-attention and the cross-attention can each be read, recorded or replaced.
//!
//! [`Seq2Seq::run_with_hooks`] is the teacher-forced [`Seq2Seq::forward`] through the hook
//! points. An attention whose pattern nobody asks for runs the layer's own code, so with no
//! hook set the logits are equal bit for bit; one whose pattern is wanted is computed step by
//! step (scores, masks, softmax, then the values).

use std::fmt;

use burn::prelude::*;
use qkv_attention::{MhaInput, MultiHeadAttention};
use qkv_tensor_ops::mask::attention_mask;
use qkv_tensor_ops::masked_softmax;

use super::hooks::{ActivationCache, Hooks, Point};
use crate::error::ModelError;
use crate::seq2seq::{DecoderLayer, EncoderLayer, Seq2Seq};

/// A named activation of the encoder–decoder. Shapes for `src` `[batch, src_len]` and `tgt`
/// `[batch, tgt_len]`.
///
/// | point | name | shape |
/// | --- | --- | --- |
/// | `SourceEmbed` | `src_embed` | `[batch, src_len, d_model]` |
/// | `Encoder(l, EncoderPoint::…)` | `encoder.l.resid_pre`, `.attn.pattern`, `.attn_out`, `.mlp_out`, `.resid_post` | stream, or `[batch, n_heads, src_len, src_len]` |
/// | `Memory` | `memory` | `[batch, src_len, d_model]`: the encoder's output after its LayerNorm |
/// | `TargetEmbed` | `tgt_embed` | `[batch, tgt_len, d_model]` |
/// | `Decoder(l, DecoderPoint::…)` | `decoder.l.resid_pre`, `.self_attn.pattern`, `.self_attn_out`, `.cross_attn.pattern`, `.cross_attn_out`, `.mlp_out`, `.resid_post` | stream, or `[batch, n_heads, tgt_len, src_len or tgt_len]` |
/// | `Logits` | `logits` | `[batch, tgt_len, tgt_vocab_size]` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seq2SeqPoint {
    /// Source token (plus position) embeddings.
    SourceEmbed,
    /// A point inside encoder layer `l`.
    Encoder(usize, EncoderPoint),
    /// The encoder's output, after its final LayerNorm: what cross-attention reads.
    Memory,
    /// Target token (plus position) embeddings.
    TargetEmbed,
    /// A point inside decoder layer `l`.
    Decoder(usize, DecoderPoint),
    /// Next-token logits.
    Logits,
}

/// The points of one encoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EncoderPoint {
    /// The stream entering the layer.
    ResidPre,
    /// Self-attention probabilities, padding keys 0.
    Pattern,
    /// Self-attention's output as added to the stream.
    AttnOut,
    /// The MLP's output as added to the stream.
    MlpOut,
    /// The stream leaving the layer.
    ResidPost,
}

/// The points of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecoderPoint {
    /// The stream entering the layer.
    ResidPre,
    /// Causal self-attention probabilities.
    SelfPattern,
    /// Self-attention's output as added to the stream.
    SelfAttnOut,
    /// Cross-attention probabilities over the source, padding keys 0.
    CrossPattern,
    /// Cross-attention's output as added to the stream.
    CrossAttnOut,
    /// The MLP's output as added to the stream.
    MlpOut,
    /// The stream leaving the layer.
    ResidPost,
}

impl fmt::Display for Seq2SeqPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seq2SeqPoint::SourceEmbed => f.write_str("src_embed"),
            Seq2SeqPoint::Memory => f.write_str("memory"),
            Seq2SeqPoint::TargetEmbed => f.write_str("tgt_embed"),
            Seq2SeqPoint::Logits => f.write_str("logits"),
            Seq2SeqPoint::Encoder(l, p) => {
                let name = match p {
                    EncoderPoint::ResidPre => "resid_pre",
                    EncoderPoint::Pattern => "attn.pattern",
                    EncoderPoint::AttnOut => "attn_out",
                    EncoderPoint::MlpOut => "mlp_out",
                    EncoderPoint::ResidPost => "resid_post",
                };
                write!(f, "encoder.{l}.{name}")
            }
            Seq2SeqPoint::Decoder(l, p) => {
                let name = match p {
                    DecoderPoint::ResidPre => "resid_pre",
                    DecoderPoint::SelfPattern => "self_attn.pattern",
                    DecoderPoint::SelfAttnOut => "self_attn_out",
                    DecoderPoint::CrossPattern => "cross_attn.pattern",
                    DecoderPoint::CrossAttnOut => "cross_attn_out",
                    DecoderPoint::MlpOut => "mlp_out",
                    DecoderPoint::ResidPost => "resid_post",
                };
                write!(f, "decoder.{l}.{name}")
            }
        }
    }
}

impl Point for Seq2SeqPoint {
    fn layer(self) -> Option<(&'static str, usize)> {
        match self {
            Seq2SeqPoint::Encoder(l, _) => Some(("encoder", l)),
            Seq2SeqPoint::Decoder(l, _) => Some(("decoder", l)),
            _ => None,
        }
    }

    fn is_per_head(self) -> bool {
        matches!(
            self,
            Seq2SeqPoint::Encoder(_, EncoderPoint::Pattern)
                | Seq2SeqPoint::Decoder(_, DecoderPoint::SelfPattern | DecoderPoint::CrossPattern)
        )
    }
}

impl Seq2SeqPoint {
    /// Every point of a model with `n_encoder` and `n_decoder` layers, in forward order.
    pub fn all(n_encoder: usize, n_decoder: usize) -> Vec<Seq2SeqPoint> {
        use DecoderPoint as D;
        use EncoderPoint as E;
        let mut points = vec![Seq2SeqPoint::SourceEmbed];
        for l in 0..n_encoder {
            for p in [E::ResidPre, E::Pattern, E::AttnOut, E::MlpOut, E::ResidPost] {
                points.push(Seq2SeqPoint::Encoder(l, p));
            }
        }
        points.extend([Seq2SeqPoint::Memory, Seq2SeqPoint::TargetEmbed]);
        for l in 0..n_decoder {
            for p in [
                D::ResidPre,
                D::SelfPattern,
                D::SelfAttnOut,
                D::CrossPattern,
                D::CrossAttnOut,
                D::MlpOut,
                D::ResidPost,
            ] {
                points.push(Seq2SeqPoint::Decoder(l, p));
            }
        }
        points.push(Seq2SeqPoint::Logits);
        points
    }
}

/// One attention of a layer through the hooks: the layer's own code when nobody wants the
/// pattern, step by step otherwise. Returns the output as added to the stream (after dropout).
///
/// # Shapes
/// `query`: `[batch, seq_q, d_model]`, `source`: `[batch, seq_k, d_model]` (cross only),
/// `key_padding`: `[batch, seq_k]` -> `[batch, seq_q, d_model]`
#[allow(clippy::too_many_arguments)]
fn attend(
    attn: &MultiHeadAttention,
    dropout: &burn::nn::Dropout,
    query: Tensor<3>,
    source: Option<Tensor<3>>,
    causal: bool,
    key_padding: Option<Tensor<2, Bool>>,
    pattern: Seq2SeqPoint,
    hooks: &mut Hooks<Seq2SeqPoint>,
) -> Result<Tensor<3>, ModelError> {
    let attended = if hooks.wants(pattern) {
        let cross = source.is_some();
        let q = attn.queries(query.clone(), 0);
        let (k, v) = attn.keys_values(source.unwrap_or(query), cross, 0);
        let [_, _, seq_q, _] = q.dims();
        let seq_k = k.dims()[2];
        let mask = attention_mask(seq_q, seq_k, causal, key_padding, &q.device());
        let scores = q
            .matmul(k.transpose())
            .mul_scalar(1.0 / (attn.d_head() as f64).sqrt());
        let probs = hooks.at4(pattern, masked_softmax(scores, mask))?;
        attn.output_of(qkv_attention::dropout(&attn.dropout, probs).matmul(v))
    } else {
        let mut input = match source {
            Some(source) => MhaInput::cross_attn(query, source),
            None => MhaInput::self_attn(query),
        };
        if causal {
            input = input.causal();
        }
        if let Some(pad) = key_padding {
            input = input.key_padding(pad);
        }
        attn.try_forward(input)?.context
    };
    Ok(qkv_attention::dropout(dropout, attended))
}

/// `mlp(ln(x))` on 2-D rows, as the layers compute it.
fn feed_forward(x: Tensor<3>, ln: &crate::norm::LayerNorm, mlp: &crate::mlp::Mlp) -> Tensor<3> {
    let [batch, seq, d_model] = x.dims();
    mlp.forward(ln.forward(x).reshape([batch * seq, d_model]))
        .reshape([batch, seq, d_model])
}

impl EncoderLayer {
    fn run_with_hooks(
        &self,
        l: usize,
        x: Tensor<3>,
        src_padding: Tensor<2, Bool>,
        hooks: &mut Hooks<Seq2SeqPoint>,
    ) -> Result<Tensor<3>, ModelError> {
        use EncoderPoint as E;
        let at = |p| Seq2SeqPoint::Encoder(l, p);
        let x = hooks.at3(at(E::ResidPre), x)?;
        let attended = attend(
            &self.self_attn,
            &self.dropout,
            self.ln_1.forward(x.clone()),
            None,
            false,
            Some(src_padding),
            at(E::Pattern),
            hooks,
        )?;
        let x = x + hooks.at3(at(E::AttnOut), attended)?;
        let fed = hooks.at3(
            at(E::MlpOut),
            feed_forward(x.clone(), &self.ln_2, &self.mlp),
        )?;
        hooks.at3(at(E::ResidPost), x + fed)
    }
}

impl DecoderLayer {
    fn run_with_hooks(
        &self,
        l: usize,
        x: Tensor<3>,
        memory: Tensor<3>,
        src_padding: Tensor<2, Bool>,
        hooks: &mut Hooks<Seq2SeqPoint>,
    ) -> Result<Tensor<3>, ModelError> {
        use DecoderPoint as D;
        let at = |p| Seq2SeqPoint::Decoder(l, p);
        let x = hooks.at3(at(D::ResidPre), x)?;
        let attended = attend(
            &self.self_attn,
            &self.dropout,
            self.ln_1.forward(x.clone()),
            None,
            true,
            None,
            at(D::SelfPattern),
            hooks,
        )?;
        let x = x + hooks.at3(at(D::SelfAttnOut), attended)?;
        let crossed = attend(
            &self.cross_attn,
            &self.dropout,
            self.ln_2.forward(x.clone()),
            Some(memory),
            false,
            Some(src_padding),
            at(D::CrossPattern),
            hooks,
        )?;
        let x = x + hooks.at3(at(D::CrossAttnOut), crossed)?;
        let fed = hooks.at3(
            at(D::MlpOut),
            feed_forward(x.clone(), &self.ln_3, &self.mlp),
        )?;
        hooks.at3(at(D::ResidPost), x + fed)
    }
}

impl Seq2Seq {
    /// The teacher-forced [`forward`](Self::forward) through the hook points (see
    /// [`Seq2SeqPoint`]); the cache of the previous run is dropped first.
    ///
    /// # Shapes
    /// `src`: `[batch, src_len]`, `tgt`: `[batch, tgt_len]` -> `[batch, tgt_len, tgt_vocab_size]`
    pub fn run_with_hooks(
        &self,
        src: Tensor<2, Int>,
        tgt: Tensor<2, Int>,
        hooks: &mut Hooks<Seq2SeqPoint>,
    ) -> Result<Tensor<3>, ModelError> {
        let (n_enc, n_dec) = (self.encoder.len(), self.decoder.len());
        hooks.check(|stack| if stack == "encoder" { n_enc } else { n_dec })?;
        hooks.clear_cache();
        self.check_tokens(&src, 0, self.max_src_len, "source")?;
        self.check_tokens(&tgt, 0, self.max_tgt_len, "target")?;
        if src.dims()[0] != tgt.dims()[0] {
            return Err(ModelError::InvalidInput(format!(
                "{} targets for {} sources",
                tgt.dims()[0],
                src.dims()[0]
            )));
        }
        let src_padding = src.clone().equal_elem(self.pad_id as i64);
        let mut x = hooks.at3(Seq2SeqPoint::SourceEmbed, self.embed(src, 0, false))?;
        for (l, layer) in self.encoder.iter().enumerate() {
            x = layer.run_with_hooks(l, x, src_padding.clone(), hooks)?;
        }
        let memory = hooks.at3(Seq2SeqPoint::Memory, self.encoder_norm.forward(x))?;
        let mut y = hooks.at3(Seq2SeqPoint::TargetEmbed, self.embed(tgt, 0, true))?;
        for (l, layer) in self.decoder.iter().enumerate() {
            y = layer.run_with_hooks(l, y, memory.clone(), src_padding.clone(), hooks)?;
        }
        hooks.at3(Seq2SeqPoint::Logits, self.output_logits(y))
    }

    /// The logits and the activations at `points`, nothing else kept.
    ///
    /// # Shapes
    /// As [`run_with_hooks`](Self::run_with_hooks).
    pub fn run_with_cache(
        &self,
        src: Tensor<2, Int>,
        tgt: Tensor<2, Int>,
        points: impl IntoIterator<Item = Seq2SeqPoint>,
    ) -> Result<(Tensor<3>, ActivationCache<Seq2SeqPoint>), ModelError> {
        let mut hooks = Hooks::new().record(points);
        let logits = self.run_with_hooks(src, tgt, &mut hooks)?;
        Ok((logits, hooks.take_cache()))
    }
}
