//! Multi-head attention for Burn, written out so that every step can be seen: Query, Key and
//! Value projections, scaled dot-product attention per head, and the output projection.
//!
//! # Brief overview
//!
//! Each position of the input asks a question (its **query**), advertises what it holds (its
//! **key**) and offers content (its **value**). A query's dot product with every key says how
//! relevant that position is; a softmax turns the relevances into weights, and the output is
//! the weighted sum of values. Several heads do this in parallel on slices of `d_model`, each
//! free to look for something different. See "Attention Is All You Need" (Vaswani et al.
//! 2017, <https://arxiv.org/abs/1706.03762>).
//!
//! ```
//! use burn::prelude::*;
//! use qkv_attention::{MhaInput, MultiHeadAttentionConfig};
//!
//! let device = Device::flex();
//! let mha = MultiHeadAttentionConfig::new(32, 4).init(&device);
//! let x = Tensor::<3>::zeros([2, 7, 32], &device); // [batch, seq, d_model]
//! let out = mha.forward(MhaInput::self_attn(x).causal().return_probs());
//! assert_eq!(out.context.dims(), [2, 7, 32]);
//! assert_eq!(out.probs.unwrap().dims(), [2, 4, 7, 7]); // [batch, n_heads, seq_q, seq_k]
//! ```
//!
//! The layer names no backend: it runs on whatever device its tensors live on (Flex,
//! NdArray, wgpu, with or without autodiff).
//!
//! * [`MultiHeadAttentionConfig`] / [`MultiHeadAttention`]: the layer.
//! * [`MhaInput`] / [`MhaOutput`]: self- or cross-attention, causal and padding masks, and the
//!   opt-in per-head probabilities.
//! * [`KvCache`]: keys and values of the positions seen so far, for step-by-step decoding.
//! * [`AttentionError`]: what a wrong configuration or input shape is told.

mod cache;
mod config;
mod dropout;
mod error;
mod mha;

pub use cache::KvCache;
pub use config::MultiHeadAttentionConfig;
pub use dropout::dropout;
pub use error::AttentionError;
pub use mha::{AttentionInspection, MhaInput, MhaOutput, MultiHeadAttention};

#[cfg(test)]
mod tests;

/// The examples of this crate's README, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
