//! Configuration of [`MultiHeadAttention`](crate::MultiHeadAttention).

use burn::nn::{DropoutConfig, Initializer, LinearConfig};
use burn::prelude::*;

use crate::error::AttentionError;
use crate::mha::MultiHeadAttention;

/// Configuration of a [`MultiHeadAttention`] layer.
///
/// ```
/// # use qkv_attention::MultiHeadAttentionConfig;
/// let config = MultiHeadAttentionConfig::new(384, 6) // d_model, n_heads
///     .with_dropout(0.2)
///     .with_bias(false)
///     .with_rotary_base(Some(10_000.0));
/// assert_eq!(config.d_head(), 64);
/// ```
#[derive(Config, Debug)]
pub struct MultiHeadAttentionConfig {
    /// Width of the token vectors, `d_model`.
    pub d_model: usize,
    /// Number of heads; must divide `d_model`. Each head works on `d_head = d_model / n_heads`.
    pub n_heads: usize,
    /// Dropout probability on the attention probabilities (not on the scores), during
    /// training only.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Whether the Q, K, V and output projections have a bias.
    #[config(default = true)]
    pub bias: bool,
    /// `Some(base)` rotates queries and keys by position (RoPE) with that base, usually
    /// `10000.0`; `None` leaves them unrotated (positions then come from the embeddings).
    #[config(default = "None")]
    pub rotary_base: Option<f64>,
    /// How the projection weights are drawn. The default is Burn's `Linear` default.
    #[config(
        default = "Initializer::KaimingUniform{gain:0.577_350_269_189_625_8, fan_out_only:false}"
    )]
    pub initializer: Initializer,
}

impl MultiHeadAttentionConfig {
    /// Width of one head, `d_model / n_heads`.
    pub fn d_head(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// Checks the configuration: heads divide the width, rotary needs an even `d_head`, the
    /// dropout probability lies in `[0, 1)`.
    pub fn validate(&self) -> Result<(), AttentionError> {
        if self.d_model == 0 || self.n_heads == 0 {
            return Err(AttentionError::InvalidConfig(format!(
                "d_model ({}) and n_heads ({}) must both be at least 1",
                self.d_model, self.n_heads
            )));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(AttentionError::HeadsDoNotDivide {
                d_model: self.d_model,
                n_heads: self.n_heads,
            });
        }
        if self.rotary_base.is_some() && !self.d_head().is_multiple_of(2) {
            return Err(AttentionError::InvalidConfig(format!(
                "rotary embedding rotates pairs of features, so d_head = {} must be even",
                self.d_head()
            )));
        }
        if let Some(base) = self.rotary_base
            && !(base > 1.0 && base.is_finite())
        {
            return Err(AttentionError::InvalidConfig(format!(
                "rotary_base must be a finite number above 1, got {base}"
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(AttentionError::InvalidConfig(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Builds the layer, or says what is wrong with the configuration.
    pub fn try_init(&self, device: &Device) -> Result<MultiHeadAttention, AttentionError> {
        self.validate()?;
        let projection = || {
            LinearConfig::new(self.d_model, self.d_model)
                .with_bias(self.bias)
                .with_initializer(self.initializer.clone())
                .init(device)
        };
        Ok(MultiHeadAttention {
            query: projection(),
            key: projection(),
            value: projection(),
            output: projection(),
            dropout: DropoutConfig::new(self.dropout).init(),
            n_heads: self.n_heads,
            d_model: self.d_model,
            rotary_base: self.rotary_base,
        })
    }

    /// Builds the layer.
    ///
    /// # Panics
    /// If the configuration is invalid (see [`validate`](Self::validate)), with the message of
    /// the [`AttentionError`]. Use [`try_init`](Self::try_init) for configurations that come
    /// from user input.
    pub fn init(&self, device: &Device) -> MultiHeadAttention {
        self.try_init(device)
            .unwrap_or_else(|error| panic!("{error}"))
    }
}
