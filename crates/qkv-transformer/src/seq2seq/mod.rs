//! The encoder–decoder transformer of "Attention Is All You Need" (Vaswani et al. 2017), in
//! the pre-LayerNorm arrangement: an encoder reads the source with bidirectional
//! self-attention, a decoder writes the target with causal self-attention plus
//! cross-attention to the encoder's output. Greedy and beam-search decoding, with a KV cache
//! for the decoder's self-attention and the cross-attention keys and values computed once
//! per source.
//!
//! This file holds the model (configuration, layers, encoder and decoder passes);
//! [`search`] the decoding strategies built on them.

mod search;

pub use search::{DecodeConfig, Translation};

use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer};
use burn::prelude::*;
use qkv_attention::{KvCache, MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};

use crate::config::{Activation, PositionalEncoding};
use crate::error::ModelError;
use crate::mlp::Mlp;
use crate::norm::LayerNorm;
use crate::positional::sinusoidal_table;

/// Configuration of a [`Seq2Seq`] model.
#[derive(Config, Debug)]
pub struct Seq2SeqConfig {
    /// Source vocabulary size.
    pub src_vocab_size: usize,
    /// Target vocabulary size.
    pub tgt_vocab_size: usize,
    /// Longest source, in tokens (end-of-sequence included).
    pub max_src_len: usize,
    /// Longest decoder input, in tokens (begin-of-sequence included).
    pub max_tgt_len: usize,
    /// Encoder layers.
    #[config(default = 2)]
    pub n_encoder_layers: usize,
    /// Decoder layers.
    #[config(default = 2)]
    pub n_decoder_layers: usize,
    /// Attention heads per layer.
    #[config(default = 4)]
    pub n_heads: usize,
    /// Model width.
    #[config(default = 128)]
    pub d_model: usize,
    /// Feed-forward width as a multiple of `d_model`.
    #[config(default = 4)]
    pub mlp_ratio: usize,
    /// Dropout on embeddings, attention probabilities and residual branches.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Learned or sinusoidal positions (rotary: applied in the self-attentions only).
    #[config(default = "PositionalEncoding::Learned")]
    pub positional: PositionalEncoding,
    /// One embedding matrix for source, target and the output layer (the vocabularies
    /// must then be the same size); otherwise the target embedding alone is tied to the
    /// output layer.
    #[config(default = true)]
    pub share_embeddings: bool,
    /// The padding id, hidden from attention.
    #[config(default = 0)]
    pub pad_id: usize,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

impl Seq2SeqConfig {
    /// Checks every value, naming the first bad one.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::InvalidConfig(msg));
        if self.src_vocab_size == 0 || self.tgt_vocab_size == 0 {
            return bad("vocabulary sizes must be at least 1".into());
        }
        if self.share_embeddings && self.src_vocab_size != self.tgt_vocab_size {
            return bad(format!(
                "share_embeddings needs one vocabulary, but source has {} tokens and target {}",
                self.src_vocab_size, self.tgt_vocab_size
            ));
        }
        if self.max_src_len == 0 || self.max_tgt_len == 0 {
            return bad("max_src_len and max_tgt_len must be at least 1".into());
        }
        if self.n_encoder_layers == 0 || self.n_decoder_layers == 0 {
            return bad("the encoder and the decoder need at least one layer each".into());
        }
        use crate::limits::{self, check};
        check("src_vocab_size", self.src_vocab_size, limits::MAX_VOCAB)?;
        check("tgt_vocab_size", self.tgt_vocab_size, limits::MAX_VOCAB)?;
        check("max_src_len", self.max_src_len, limits::MAX_CONTEXT)?;
        check("max_tgt_len", self.max_tgt_len, limits::MAX_CONTEXT)?;
        check(
            "n_encoder_layers",
            self.n_encoder_layers,
            limits::MAX_LAYERS,
        )?;
        check(
            "n_decoder_layers",
            self.n_decoder_layers,
            limits::MAX_LAYERS,
        )?;
        check("n_heads", self.n_heads, limits::MAX_HEADS)?;
        check("d_model", self.d_model, limits::MAX_WIDTH)?;
        check("mlp_ratio", self.mlp_ratio, limits::MAX_MLP_RATIO)?;
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return bad(format!(
                "n_heads ({}) must divide d_model ({})",
                self.n_heads, self.d_model
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.pad_id >= self.src_vocab_size.min(self.tgt_vocab_size) {
            return bad(format!("pad_id {} is outside the vocabulary", self.pad_id));
        }
        Ok(())
    }

    /// About how many parameters the model has (the matrices and embeddings exactly; biases
    /// and norms approximately), in `u128` so that any config gives a number.
    pub fn parameter_count(&self) -> u128 {
        let d = self.d_model as u128;
        let ff = self.mlp_ratio as u128 * d;
        let embeddings = (self.src_vocab_size as u128
            + if self.share_embeddings {
                0
            } else {
                self.tgt_vocab_size as u128
            })
            * d;
        let positions = (self.max_src_len + self.max_tgt_len) as u128 * d;
        let encoder = self.n_encoder_layers as u128 * (4 * d * d + 2 * d * ff + 8 * d + ff);
        let decoder = self.n_decoder_layers as u128 * (8 * d * d + 2 * d * ff + 12 * d + ff);
        embeddings + positions + encoder + decoder
    }

    /// Builds the model: weights `N(0, 0.02)`, residual output projections
    /// `N(0, 0.02/√(2·layers))`, biases 0.
    pub fn try_init(&self, device: &Device) -> Result<Seq2Seq, ModelError> {
        self.validate()?;
        let params = self.parameter_count();
        crate::limits::ensure_fits(
            (params * 4).min(u64::MAX as u128) as u64,
            &format!("a model of about {params} parameters"),
            "choose fewer layers or a narrower model",
        )?;
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let rotary = match self.positional {
            PositionalEncoding::Rotary { base } => Some(base),
            _ => None,
        };
        let layers = self.n_encoder_layers + self.n_decoder_layers;
        let proj_std = 0.02 / (2.0 * layers as f64).sqrt();
        let norm = || LayerNorm::new(self.d_model, self.layer_norm_eps, true, device);
        let attention = |rotary_base: Option<f64>| -> Result<MultiHeadAttention, ModelError> {
            let mut mha = MultiHeadAttentionConfig::new(self.d_model, self.n_heads)
                .with_dropout(self.dropout)
                .with_rotary_base(rotary_base)
                .with_initializer(normal.clone())
                .try_init(device)?;
            mha.query = crate::init::zero_bias(mha.query);
            mha.key = crate::init::zero_bias(mha.key);
            mha.value = crate::init::zero_bias(mha.value);
            mha.output = crate::init::zero_bias(mha.output);
            mha.output.weight = burn::module::Param::from_tensor(Tensor::random(
                [self.d_model, self.d_model],
                burn::tensor::Distribution::Normal(0.0, proj_std),
                device,
            ));
            Ok(mha)
        };
        let mlp = || {
            Mlp::new(
                self.d_model,
                self.d_model * self.mlp_ratio,
                true,
                self.dropout,
                &Activation::Gelu,
                proj_std,
                device,
            )
        };
        let encoder = (0..self.n_encoder_layers)
            .map(|_| {
                Ok(EncoderLayer {
                    ln_1: norm(),
                    self_attn: attention(rotary)?,
                    ln_2: norm(),
                    mlp: mlp(),
                    dropout: DropoutConfig::new(self.dropout).init(),
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let decoder = (0..self.n_decoder_layers)
            .map(|_| {
                Ok(DecoderLayer {
                    ln_1: norm(),
                    self_attn: attention(rotary)?,
                    ln_2: norm(),
                    cross_attn: attention(None)?,
                    ln_3: norm(),
                    mlp: mlp(),
                    dropout: DropoutConfig::new(self.dropout).init(),
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let embedding = |n| {
            EmbeddingConfig::new(n, self.d_model)
                .with_initializer(normal.clone())
                .init(device)
        };
        let learned = self.positional == PositionalEncoding::Learned;
        Ok(Seq2Seq {
            src_embedding: embedding(self.src_vocab_size),
            tgt_embedding: (!self.share_embeddings).then(|| embedding(self.tgt_vocab_size)),
            src_positions: learned.then(|| embedding(self.max_src_len)),
            tgt_positions: learned.then(|| embedding(self.max_tgt_len)),
            dropout: DropoutConfig::new(self.dropout).init(),
            encoder,
            encoder_norm: norm(),
            decoder,
            decoder_norm: norm(),
            max_src_len: self.max_src_len,
            max_tgt_len: self.max_tgt_len,
            tgt_vocab_size: self.tgt_vocab_size,
            pad_id: self.pad_id,
            sinusoidal: self.positional == PositionalEncoding::Sinusoidal,
        })
    }

    /// Builds the model.
    ///
    /// # Panics
    /// If the configuration is invalid; use [`try_init`](Self::try_init) for user input.
    pub fn init(&self, device: &Device) -> Seq2Seq {
        self.try_init(device)
            .unwrap_or_else(|error| panic!("{error}"))
    }
}

/// One pre-LN encoder layer: bidirectional self-attention over the source (padding hidden),
/// then the feed-forward network.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    /// LayerNorm before self-attention.
    pub ln_1: LayerNorm,
    /// Bidirectional self-attention.
    pub self_attn: MultiHeadAttention,
    /// LayerNorm before the MLP.
    pub ln_2: LayerNorm,
    /// The feed-forward network.
    pub mlp: Mlp,
    /// Dropout on the attention branch.
    pub dropout: Dropout,
}

impl EncoderLayer {
    /// # Shapes
    /// - `x`: `[batch, src_len, d_model]` -> `[batch, src_len, d_model]`
    /// - `src_padding`: `[batch, src_len]`, `true` at padding
    pub fn forward(
        &self,
        x: Tensor<3>,
        src_padding: Tensor<2, Bool>,
    ) -> Result<Tensor<3>, ModelError> {
        let attended = self.self_attn.try_forward(
            MhaInput::self_attn(self.ln_1.forward(x.clone())).key_padding(src_padding),
        )?;
        let x = x + qkv_attention::dropout(&self.dropout, attended.context);
        Ok(residual_mlp(x, &self.ln_2, &self.mlp))
    }
}

/// One pre-LN decoder layer: causal self-attention, cross-attention to the encoder output,
/// then the feed-forward network.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// LayerNorm before self-attention.
    pub ln_1: LayerNorm,
    /// Causal self-attention over the target so far.
    pub self_attn: MultiHeadAttention,
    /// LayerNorm before cross-attention.
    pub ln_2: LayerNorm,
    /// Attention from target positions to the encoder's output.
    pub cross_attn: MultiHeadAttention,
    /// LayerNorm before the MLP.
    pub ln_3: LayerNorm,
    /// The feed-forward network.
    pub mlp: Mlp,
    /// Dropout on the attention branches.
    pub dropout: Dropout,
}

/// `x + mlp(ln(x))`, with the MLP on 2-D rows.
fn residual_mlp(x: Tensor<3>, ln: &LayerNorm, mlp: &Mlp) -> Tensor<3> {
    let [batch, seq, d_model] = x.dims();
    let normed = ln.forward(x.clone()).reshape([batch * seq, d_model]);
    x + mlp.forward(normed).reshape([batch, seq, d_model])
}

impl DecoderLayer {
    /// # Shapes
    /// - `x`: `[batch, tgt_new, d_model]` -> `[batch, tgt_new, d_model]`
    /// - `memory`: `[batch, src_len, d_model]`, `src_padding`: `[batch, src_len]`
    /// - returned cross-attention probabilities: `[batch, n_heads, tgt_new, src_len]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        memory: Tensor<3>,
        src_padding: Tensor<2, Bool>,
        cache: Option<(&mut KvCache, &mut KvCache)>,
        record_cross: bool,
    ) -> Result<(Tensor<3>, Option<Tensor<4>>), ModelError> {
        let self_input = MhaInput::self_attn(self.ln_1.forward(x.clone())).causal();
        let (self_cache, cross_cache) = match cache {
            Some((s, c)) => (Some(s), Some(c)),
            None => (None, None),
        };
        let attended = match self_cache {
            Some(c) => self.self_attn.forward_cached(self_input, c)?,
            None => self.self_attn.try_forward(self_input)?,
        };
        let x = x + qkv_attention::dropout(&self.dropout, attended.context);
        let mut cross_input =
            MhaInput::cross_attn(self.ln_2.forward(x.clone()), memory).key_padding(src_padding);
        cross_input.return_probs = record_cross;
        let crossed = match cross_cache {
            Some(c) => self.cross_attn.forward_cached(cross_input, c)?,
            None => self.cross_attn.try_forward(cross_input)?,
        };
        let x = x + qkv_attention::dropout(&self.dropout, crossed.context);
        Ok((residual_mlp(x, &self.ln_3, &self.mlp), crossed.probs))
    }
}

/// An encoder–decoder transformer. Built by [`Seq2SeqConfig::init`].
#[derive(Module, Debug)]
pub struct Seq2Seq {
    /// Source token embedding (also the target's and the output layer's when shared).
    pub src_embedding: Embedding,
    /// Target token embedding, tied to the output layer; `None` when shared with the source.
    pub tgt_embedding: Option<Embedding>,
    /// Learned source positions (with [`PositionalEncoding::Learned`]).
    pub src_positions: Option<Embedding>,
    /// Learned target positions (with [`PositionalEncoding::Learned`]).
    pub tgt_positions: Option<Embedding>,
    /// Dropout on the embeddings.
    pub dropout: Dropout,
    /// The encoder layers.
    pub encoder: Vec<EncoderLayer>,
    /// LayerNorm after the encoder.
    pub encoder_norm: LayerNorm,
    /// The decoder layers.
    pub decoder: Vec<DecoderLayer>,
    /// LayerNorm before the output layer.
    pub decoder_norm: LayerNorm,
    /// Longest source.
    pub max_src_len: usize,
    /// Longest decoder input.
    pub max_tgt_len: usize,
    /// Target vocabulary size.
    pub tgt_vocab_size: usize,
    /// The padding id.
    pub pad_id: usize,
    /// Whether sinusoidal positions are added.
    pub sinusoidal: bool,
}

/// The encoder's output for a batch of sources, ready for the decoder.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `[batch, src_len, d_model]`.
    pub memory: Tensor<3>,
    /// `[batch, src_len]`, `true` at padding.
    pub src_padding: Tensor<2, Bool>,
}

impl Encoded {
    /// Keeps (and repeats) batch rows by index, as beam search does.
    ///
    /// # Shapes
    /// `indices`: `[n]` -> an `Encoded` of batch `n`
    pub fn select(&self, indices: Tensor<1, Int>) -> Self {
        Self {
            memory: self.memory.clone().select(0, indices.clone()),
            src_padding: self.src_padding.clone().select(0, indices),
        }
    }
}

/// Per decoder layer, the self-attention cache and the cross-attention cache (filled from
/// the encoder output on the first step, then reused).
#[derive(Debug, Clone, Default)]
pub struct DecoderCache {
    /// Self-attention keys and values of the target so far, one per layer.
    pub self_attn: Vec<KvCache>,
    /// The encoder output's keys and values, one per layer.
    pub cross_attn: Vec<KvCache>,
}

impl DecoderCache {
    /// How many target positions are cached.
    pub fn len(&self) -> usize {
        self.self_attn.first().map_or(0, KvCache::len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps (and repeats) batch rows by index, as beam search does.
    pub fn select(&mut self, indices: Tensor<1, Int>) {
        for cache in self.self_attn.iter_mut().chain(self.cross_attn.iter_mut()) {
            if !cache.is_empty() {
                cache.select_batch(indices.clone());
            }
        }
    }
}

impl Seq2Seq {
    /// Token plus position embeddings for positions `start..start + len`.
    pub(crate) fn embed(&self, tokens: Tensor<2, Int>, start: usize, target: bool) -> Tensor<3> {
        let [_, len] = tokens.dims();
        let device = tokens.device();
        let table = match (&self.tgt_embedding, target) {
            (Some(tgt), true) => tgt,
            _ => &self.src_embedding,
        };
        let mut x = table.forward(tokens);
        let d_model = x.dims()[2];
        let positions = if target {
            &self.tgt_positions
        } else {
            &self.src_positions
        };
        if let Some(wpe) = positions {
            let idx = Tensor::<1, Int>::arange(start as i64..(start + len) as i64, &device)
                .reshape([1, len]);
            x = x + wpe.forward(idx);
        } else if self.sinusoidal {
            // Sinusoids have unit scale; the token embeddings are scaled up to match, as in
            // the original paper.
            x = x.mul_scalar((d_model as f64).sqrt())
                + sinusoidal_table(start, len, d_model, &device).unsqueeze::<3>();
        }
        qkv_attention::dropout(&self.dropout, x)
    }

    pub(crate) fn check_tokens(
        &self,
        tokens: &Tensor<2, Int>,
        start: usize,
        max: usize,
        what: &str,
    ) -> Result<(), ModelError> {
        let [batch, len] = tokens.dims();
        if batch == 0 || len == 0 {
            return Err(ModelError::InvalidInput(format!(
                "empty {what}, shape [{batch}, {len}]"
            )));
        }
        // Cached positions count too: `start` of them come before these.
        if start + len > max {
            return Err(ModelError::TooLong {
                len: start + len,
                block_size: max,
            });
        }
        Ok(())
    }

    /// Runs the encoder. Positions holding `pad_id` are hidden from every attention.
    ///
    /// # Shapes
    /// `src`: `[batch, src_len]` -> memory `[batch, src_len, d_model]`
    pub fn encode(&self, src: Tensor<2, Int>) -> Result<Encoded, ModelError> {
        self.check_tokens(&src, 0, self.max_src_len, "source")?;
        let src_padding = src.clone().equal_elem(self.pad_id as i64);
        let mut x = self.embed(src, 0, false);
        for layer in &self.encoder {
            x = layer.forward(x, src_padding.clone())?;
        }
        Ok(Encoded {
            memory: self.encoder_norm.forward(x),
            src_padding,
        })
    }

    /// Runs the decoder over `tgt` (the decoder input: `<bos>` then the target so far) and
    /// returns next-token logits, and with `record_cross` every layer's cross-attention
    /// probabilities. With a cache, `tgt` holds only the new positions.
    ///
    /// # Shapes
    /// - `tgt`: `[batch, tgt_new]` -> logits `[batch, tgt_new, tgt_vocab_size]`
    /// - cross-attention, per layer: `[batch, n_heads, tgt_new, src_len]`
    pub fn decode(
        &self,
        tgt: Tensor<2, Int>,
        encoded: &Encoded,
        mut cache: Option<&mut DecoderCache>,
        record_cross: bool,
    ) -> Result<(Tensor<3>, Vec<Tensor<4>>), ModelError> {
        let start = cache.as_ref().map_or(0, |c| c.len());
        let [batch, _] = tgt.dims();
        self.check_tokens(&tgt, start, self.max_tgt_len, "target")?;
        if encoded.memory.dims()[0] != batch {
            return Err(ModelError::InvalidInput(format!(
                "{batch} targets for {} encoded sources",
                encoded.memory.dims()[0]
            )));
        }
        if let Some(cache) = cache.as_deref_mut()
            && cache.self_attn.is_empty()
        {
            cache.self_attn = vec![KvCache::new(); self.decoder.len()];
            cache.cross_attn = vec![KvCache::new(); self.decoder.len()];
        }
        let mut x = self.embed(tgt, start, true);
        let mut cross = Vec::new();
        for (i, layer) in self.decoder.iter().enumerate() {
            let layer_cache = cache
                .as_deref_mut()
                .map(|c| (&mut c.self_attn[i], &mut c.cross_attn[i]));
            let (next, probs) = layer.forward(
                x,
                encoded.memory.clone(),
                encoded.src_padding.clone(),
                layer_cache,
                record_cross,
            )?;
            x = next;
            cross.extend(probs);
        }
        Ok((self.output_logits(x), cross))
    }

    /// The decoder's stream read out as next-token logits: the final LayerNorm, then the
    /// target embedding transposed.
    ///
    /// # Shapes
    /// `x`: `[batch, len, d_model]` -> `[batch, len, tgt_vocab_size]`
    pub(crate) fn output_logits(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, len, d_model] = x.dims();
        let x = self.decoder_norm.forward(x).reshape([batch * len, d_model]);
        let table = self.tgt_embedding.as_ref().unwrap_or(&self.src_embedding);
        let logits = qkv_tensor_ops::fused::matmul(x, table.weight.val().transpose());
        logits.reshape([batch, len, self.tgt_vocab_size])
    }

    /// Teacher-forced logits for training.
    ///
    /// # Shapes
    /// - `src`: `[batch, src_len]`, `tgt`: `[batch, tgt_len]` (decoder input)
    /// - returns `[batch, tgt_len, tgt_vocab_size]`
    pub fn forward(
        &self,
        src: Tensor<2, Int>,
        tgt: Tensor<2, Int>,
    ) -> Result<Tensor<3>, ModelError> {
        let encoded = self.encode(src)?;
        Ok(self.decode(tgt, &encoded, None, false)?.0)
    }
}
