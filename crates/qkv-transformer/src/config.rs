//! Configuration of the GPT model, its typed choices, and the presets.

use burn::prelude::*;

use crate::error::ModelError;

/// How a token learns where it is in the sequence.
#[derive(Config, Debug, PartialEq)]
pub enum PositionalEncoding {
    /// A trained vector per position, added to the token embedding (GPT-2, nanoGPT).
    Learned,
    /// The fixed sines and cosines of "Attention Is All You Need", section 3.5, added to the
    /// token embedding.
    Sinusoidal,
    /// Rotary embedding (RoPE) of queries and keys inside every attention layer; nothing is
    /// added to the token embedding.
    Rotary {
        /// The rotation base, usually 10000.
        base: f64,
    },
}

/// The non-linearity of the MLP.
#[derive(Config, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` with the error function (PyTorch's `nn.GELU()`, nanoGPT).
    Gelu,
    /// GELU's tanh approximation (GPT-2's `gelu_new`).
    GeluTanh,
}

/// Configuration of a decoder-only [`Gpt`](crate::Gpt).
///
/// ```
/// # use qkv_transformer::GptConfig;
/// let config = GptConfig::shakespeare_char(65);
/// assert_eq!((config.n_layers, config.n_heads, config.d_model, config.block_size), (4, 4, 128, 64));
/// ```
#[derive(Config, Debug)]
pub struct GptConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// The longest context the model sees (positions `0..block_size`).
    pub block_size: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Attention heads per block; must divide `d_model`.
    pub n_heads: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Hidden width of the MLP as a multiple of `d_model` (`d_ff = mlp_ratio · d_model`).
    #[config(default = 4)]
    pub mlp_ratio: usize,
    /// Dropout on attention probabilities, residual branches and embeddings (training only).
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Whether linear layers and LayerNorms have biases.
    #[config(default = true)]
    pub bias: bool,
    /// Whether the LM head reuses the token embedding matrix (weight tying).
    #[config(default = true)]
    pub tie_embeddings: bool,
    /// How positions are encoded.
    #[config(default = "PositionalEncoding::Learned")]
    pub positional: PositionalEncoding,
    /// The MLP's non-linearity.
    #[config(default = "Activation::Gelu")]
    pub activation: Activation,
    /// LayerNorm's epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

impl GptConfig {
    /// nanoGPT's `shakespeare_char` recipe for a CPU: 4 layers, 4 heads, 128 wide, block 64,
    /// no dropout, no biases, exact GELU, tied embeddings.
    pub fn shakespeare_char(vocab_size: usize) -> Self {
        Self::new(vocab_size, 64, 4, 4, 128).with_bias(false)
    }

    /// nanoGPT's `shakespeare_char` recipe for a GPU: 6 layers, 6 heads, 384 wide, block 256,
    /// dropout 0.2, no biases.
    pub fn shakespeare_char_gpu(vocab_size: usize) -> Self {
        Self::new(vocab_size, 256, 6, 6, 384)
            .with_bias(false)
            .with_dropout(0.2)
    }

    /// GPT-2 small (124M): 12 layers, 12 heads, 768 wide, vocabulary 50257, block 1024,
    /// biases, tanh GELU, tied embeddings, dropout 0.1.
    pub fn gpt2_small() -> Self {
        Self::new(50257, 1024, 12, 12, 768)
            .with_dropout(0.1)
            .with_activation(Activation::GeluTanh)
    }

    /// Width of one attention head.
    pub fn d_head(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// Hidden width of the MLP.
    pub fn d_ff(&self) -> usize {
        self.mlp_ratio * self.d_model
    }

    /// Parameters the model has (each tensor once, tied weights once). Computed in `u128`,
    /// so it is exact for any config, valid or not.
    pub fn parameter_count(&self) -> u128 {
        let (v, t, l, d) = (
            self.vocab_size as u128,
            self.block_size as u128,
            self.n_layers as u128,
            self.d_model as u128,
        );
        let ff = self.mlp_ratio as u128 * d;
        let b = self.bias as u128;
        let attention = 4 * d * d + 4 * d * b;
        let mlp = 2 * d * ff + (ff + d) * b;
        let norms = 2 * (d + d * b);
        let positions = if self.positional == PositionalEncoding::Learned {
            t * d
        } else {
            0
        };
        let head = if self.tie_embeddings { 0 } else { v * d };
        v * d + positions + l * (attention + mlp + norms) + (d + d * b) + head
    }

    /// Checks every value, naming the first one that is wrong and why.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::InvalidConfig(msg));
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("block_size", self.block_size),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("d_model", self.d_model),
            ("mlp_ratio", self.mlp_ratio),
        ] {
            if value == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        use crate::limits::{self, check};
        check("vocab_size", self.vocab_size, limits::MAX_VOCAB)?;
        check("block_size", self.block_size, limits::MAX_CONTEXT)?;
        check("n_layers", self.n_layers, limits::MAX_LAYERS)?;
        check("n_heads", self.n_heads, limits::MAX_HEADS)?;
        check("d_model", self.d_model, limits::MAX_WIDTH)?;
        check("mlp_ratio", self.mlp_ratio, limits::MAX_MLP_RATIO)?;
        if !self.d_model.is_multiple_of(self.n_heads) {
            return bad(format!(
                "n_heads ({}) must divide d_model ({}): each head gets d_model / n_heads features",
                self.n_heads, self.d_model
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return bad(format!(
                "layer_norm_eps must be positive, got {}",
                self.layer_norm_eps
            ));
        }
        if let PositionalEncoding::Rotary { base } = self.positional {
            if !self.d_head().is_multiple_of(2) {
                return bad(format!(
                    "rotary positions need an even d_head, got {}",
                    self.d_head()
                ));
            }
            if !(base > 1.0 && base.is_finite()) {
                return bad(format!(
                    "the rotary base must be a finite number above 1, got {base}"
                ));
            }
        }
        if self.positional == PositionalEncoding::Sinusoidal && !self.d_model.is_multiple_of(2) {
            return bad(format!(
                "sinusoidal positions need an even d_model, got {}",
                self.d_model
            ));
        }
        Ok(())
    }
}
