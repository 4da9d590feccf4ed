//! The multi-head attention layer: projections, heads, masks, cache and probabilities.

use burn::nn::{Dropout, Linear};
use burn::prelude::*;
use qkv_tensor_ops::mask::attention_mask;
use qkv_tensor_ops::{AttentionPath, SdpaOptions, apply_rotary, scaled_dot_product_attention};

use crate::cache::KvCache;
use crate::error::AttentionError;

/// Multi-head attention, as in "Attention Is All You Need"
/// (<https://arxiv.org/abs/1706.03762>, section 3.2.2):
/// `MultiHead(Q, K, V) = Concat(head_1..head_h)·W_O`, `head_i = Attention(Q·W_Q_i, K·W_K_i, V·W_V_i)`.
///
/// Built by [`MultiHeadAttentionConfig`](crate::MultiHeadAttentionConfig). The four
/// projections are Burn `Linear`s (weight `[d_model, d_model]`, input × weight), with the
/// same field names as Burn's own `nn::attention::MultiHeadAttention`, so weights move
/// between the two unchanged.
///
/// Each forward picks one of three routes to the same function: on Flex, one attention
/// kernel with its own backward pass and dropout that never writes the probabilities out
/// (training and inference); probabilities materialised when they are asked for, and for
/// training on other backends; or Burn's fused `module::attention` (inference elsewhere, and
/// single-query decoding steps).
#[derive(Module, Debug)]
pub struct MultiHeadAttention {
    /// Query projection `W_Q`, `[d_model, d_model]`: what each position looks for.
    pub query: Linear,
    /// Key projection `W_K`, `[d_model, d_model]`: what each position offers to be found by.
    pub key: Linear,
    /// Value projection `W_V`, `[d_model, d_model]`: what each position gives when attended to.
    pub value: Linear,
    /// Output projection `W_O`, `[d_model, d_model]`: mixes the heads back together.
    pub output: Linear,
    /// Dropout on the attention probabilities.
    pub dropout: Dropout,
    /// Number of heads.
    pub n_heads: usize,
    /// Model width.
    pub d_model: usize,
    /// Rotary embedding base, when queries and keys are rotated by position.
    pub rotary_base: Option<f64>,
}

/// The input of [`MultiHeadAttention::forward`]: what attends to what, and under which masks.
#[derive(Debug, Clone)]
pub struct MhaInput {
    /// The sequence whose positions ask, `[batch, seq_q, d_model]`.
    pub query: Tensor<3>,
    /// For cross-attention, the sequence attended over (keys and values come from it),
    /// `[batch, seq_k, d_model]`. `None` means self-attention: keys and values come from
    /// `query`.
    pub source: Option<Tensor<3>>,
    /// Hide each query's future keys (decoder self-attention).
    pub causal: bool,
    /// Key-padding mask, `[batch, seq_k]`, `true` at padded positions; with a KV cache it
    /// covers every key, cached ones included.
    pub key_padding: Option<Tensor<2, Bool>>,
    /// Also return the per-head probabilities (this forces the explicit path).
    pub return_probs: bool,
}

impl MhaInput {
    /// Self-attention over `x`, `[batch, seq, d_model]`.
    pub fn self_attn(x: Tensor<3>) -> Self {
        Self {
            query: x,
            source: None,
            causal: false,
            key_padding: None,
            return_probs: false,
        }
    }

    /// Cross-attention: `query` `[batch, seq_q, d_model]` attends over `source`
    /// `[batch, seq_k, d_model]` (for example a decoder over its encoder's output).
    pub fn cross_attn(query: Tensor<3>, source: Tensor<3>) -> Self {
        Self {
            source: Some(source),
            ..Self::self_attn(query)
        }
    }

    /// Hides each query's future keys.
    pub fn causal(mut self) -> Self {
        self.causal = true;
        self
    }

    /// Hides padded keys: `mask` is `[batch, seq_k]`, `true` at padding.
    pub fn key_padding(mut self, mask: Tensor<2, Bool>) -> Self {
        self.key_padding = Some(mask);
        self
    }

    /// Asks for the per-head attention probabilities in the output.
    pub fn return_probs(mut self) -> Self {
        self.return_probs = true;
        self
    }
}

/// The output of [`MultiHeadAttention::forward`].
#[derive(Debug, Clone)]
pub struct MhaOutput {
    /// The attended values after the output projection, `[batch, seq_q, d_model]`.
    pub context: Tensor<3>,
    /// Per-head attention probabilities `[batch, n_heads, seq_q, seq_k]`, when asked for
    /// with [`MhaInput::return_probs`]. Each row sums to 1 over the keys it may see; hidden
    /// keys hold exactly 0; a query that may see no key at all has an all-zero row (and a
    /// zero context before the output projection, so only the output bias remains). They are
    /// taken before dropout.
    pub probs: Option<Tensor<4>>,
}

/// Everything one attention layer computed, for inspection: see
/// [`MultiHeadAttention::inspect`].
#[derive(Debug, Clone)]
pub struct AttentionInspection {
    /// Queries after projection (and rotation), `[batch, n_heads, seq_q, d_head]`.
    pub q: Tensor<4>,
    /// Keys after projection (and rotation), `[batch, n_heads, seq_k, d_head]`.
    pub k: Tensor<4>,
    /// Values after projection, `[batch, n_heads, seq_k, d_head]`.
    pub v: Tensor<4>,
    /// Scaled scores `Q·Kᵀ/√d_head` before any mask, `[batch, n_heads, seq_q, seq_k]`.
    pub scores: Tensor<4>,
    /// The probabilities after masking and softmax, `[batch, n_heads, seq_q, seq_k]`.
    pub probs: Tensor<4>,
    /// The layer's output, `[batch, seq_q, d_model]`.
    pub context: Tensor<3>,
}

impl MultiHeadAttention {
    /// Runs the layer on the explicit path and returns every intermediate: Q, K, V, the raw
    /// scores, the probabilities and the output. For looking at what a layer does; the
    /// output equals [`forward`](Self::forward)'s.
    ///
    /// # Shapes
    /// As [`forward`](Self::forward); see [`AttentionInspection`] for the parts.
    pub fn inspect(&self, input: MhaInput) -> Result<AttentionInspection, AttentionError> {
        let MhaInput {
            query,
            source,
            causal,
            key_padding,
            ..
        } = input;
        let [batch, seq_q] = self.check_inputs(&query, source.as_ref())?;
        let cross = source.is_some();
        let kv_input = source.unwrap_or_else(|| query.clone());
        let q = self.queries(query, 0);
        let (k, v) = self.keys_values(kv_input, cross, 0);
        let seq_k = k.dims()[2];
        let scores = q
            .clone()
            .matmul(k.clone().transpose())
            .div_scalar((self.d_head() as f64).sqrt());
        let mask = attention_mask(seq_q, seq_k, false, key_padding, &q.device());
        let probs = qkv_tensor_ops::attention_probs(q.clone(), k.clone(), mask, causal, None);
        let merged =
            probs
                .clone()
                .matmul(v.clone())
                .swap_dims(1, 2)
                .reshape([batch, seq_q, self.d_model]);
        Ok(AttentionInspection {
            q,
            k,
            v,
            scores,
            probs,
            context: project(&self.output, merged),
        })
    }

    /// Width of one head, `d_model / n_heads`.
    pub fn d_head(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Attention over a whole sequence.
    ///
    /// # Shapes
    /// - `input.query`: `[batch, seq_q, d_model]`
    /// - `input.source`: `[batch, seq_k, d_model]` (`seq_k = seq_q` for self-attention)
    /// - `input.key_padding`: `[batch, seq_k]`
    /// - output `context`: `[batch, seq_q, d_model]`; `probs`: `[batch, n_heads, seq_q, seq_k]`
    ///
    /// # Panics
    /// On inconsistent shapes, with the message of the [`AttentionError`] that
    /// [`try_forward`](Self::try_forward) returns.
    ///
    /// Tensor ranks are checked by the compiler, so an input of the wrong rank never gets
    /// this far:
    ///
    /// ```compile_fail
    /// # use burn::prelude::*;
    /// # use qkv_attention::MhaInput;
    /// let x = Tensor::<2>::zeros([7, 32], &Device::flex()); // [seq, d_model]: no batch
    /// let input = MhaInput::self_attn(x); // error: expected `Tensor<3>`, found `Tensor<2>`
    /// ```
    pub fn forward(&self, input: MhaInput) -> MhaOutput {
        self.try_forward(input)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// [`forward`](Self::forward), returning an error instead of panicking on bad shapes.
    pub fn try_forward(&self, input: MhaInput) -> Result<MhaOutput, AttentionError> {
        self.attend(input, None)
    }

    /// One decoding step (or a chunk of steps) that reuses and extends `cache`.
    ///
    /// Self-attention: the new positions' keys and values are appended to the cache and the
    /// new queries attend over all of it (with `causal`, bottom-right aligned, so a chunk of
    /// new positions cannot see each other's futures). Cross-attention: the first call fills
    /// the cache from `source`; later calls reuse it and ignore `source`.
    ///
    /// Feeding a sequence one position at a time gives the same outputs as one causal
    /// [`forward`](Self::forward) over all of it.
    ///
    /// # Shapes
    /// - `input.query`: `[batch, seq_new, d_model]`
    /// - `input.key_padding`: `[batch, cache_len + seq_new]` (self) or `[batch, seq_k]` (cross)
    /// - output `context`: `[batch, seq_new, d_model]`; `probs`: `[batch, n_heads, seq_new, seq_k]`
    pub fn forward_cached(
        &self,
        input: MhaInput,
        cache: &mut KvCache,
    ) -> Result<MhaOutput, AttentionError> {
        self.attend(input, Some(cache))
    }

    fn attend(
        &self,
        input: MhaInput,
        cache: Option<&mut KvCache>,
    ) -> Result<MhaOutput, AttentionError> {
        let MhaInput {
            query,
            source,
            causal,
            key_padding,
            return_probs,
        } = input;
        let [batch, seq_q] = self.check_inputs(&query, source.as_ref())?;
        // Four products and the attention kernel back to back: keep the CPU pool's other
        // workers awake between them (nothing inside a training step's or a generation's).
        let _warm = qkv_tensor_ops::pool::KeepWarm::start();
        let cross = source.is_some();
        // [batch, n_heads, seq_q, d_head]
        let offset = if cross {
            0
        } else {
            cache.as_ref().map_or(0, |c| c.len())
        };
        let q = self.queries(query.clone(), offset);

        let filled_cross_cache = cross && cache.as_ref().is_some_and(|c| !c.is_empty());
        let (k, v) = match cache {
            // Cross-attention with a filled cache: the source's keys and values are there.
            Some(cache) if filled_cross_cache => (
                cache.keys.clone().expect("a non-empty cache has keys"),
                cache.values.clone().expect("a non-empty cache has values"),
            ),
            cache => {
                let (k, v) = self.keys_values(source.unwrap_or(query), cross, offset);
                match cache {
                    Some(cache) => {
                        if let Some(cached) = cache.keys()
                            && cached.dims()[0] != batch
                        {
                            return Err(AttentionError::ShapeMismatch {
                                what: "the KV cache was filled with another batch size",
                                detail: format!("cache {:?}, query {:?}", cached.dims(), q.dims()),
                            });
                        }
                        cache.append(k, v)
                    }
                    None => (k, v),
                }
            }
        };
        let seq_k = k.dims()[2];
        if causal && seq_q > seq_k {
            return Err(AttentionError::ShapeMismatch {
                what: "causal attention needs at least as many keys as queries",
                detail: format!("seq_q {seq_q}, seq_k {seq_k}"),
            });
        }
        if let Some(pad) = &key_padding
            && pad.dims() != [batch, seq_k]
        {
            return Err(AttentionError::ShapeMismatch {
                what: "key_padding must be [batch, seq_k]",
                detail: format!("got {:?}, expected {:?}", pad.dims(), [batch, seq_k]),
            });
        }

        // The causal rule is folded in by the attention function itself (bottom-right).
        let device = q.device();
        let mask = |pad| attention_mask(seq_q, seq_k, false, pad, &device);
        let (heads, probs) = match AttentionPath::choose(&q, return_probs) {
            AttentionPath::Flash => {
                let dropout = if crate::dropout::is_active(&self.dropout, &device) {
                    self.dropout.prob
                } else {
                    0.0
                };
                let heads = qkv_tensor_ops::fused::flash_attention(
                    q,
                    k,
                    v,
                    key_padding,
                    causal,
                    None,
                    dropout,
                );
                (heads, None)
            }
            AttentionPath::Explicit => {
                let probs = qkv_tensor_ops::attention_probs(q, k, mask(key_padding), causal, None);
                let context = crate::dropout(&self.dropout, probs.clone()).matmul(v);
                (context, return_probs.then_some(probs))
            }
            AttentionPath::Fused => {
                let options = SdpaOptions {
                    causal,
                    scale: None,
                    path: AttentionPath::Fused,
                };
                let mask = mask(key_padding);
                (
                    scaled_dot_product_attention(q, k, v, mask, options).context,
                    None,
                )
            }
        };
        Ok(MhaOutput {
            context: self.output_of(heads),
            probs,
        })
    }

    /// Checks widths, batch sizes and emptiness; returns `[batch, seq_q]`.
    fn check_inputs(
        &self,
        query: &Tensor<3>,
        source: Option<&Tensor<3>>,
    ) -> Result<[usize; 2], AttentionError> {
        let [batch, seq_q, width] = query.dims();
        self.check_width("query", width)?;
        if seq_q == 0 {
            return Err(AttentionError::EmptySequence { input: "query" });
        }
        if let Some(source) = source {
            let [source_batch, seq_src, source_width] = source.dims();
            self.check_width("source", source_width)?;
            if source_batch != batch {
                return Err(AttentionError::ShapeMismatch {
                    what: "query and source have different batch sizes",
                    detail: format!("query {:?}, source {:?}", query.dims(), source.dims()),
                });
            }
            if seq_src == 0 {
                return Err(AttentionError::EmptySequence { input: "source" });
            }
        }
        Ok([batch, seq_q])
    }

    fn check_width(&self, input: &'static str, got: usize) -> Result<(), AttentionError> {
        if got == self.d_model {
            Ok(())
        } else {
            Err(AttentionError::WidthMismatch {
                input,
                got,
                expected: self.d_model,
            })
        }
    }

    /// The queries of `x`, split into heads and (with rotary embeddings) rotated to
    /// positions `offset..`. The first step of [`forward`](Self::forward), public for tools
    /// that look inside the layer.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, d_model]` -> `[batch, n_heads, seq, d_head]`
    pub fn queries(&self, x: Tensor<3>, offset: usize) -> Tensor<4> {
        self.rotate(self.split_heads(project(&self.query, x)), offset)
    }

    /// The keys and values of `x`, split into heads; self-attention keys (not `cross`) are
    /// rotated to positions `offset..` like the queries.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, d_model]` -> two `[batch, n_heads, seq, d_head]`
    pub fn keys_values(&self, x: Tensor<3>, cross: bool, offset: usize) -> (Tensor<4>, Tensor<4>) {
        let k = self.split_heads(project(&self.key, x.clone()));
        let v = self.split_heads(project(&self.value, x));
        let k = if cross { k } else { self.rotate(k, offset) };
        (k, v)
    }

    fn split_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [batch, seq, _] = x.dims();
        x.reshape([batch, seq, self.n_heads, self.d_head()])
            .swap_dims(1, 2)
    }

    /// The last step of [`forward`](Self::forward): the heads' attended values, concatenated
    /// and projected back to the model's width (plus the output bias).
    ///
    /// # Shapes
    /// `heads`: `[batch, n_heads, seq, d_head]` -> `[batch, seq, d_model]`
    pub fn output_of(&self, heads: Tensor<4>) -> Tensor<3> {
        project(&self.output, self.merge_heads(heads))
    }

    /// `[batch, n_heads, seq, d_head]` -> `[batch, seq, d_model]` (no copy when the heads are
    /// stored in `[batch, seq, n_heads, d_head]` order, as the flash kernel writes them).
    fn merge_heads(&self, heads: Tensor<4>) -> Tensor<3> {
        let [batch, _, seq, _] = heads.dims();
        heads.swap_dims(1, 2).reshape([batch, seq, self.d_model])
    }

    fn rotate(&self, x: Tensor<4>, offset: usize) -> Tensor<4> {
        match self.rotary_base {
            Some(base) => apply_rotary(x, offset, base),
            None => x,
        }
    }
}

/// A linear layer applied to `[batch, seq, d_in]` as one 2-D matmul over `batch · seq` rows:
/// Burn 0.22 runs a 3-D input as a batched matmul per sequence, which is slower.
fn project(linear: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [batch, seq, d_in] = x.dims();
    let y = qkv_tensor_ops::fused::linear(linear, x.reshape([batch * seq, d_in]));
    let d_out = y.dims()[1];
    y.reshape([batch, seq, d_out])
}
