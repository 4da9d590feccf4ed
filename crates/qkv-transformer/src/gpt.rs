//! The decoder-only GPT: token (and position) embeddings, a stack of pre-LN blocks, a final
//! LayerNorm and an LM head tied to the token embedding.
//!
//! The architecture of GPT-2 (Radford et al. 2019), as nanoGPT writes it.

use burn::module::Param;
use burn::nn::{DropoutConfig, Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use qkv_attention::{AttentionInspection, KvCache, MhaInput, MultiHeadAttentionConfig};

use crate::block::Block;
use crate::config::{GptConfig, PositionalEncoding};
use crate::error::ModelError;
use crate::init::zero_bias;
use crate::mlp::Mlp;
use crate::norm::LayerNorm;
use crate::positional::sinusoidal_table;

/// A decoder-only transformer language model. Built by [`GptConfig::init`].
#[derive(Module, Debug)]
pub struct Gpt {
    /// Token embedding `[vocab_size, d_model]` (also the LM head when tied).
    pub token_embedding: Embedding,
    /// Learned position embedding `[block_size, d_model]`, for
    /// [`PositionalEncoding::Learned`] only.
    pub position_embedding: Option<Embedding>,
    /// Dropout on the summed embeddings.
    pub embedding_dropout: burn::nn::Dropout,
    /// The transformer blocks.
    pub blocks: Vec<Block>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm,
    /// Untied LM head `[d_model, vocab_size]`; `None` when tied to the token embedding.
    pub lm_head: Option<Linear>,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Longest context.
    pub block_size: usize,
    /// Whether sinusoidal position encodings are added.
    pub sinusoidal: bool,
}

/// What [`Gpt::forward_detailed`] returns.
#[derive(Debug, Clone)]
pub struct GptOutput {
    /// Next-token logits, `[batch, seq, vocab_size]`.
    pub logits: Tensor<3>,
    /// Per layer, the attention probabilities `[batch, n_heads, seq, cache_len + seq]`; empty
    /// unless asked for.
    pub attention: Vec<Tensor<4>>,
}

impl GptConfig {
    /// Builds the model with GPT-2's initialisation: weights `N(0, 0.02)`, the residual
    /// projections `N(0, 0.02/√(2·n_layers))`, biases 0, LayerNorms 1 and 0.
    pub fn try_init(&self, device: &Device) -> Result<Gpt, ModelError> {
        self.validate()?;
        let params = self.parameter_count();
        crate::limits::ensure_fits(
            (params * 4).min(u64::MAX as u128) as u64,
            &format!("a model of {params} parameters"),
            "choose fewer layers, a narrower model or a smaller vocabulary",
        )?;
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let proj_std = 0.02 / (2.0 * self.n_layers as f64).sqrt();
        let rotary_base = match self.positional {
            PositionalEncoding::Rotary { base } => Some(base),
            _ => None,
        };
        let layer_norm = || LayerNorm::new(self.d_model, self.layer_norm_eps, self.bias, device);
        let blocks = (0..self.n_layers)
            .map(|_| -> Result<Block, ModelError> {
                let mut attn = MultiHeadAttentionConfig::new(self.d_model, self.n_heads)
                    .with_dropout(self.dropout)
                    .with_bias(self.bias)
                    .with_rotary_base(rotary_base)
                    .with_initializer(normal.clone())
                    .try_init(device)?;
                attn.query = zero_bias(attn.query);
                attn.key = zero_bias(attn.key);
                attn.value = zero_bias(attn.value);
                attn.output = zero_bias(attn.output);
                attn.output.weight = Param::from_tensor(Tensor::random(
                    [self.d_model, self.d_model],
                    burn::tensor::Distribution::Normal(0.0, proj_std),
                    device,
                ));
                Ok(Block {
                    ln_1: layer_norm(),
                    attn,
                    attn_dropout: DropoutConfig::new(self.dropout).init(),
                    ln_2: layer_norm(),
                    mlp: Mlp::new(
                        self.d_model,
                        self.d_ff(),
                        self.bias,
                        self.dropout,
                        &self.activation,
                        proj_std,
                        device,
                    ),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let embedding = |n| {
            EmbeddingConfig::new(n, self.d_model)
                .with_initializer(normal.clone())
                .init(device)
        };
        Ok(Gpt {
            token_embedding: embedding(self.vocab_size),
            position_embedding: (self.positional == PositionalEncoding::Learned)
                .then(|| embedding(self.block_size)),
            embedding_dropout: DropoutConfig::new(self.dropout).init(),
            blocks,
            ln_f: layer_norm(),
            lm_head: (!self.tie_embeddings).then(|| {
                LinearConfig::new(self.d_model, self.vocab_size)
                    .with_bias(false)
                    .with_initializer(normal.clone())
                    .init(device)
            }),
            vocab_size: self.vocab_size,
            block_size: self.block_size,
            sinusoidal: self.positional == PositionalEncoding::Sinusoidal,
        })
    }

    /// Builds the model.
    ///
    /// # Panics
    /// If the configuration is invalid, with the message of [`GptConfig::validate`]; use
    /// [`try_init`](Self::try_init) for configurations from user input.
    pub fn init(&self, device: &Device) -> Gpt {
        self.try_init(device)
            .unwrap_or_else(|error| panic!("{error}"))
    }
}

impl Gpt {
    /// Logits for every position.
    ///
    /// # Shapes
    /// `tokens`: `[batch, seq]` -> `[batch, seq, vocab_size]`
    ///
    /// # Panics
    /// If `seq > block_size` or the batch is empty; use
    /// [`forward_detailed`](Self::forward_detailed) to get an error instead.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        if let Err(error) = self.check_tokens(&tokens, 0) {
            panic!("{error}");
        }
        let _warm = qkv_tensor_ops::pool::KeepWarm::start();
        let mut x = self.embed(tokens, 0);
        let Some(first) = self.blocks.first() else {
            return self.unembed(x);
        };
        // Each block's forward, with every residual add done in one op with the LayerNorm
        // that reads it: the next block's `ln_1`, or `ln_f` after the last block.
        let mut normed = first.ln_1.forward(x.clone());
        for (layer, block) in self.blocks.iter().enumerate() {
            let next = self.blocks.get(layer + 1).map_or(&self.ln_f, |b| &b.ln_1);
            (x, normed) = block.forward_normed(x, normed, next);
        }
        self.logits(normed)
    }

    /// Errors unless `tokens` is a non-empty batch that fits in the block after `start`
    /// cached positions.
    pub(crate) fn check_tokens(
        &self,
        tokens: &Tensor<2, Int>,
        start: usize,
    ) -> Result<(), ModelError> {
        let [batch, seq] = tokens.dims();
        if batch == 0 || seq == 0 {
            return Err(ModelError::InvalidInput(format!(
                "empty batch of tokens, shape [{batch}, {seq}]"
            )));
        }
        if start + seq > self.block_size {
            return Err(ModelError::TooLong {
                len: start + seq,
                block_size: self.block_size,
            });
        }
        Ok(())
    }

    /// The residual stream read out as next-token logits: the final LayerNorm, then the LM
    /// head. The last step of [`forward`](Self::forward); the logit lens applies it to the
    /// stream after every layer.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, d_model]` -> `[batch, seq, vocab_size]`
    pub fn unembed(&self, x: Tensor<3>) -> Tensor<3> {
        self.logits(self.ln_f.forward(x))
    }

    /// The unembedding matrix `W_U`, `[d_model, vocab_size]`: the LM head's weight, or the
    /// token embedding transposed when the two are tied.
    pub fn unembedding(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.token_embedding.weight.val().transpose(),
        }
    }

    /// The LM head: next-token logits from the final normalised stream.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, d_model]` -> `[batch, seq, vocab_size]`
    pub(crate) fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, seq, d_model] = x.dims();
        let x = x.reshape([batch * seq, d_model]);
        let logits = match &self.lm_head {
            Some(head) => qkv_tensor_ops::fused::linear(head, x),
            // Weight tying: the LM head is the token embedding, [vocab, d_model], transposed.
            None => qkv_tensor_ops::fused::matmul(x, self.token_embedding.weight.val().transpose()),
        };
        logits.reshape([batch, seq, self.vocab_size])
    }

    /// Token plus position embeddings for positions `start..start + seq`, with embedding
    /// dropout.
    ///
    /// # Shapes
    /// `tokens`: `[batch, seq]` -> `[batch, seq, d_model]`
    pub(crate) fn embed(&self, tokens: Tensor<2, Int>, start: usize) -> Tensor<3> {
        let seq = tokens.dims()[1];
        let device = tokens.device();
        let mut x = self.token_embedding.forward(tokens);
        let d_model = x.dims()[2];
        if let Some(wpe) = &self.position_embedding {
            let positions = Tensor::<1, Int>::arange(start as i64..(start + seq) as i64, &device)
                .reshape([1, seq]);
            x = x + wpe.forward(positions);
        } else if self.sinusoidal {
            // The table is f32; a half-precision stream (mixed precision) takes it in its type.
            let mut table = sinusoidal_table(start, seq, d_model, &device);
            if let Some(half) = qkv_tensor_ops::fused::half_dtype(x.dtype()) {
                table = table.cast(half);
            }
            x = x + table.unsqueeze::<3>();
        }
        qkv_attention::dropout(&self.embedding_dropout, x)
    }

    /// Everything layer `layer`'s attention computes on `tokens`: Q, K, V, raw scores,
    /// probabilities (see [`AttentionInspection`]).
    ///
    /// # Shapes
    /// `tokens`: `[batch, seq]`; the parts are `[batch, n_heads, seq, …]`.
    pub fn inspect_layer(
        &self,
        tokens: Tensor<2, Int>,
        layer: usize,
    ) -> Result<AttentionInspection, ModelError> {
        let [_, seq] = tokens.dims();
        if layer >= self.n_layers() {
            return Err(ModelError::InvalidInput(format!(
                "layer {layer} does not exist; this model has layers 0..{}",
                self.n_layers()
            )));
        }
        if seq > self.block_size {
            return Err(ModelError::TooLong {
                len: seq,
                block_size: self.block_size,
            });
        }
        let mut x = self.embed(tokens, 0);
        for block in &self.blocks[..layer] {
            x = block.forward(x);
        }
        let block = &self.blocks[layer];
        Ok(block
            .attn
            .inspect(MhaInput::self_attn(block.ln_1.forward(x)).causal())?)
    }

    /// The model with one attention head switched off: the rows of layer `layer`'s output
    /// projection that read head `head`'s context are zeroed, so the head contributes
    /// nothing (the output bias stays). For ablation studies.
    pub fn ablate_head(mut self, layer: usize, head: usize) -> Result<Self, ModelError> {
        let n_layers = self.n_layers();
        let block = self.blocks.get_mut(layer).ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "layer {layer} does not exist; this model has layers 0..{n_layers}"
            ))
        })?;
        let n_heads = block.attn.n_heads;
        if head >= n_heads {
            return Err(ModelError::InvalidInput(format!(
                "head {head} does not exist; layers have heads 0..{n_heads}"
            )));
        }
        let d_head = block.attn.d_head();
        let weight = &mut block.attn.output.weight;
        *weight = weight.clone().map(|w| {
            let [_, d_out] = w.dims();
            let zeros = Tensor::<2>::zeros([d_head, d_out], &w.device());
            w.slice_assign(s![head * d_head..(head + 1) * d_head, ..], zeros)
        });
        Ok(self)
    }

    /// Number of transformer blocks.
    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    /// One KV cache per block, empty, for [`forward_detailed`](Self::forward_detailed).
    pub fn new_caches(&self) -> Vec<KvCache> {
        (0..self.n_layers()).map(|_| KvCache::new()).collect()
    }

    /// The full forward pass: optionally continuing from KV caches (then `tokens` are the new
    /// positions only, placed after the cached ones), optionally recording every layer's
    /// attention probabilities.
    ///
    /// Token ids are not range-checked here (that would cost a device round trip per call);
    /// [`generate`](Gpt::generate) and the data pipeline check them.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]`
    /// - `logits`: `[batch, seq, vocab_size]`
    /// - `attention[layer]`: `[batch, n_heads, seq, cache_len + seq]`
    pub fn forward_detailed(
        &self,
        tokens: Tensor<2, Int>,
        caches: Option<&mut [KvCache]>,
        record_attention: bool,
    ) -> Result<GptOutput, ModelError> {
        self.forward_with(tokens, caches, record_attention, false)
    }

    /// [`forward_detailed`](Self::forward_detailed) with the logits of the last position
    /// only: what generation needs from a prompt, without the `[seq, vocab]` product of the
    /// head (at GPT-2 size and 512 tokens, a third of the prompt's arithmetic).
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]`
    /// - `logits`: `[batch, 1, vocab_size]`
    /// - `attention[layer]`: `[batch, n_heads, seq, cache_len + seq]`
    pub fn forward_last(
        &self,
        tokens: Tensor<2, Int>,
        caches: Option<&mut [KvCache]>,
        record_attention: bool,
    ) -> Result<GptOutput, ModelError> {
        self.forward_with(tokens, caches, record_attention, true)
    }

    fn forward_with(
        &self,
        tokens: Tensor<2, Int>,
        mut caches: Option<&mut [KvCache]>,
        record_attention: bool,
        last_only: bool,
    ) -> Result<GptOutput, ModelError> {
        let start = match &caches {
            Some(caches) => {
                if caches.len() != self.n_layers() {
                    return Err(ModelError::InvalidInput(format!(
                        "{} KV caches for {} layers",
                        caches.len(),
                        self.n_layers()
                    )));
                }
                caches[0].len()
            }
            None => 0,
        };
        self.check_tokens(&tokens, start)?;
        let mut x = self.embed(tokens, start);
        let mut attention = Vec::new();
        for (layer, block) in self.blocks.iter().enumerate() {
            let cache = caches.as_deref_mut().map(|c| &mut c[layer]);
            let (next, probs) = block.forward_detailed(x, cache, record_attention)?;
            x = next;
            attention.extend(probs);
        }
        if last_only {
            let [batch, seq, d_model] = x.dims();
            x = x
                .slice(s![.., seq - 1..seq, ..])
                .reshape([batch, 1, d_model]);
        }
        Ok(GptOutput {
            logits: self.logits(self.ln_f.forward(x)),
            attention,
        })
    }
}
