//! The errors the attention layer reports for a bad configuration or bad input shapes.

/// A configuration or an input that the attention layer cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttentionError {
    /// `d_model` must split evenly into heads.
    #[error(
        "d_model ({d_model}) is not divisible by n_heads ({n_heads}): each head gets d_model / n_heads features; pick n_heads among the divisors of d_model"
    )]
    HeadsDoNotDivide {
        /// The model width asked for.
        d_model: usize,
        /// The number of heads asked for.
        n_heads: usize,
    },
    /// A configuration value that must be positive or in a range is not.
    #[error("invalid attention config: {0}")]
    InvalidConfig(String),
    /// An input's last dimension is not the layer's `d_model`.
    #[error(
        "{input} has width {got} in its last dimension, but this layer has d_model = {expected}; expected [batch, seq, {expected}]"
    )]
    WidthMismatch {
        /// Which input (`query`, `source`).
        input: &'static str,
        /// The width found.
        got: usize,
        /// The layer's `d_model`.
        expected: usize,
    },
    /// Two inputs disagree on a dimension they must share.
    #[error("{what}: {detail}")]
    ShapeMismatch {
        /// Which inputs disagree.
        what: &'static str,
        /// Both shapes.
        detail: String,
    },
    /// A sequence of length zero.
    #[error("{input} is an empty sequence (seq_len 0); attention needs at least one position")]
    EmptySequence {
        /// Which input.
        input: &'static str,
    },
}
