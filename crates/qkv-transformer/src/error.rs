//! Errors of the model crate: configuration, input, and weight files.

use qkv_attention::AttentionError;

/// What can go wrong building, running, saving or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value is out of range.
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// An input has the wrong shape or content.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary (vocab_size {vocab_size})")]
    TokenOutOfRange {
        /// The offending id.
        token: i64,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// More positions than the model has.
    #[error("sequence of {len} positions is longer than the block size {block_size}")]
    TooLong {
        /// Positions asked for (cache included).
        len: usize,
        /// The model's block size.
        block_size: usize,
    },
    /// From the attention layer.
    #[error(transparent)]
    Attention(#[from] AttentionError),
    /// A weight file could not be used.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// What can go wrong reading or writing weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a valid safetensors file (truncated, or another format).
    #[error(
        "{path} is not a valid safetensors file ({reason}); was it truncated, or written in another format?"
    )]
    NotSafetensors {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// A tensor the model needs is not in the file.
    #[error("tensor {name:?} (shape {expected:?}) is missing from {path}")]
    Missing {
        /// The tensor's name.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The file.
        path: String,
    },
    /// The file has tensors the model does not know: probably another architecture or config.
    #[error(
        "{path} holds tensors this model does not have: {names:?}; was it saved from a model with another config?"
    )]
    Unexpected {
        /// The unknown names.
        names: Vec<String>,
        /// The file.
        path: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor {name:?} in {path} has shape {found:?}, but the model expects {expected:?}")]
    ShapeMismatch {
        /// The tensor's name.
        name: String,
        /// The shape in the file.
        found: Vec<usize>,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The file.
        path: String,
    },
    /// A tensor is stored in a type we do not read.
    #[error("tensor {name:?} in {path} is stored as {dtype}; only F32, F16 and BF16 are supported")]
    UnsupportedDtype {
        /// The tensor's name.
        name: String,
        /// Its stored type.
        dtype: String,
        /// The file.
        path: String,
    },
    /// A Hugging Face `config.json` that does not describe a GPT-2 we can build.
    #[error("{path}: {reason}")]
    BadConfig {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}
