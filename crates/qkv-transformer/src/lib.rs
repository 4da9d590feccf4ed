//! A decoder-only GPT built from [`qkv_attention`]: token and position embeddings, pre-LN
//! transformer blocks, a final LayerNorm and a tied LM head; the next-token loss; KV-cached
//! generation; and weights as safetensors, ours and Hugging Face GPT-2's.
//!
//! # Brief overview
//!
//! ```text
//! tokens [batch, seq]
//!   -> token_embedding (+ position_embedding | sinusoidal)   [batch, seq, d_model]
//!   -> n_layers × Block: x + attn(ln_1(x)); x + mlp(ln_2(x))
//!   -> ln_f -> x · token_embeddingᵀ                          [batch, seq, vocab_size]
//! ```
//!
//! ```
//! use burn::prelude::*;
//! use qkv_transformer::{GenerationConfig, GptConfig};
//!
//! let device = Device::flex();
//! let model = GptConfig::new(50, 16, 2, 2, 32).init(&device); // vocab, block, layers, heads, width
//! let tokens = Tensor::<2, Int>::from_data([[1, 2, 3, 4]], &device);
//! assert_eq!(model.forward(tokens).dims(), [1, 4, 50]);
//! let out = model.generate(&[vec![1, 2, 3]], &GenerationConfig::greedy(5), |_, _| {}).unwrap();
//! assert_eq!(out.tokens[0].len(), 5);
//! ```
//!
//! * [`GptConfig`] with presets: [`GptConfig::shakespeare_char`],
//!   [`GptConfig::shakespeare_char_gpu`], [`GptConfig::gpt2_small`].
//! * [`Gpt`]: [`forward`](Gpt::forward), [`forward_detailed`](Gpt::forward_detailed) (KV
//!   caches, recorded attention), [`generate`](Gpt::generate).
//! * [`Seq2Seq`]: the encoder–decoder of "Attention Is All You Need", with greedy and
//!   beam-search [`translate`](Seq2Seq::translate).
//! * [`cross_entropy`], [`smoothed_cross_entropy`]: the losses.
//! * [`recurrent`]: LSTM and GRU language models, the baseline attention is compared with.
//! * [`weights`]: our safetensors names; [`gpt2`]: Hugging Face GPT-2 import.

mod block;
mod config;
mod error;
mod generate;
mod gpt;
pub mod gpt2;
mod init;
pub mod interp;
pub mod limits;
mod loss;
mod mlp;
mod norm;
mod positional;
pub mod recurrent;
mod sampling;
mod seq2seq;
pub mod weights;

pub use block::Block;
pub use config::{Activation, GptConfig, PositionalEncoding};
pub use error::{ModelError, WeightsError};
pub use generate::{Generation, GenerationConfig};
pub use gpt::{Gpt, GptOutput};
pub use loss::{
    cross_entropy, reference_cross_entropy, reference_smoothed_cross_entropy,
    smoothed_cross_entropy,
};
pub use mlp::{Mlp, gelu_exact, gelu_tanh};
pub use norm::LayerNorm;
pub use positional::sinusoidal_table;
pub use sampling::{Sampling, SplitMix64, argmax, filtered_probs, sample};
pub use seq2seq::{
    DecodeConfig, DecoderCache, DecoderLayer, Encoded, EncoderLayer, Seq2Seq, Seq2SeqConfig,
    Translation,
};

#[cfg(test)]
mod tests;

/// The examples of this crate's README, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
