//! Attention math on plain Burn tensors: masks, a masked softmax with true minus-infinity
//! semantics, scaled dot-product attention (explicit and fused paths behind one function),
//! rotary position embeddings, and slow reference implementations to test them against.
//!
//! # Brief overview
//!
//! Attention lets every query position look at the key positions it is allowed to see and
//! take a weighted average of their values:
//!
//! ```text
//! probs   = softmax(Q·Kᵀ / √d_head + mask)     // [batch, n_heads, seq_q, seq_k]
//! context = probs · V                          // [batch, n_heads, seq_q, d_head]
//! ```
//!
//! * [`mask`] builds the boolean masks (`true` = hidden) for causal decoding and padding.
//! * [`softmax`] turns masked scores into probabilities; hidden keys get exactly 0 and a row
//!   whose keys are all hidden gets all zeros, never NaN.
//! * [`sdpa`] is the attention itself. [`AttentionPath::Explicit`] materialises the
//!   probabilities (so they can be returned, or dropped out); [`AttentionPath::Fused`] calls
//!   Burn's `module::attention`, which a backend may run as one kernel;
//!   [`causal_attention_in_query_blocks`] skips the hidden half of causal attention by
//!   taking a block of queries at a time against only the keys it can see.
//! * [`rotary`] rotates queries and keys by their absolute position (RoPE).
//! * [`stats`] summarises attention probabilities per head (entropy, distance, peak, sink).
//! * [`reference`](mod@reference) holds deliberately slow, loop-by-loop versions of all of the above. They
//!   exist only to be obviously right, and every fast path is tested against them.
//!
//! * [`fused`] holds six fused ops: LayerNorm, the scaled causal softmax, GELU, dropout,
//!   flash attention (forward, backward and dropout without materialising the
//!   probabilities) and the one-pass AdamW update, each with hand-written backward passes
//!   where it has one (kernels on the Flex CPU backend, the explicit path elsewhere).
//!
//! * [`pool`] keeps rayon's other workers spinning instead of sleeping through a burst of
//!   short parallel ops (a training step).
//!
//! Nothing here has parameters or touches files, and every function works on whatever device
//! its tensors live on; only [`fused`] names a backend, to give Flex its kernels.

pub mod fused;
pub mod mask;
pub mod pool;
pub mod reference;
pub mod rotary;
pub mod sdpa;
pub mod simd;
pub mod softmax;
pub mod stats;

pub use mask::{causal_mask, padding_mask, padding_mask_from_lengths};
pub use rotary::{apply_rotary, rotary_tables};
pub use sdpa::{
    AttentionPath, SdpaOptions, SdpaOutput, attention_probs, causal_attention_in_query_blocks,
    scaled_dot_product_attention,
};
pub use softmax::masked_softmax;
pub use stats::{HeadStats, attention_stats};

/// The examples of this crate's README, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
