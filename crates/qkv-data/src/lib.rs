//! Data for qkv: tokenizers, text datasets with seeded random-window batching, Tiny
//! Shakespeare (downloaded once and verified by SHA-256, or read from a local copy), and the
//! built-in associative-recall task that the default `cargo xtask train` learns offline.
//!
//! # Brief overview
//!
//! * [`Tokenizer`]: text ↔ token ids, a [character](CharTokenizer) vocabulary built from the
//!   corpus or a byte-level BPE trained with the `tokenizers` crate; saved as JSON beside a run.
//! * [`TextStream`]: generated tokens to text as they arrive, whole characters only, cut at
//!   stop strings.
//! * [`TextDataset`]: a token stream split 90/10 into train and validation (as nanoGPT does),
//!   batched as random windows.
//! * [`fetch`]: a checksum-verified download with a cache, and [`tiny_shakespeare`] on top of it.
//! * [`hub`]: files of Hugging Face Hub repositories in the Hugging Face cache, resumable,
//!   verified, offline-capable.
//! * [`recall`]: the associative-recall task, generated from a seed.
//! * [`TokenBatch`]: what every source hands the trainer; targets equal to [`IGNORE`] carry
//!   no loss.
//!
//! Nothing here knows about tensors or devices: batches are plain `Vec<i64>`s.

mod dataset;
mod error;
pub mod fetch;
pub mod hub;
pub mod recall;
mod stream;
mod tokenizer;
pub mod translate;

pub use dataset::{Split, TextDataset, TokenBatch, read_text};
pub use error::DataError;
pub use fetch::{DataSource, TINY_SHAKESPEARE, tiny_shakespeare};
pub use hub::{Hub, HubRepo};
pub use recall::RecallTask;
pub use stream::{Piece, TextStream};
pub use tokenizer::{BpeTokenizer, CharTokenizer, Tokenizer, WordTokenizer};
pub use translate::{TranslateError, TranslationBatch, TranslationTask, TranslationVocab};

/// The target value that carries no loss (padding, or positions that are not answers).
pub const IGNORE: i64 = -1;

/// The examples of this crate's README, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
