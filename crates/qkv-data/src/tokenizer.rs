//! Tokenizers: characters, or byte-level BPE through the `tokenizers` crate.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// A vocabulary of single characters, built from a corpus (nanoGPT's `shakespeare_char`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CharTokenizer {
    /// The characters; a character's id is its index. Sorted by code point.
    pub chars: Vec<char>,
}

impl CharTokenizer {
    /// The sorted set of characters of `text`.
    pub fn from_text(text: &str) -> Self {
        let set: BTreeSet<char> = text.chars().collect();
        Self {
            chars: set.into_iter().collect(),
        }
    }

    /// A tokenizer over exactly these characters, in this order.
    pub fn from_chars(chars: impl IntoIterator<Item = char>) -> Self {
        Self {
            chars: chars.into_iter().collect(),
        }
    }

    /// The id of each character.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        text.chars()
            .map(|c| {
                self.chars.binary_search(&c).map(|i| i as u32).or_else(|_| {
                    // Vocabularies given with from_chars may be unsorted.
                    self.chars
                        .iter()
                        .position(|&x| x == c)
                        .map(|i| i as u32)
                        .ok_or(DataError::UnknownCharacter(c))
                })
            })
            .collect()
    }

    /// The text of the ids.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        ids.iter()
            .map(|&id| {
                self.chars
                    .get(id as usize)
                    .copied()
                    .ok_or(DataError::UnknownToken(id))
            })
            .collect()
    }
}

/// A byte-level BPE tokenizer (GPT-2's scheme): it works on UTF-8 bytes, so any input can be
/// encoded, and merges frequent byte pairs into tokens.
#[derive(Clone)]
pub struct BpeTokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BpeTokenizer {{ vocab_size: {} }}", self.vocab_size())
    }
}

impl BpeTokenizer {
    /// Trains a byte-level BPE with `vocab_size` tokens (at least 256 + a few merges) on `text`.
    pub fn train(text: &str, vocab_size: usize) -> Result<Self, DataError> {
        use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::{Model, TokenizerBuilder};
        if vocab_size < 257 {
            return Err(DataError::Invalid(format!(
                "a byte-level BPE needs a vocabulary of at least 257 (256 bytes + merges), got {vocab_size}"
            )));
        }
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tokenizer = TokenizerBuilder::<
            BPE,
            tokenizers::NormalizerWrapper,
            ByteLevel,
            ByteLevel,
            ByteLevel,
        >::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
        .with_decoder(Some(ByteLevel::default()))
        .build()
        .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        tokenizer
            .train(
                &mut trainer,
                text.split_inclusive('\n').map(|s| s.to_string()),
            )
            .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        let _ = tokenizer.get_model().get_vocab_size();
        let json = tokenizer
            .to_string(false)
            .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Self::from_json(&json)
    }

    /// Reads a Hugging Face `tokenizer.json` (GPT-2's, or one saved by [`to_json`](Self::to_json)).
    pub fn from_json(json: &str) -> Result<Self, DataError> {
        // The JSON's syntax first, for an error with its line and column: the `tokenizers`
        // crate panics on some malformed files (a truncated decoder section, found by this
        // workspace's parser fuzzing) instead of returning its error.
        serde_json::from_str::<serde_json::Value>(json)
            .map_err(|e| DataError::Tokenizer(format!("not a JSON tokenizer file: {e}")))?;
        let parsed = std::panic::catch_unwind(|| json.parse::<tokenizers::Tokenizer>());
        let inner = match parsed {
            Ok(result) => result.map_err(|e| DataError::Tokenizer(e.to_string()))?,
            Err(_) => {
                return Err(DataError::Tokenizer(
                    "the tokenizers crate could not read this tokenizer.json (it is malformed)"
                        .into(),
                ));
            }
        };
        Ok(Self { inner })
    }

    /// The Hugging Face `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String, DataError> {
        self.inner
            .to_string(false)
            .map_err(|e| DataError::Tokenizer(e.to_string()))
    }

    /// Tokens in the vocabulary (merges and added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| DataError::Tokenizer(e.to_string()))
    }
}

/// A fixed vocabulary of whole words; text is tokens separated by spaces (the recall task).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordTokenizer {
    /// The words; a word's id is its index.
    pub tokens: Vec<String>,
    #[serde(skip)]
    index: std::collections::HashMap<String, u32>,
}

impl WordTokenizer {
    /// A tokenizer over exactly these words, in this order.
    pub fn new(tokens: Vec<String>) -> Self {
        let index = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Self { tokens, index }
    }

    /// The ids of the space-separated words of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        text.split_whitespace()
            .map(|w| {
                self.index
                    .get(w)
                    .copied()
                    .ok_or_else(|| DataError::UnknownWord(w.to_string()))
            })
            .collect()
    }

    /// The words of `ids`, separated by spaces.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        let words: Result<Vec<&str>, DataError> = ids
            .iter()
            .map(|&id| {
                self.tokens
                    .get(id as usize)
                    .map(String::as_str)
                    .ok_or(DataError::UnknownToken(id))
            })
            .collect();
        Ok(words?.join(" "))
    }
}

/// Any of the tokenizers, as saved beside a run.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// One token per character.
    Char(CharTokenizer),
    /// One token per space-separated word of a fixed vocabulary.
    Words(WordTokenizer),
    /// Byte-level BPE.
    Bpe(Box<BpeTokenizer>),
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum SavedTokenizer {
    Char { chars: String },
    Words { tokens: Vec<String> },
}

impl Tokenizer {
    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char(t) => t.chars.len(),
            Tokenizer::Words(t) => t.tokens.len(),
            Tokenizer::Bpe(t) => t.vocab_size(),
        }
    }

    /// The ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Char(t) => t.encode(text),
            Tokenizer::Words(t) => t.encode(text),
            Tokenizer::Bpe(t) => t.encode(text),
        }
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        match self {
            Tokenizer::Char(t) => t.decode(ids),
            Tokenizer::Words(t) => t.decode(ids),
            Tokenizer::Bpe(t) => t.decode(ids),
        }
    }

    /// The tokenizer as JSON: ours for characters (`{"kind": "char", "chars": "…"}`) and
    /// words (`{"kind": "words", "tokens": […]}`),
    /// Hugging Face's `tokenizer.json` format for BPE.
    pub fn to_json(&self) -> Result<String, DataError> {
        match self {
            Tokenizer::Char(t) => {
                let saved = SavedTokenizer::Char {
                    chars: t.chars.iter().collect(),
                };
                serde_json::to_string_pretty(&saved)
                    .map_err(|e| DataError::Tokenizer(e.to_string()))
            }
            Tokenizer::Words(t) => {
                let saved = SavedTokenizer::Words {
                    tokens: t.tokens.clone(),
                };
                serde_json::to_string_pretty(&saved)
                    .map_err(|e| DataError::Tokenizer(e.to_string()))
            }
            Tokenizer::Bpe(t) => t.to_json(),
        }
    }

    /// Reads what [`to_json`](Self::to_json) wrote, or any Hugging Face `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Self, DataError> {
        match serde_json::from_str::<SavedTokenizer>(json) {
            Ok(SavedTokenizer::Char { chars }) => {
                Ok(Tokenizer::Char(CharTokenizer::from_chars(chars.chars())))
            }
            Ok(SavedTokenizer::Words { tokens }) => {
                Ok(Tokenizer::Words(WordTokenizer::new(tokens)))
            }
            Err(_) => BpeTokenizer::from_json(json).map(|t| Tokenizer::Bpe(Box::new(t))),
        }
    }

    /// Writes `tokenizer.json`-style JSON to `path`.
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        std::fs::write(path, self.to_json()?).map_err(|source| DataError::Io {
            path: path.into(),
            source,
        })
    }

    /// Reads a tokenizer file.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let json = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_json(&json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_round_trip_and_unknowns() {
        let t = CharTokenizer::from_text("hello world");
        assert_eq!(t.chars, vec![' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w']);
        let ids = t.encode("world hello").unwrap();
        assert_eq!(t.decode(&ids).unwrap(), "world hello");
        assert!(matches!(
            t.encode("hellö"),
            Err(DataError::UnknownCharacter('ö'))
        ));
        assert!(matches!(t.decode(&[99]), Err(DataError::UnknownToken(99))));
        let saved = Tokenizer::Char(t.clone()).to_json().unwrap();
        match Tokenizer::from_json(&saved).unwrap() {
            Tokenizer::Char(back) => assert_eq!(back, t),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bpe_trains_round_trips_and_handles_any_bytes() {
        let text = "the cat sat on the mat. the cat ate the rat. ".repeat(50);
        let bpe = BpeTokenizer::train(&text, 300).unwrap();
        assert!(
            bpe.vocab_size() > 256 && bpe.vocab_size() <= 300,
            "{}",
            bpe.vocab_size()
        );
        let ids = bpe.encode("the cat sat").unwrap();
        assert!(
            ids.len() < "the cat sat".len(),
            "merges shorten the text: {ids:?}"
        );
        assert_eq!(bpe.decode(&ids).unwrap(), "the cat sat");
        // Unseen characters still encode, byte by byte.
        let odd = "naïve 🦀 <&>";
        assert_eq!(bpe.decode(&bpe.encode(odd).unwrap()).unwrap(), odd);
        let again = Tokenizer::from_json(&Tokenizer::Bpe(Box::new(bpe.clone())).to_json().unwrap())
            .unwrap();
        assert_eq!(
            again.encode("the rat").unwrap(),
            bpe.encode("the rat").unwrap()
        );
        assert!(BpeTokenizer::train(&text, 100).is_err());
    }
}
