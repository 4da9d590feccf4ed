//! Generated tokens to text as they arrive: whole characters only, and stop strings.
//!
//! A byte-level BPE token can end in the middle of a UTF-8 character (`é` is two bytes, a
//! CJK character three, an emoji four, often split over tokens). Decoding one token at a time
//! prints U+FFFD for each half; [`TextStream`] holds such bytes back until the character is
//! whole, so what it emits, joined, is exactly the decoding of all the tokens at once.

use crate::error::DataError;
use crate::tokenizer::Tokenizer;

/// Text of a growing token sequence, emitted piece by piece, optionally cut at the first
/// stop string.
#[derive(Debug)]
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Tokens before `prefix` are emitted and no longer decoded.
    prefix: usize,
    /// Tokens before `read` are emitted; those from `prefix` give context for the next.
    read: usize,
    stops: Vec<String>,
    /// Emitted text not yet released because it could be the start of a stop string.
    held: String,
    stopped: bool,
}

/// What one more token releases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Piece {
    /// Text now safe to show (possibly empty).
    pub text: String,
    /// A stop string was reached: `text` ends just before it, and generation should end.
    pub stopped: bool,
}

impl<'a> TextStream<'a> {
    /// A stream over `tokenizer`'s decoding, cut at the first of `stops` (empty strings are
    /// ignored).
    pub fn new(tokenizer: &'a Tokenizer, stops: &[String]) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Adds the next token; returns the text it completes.
    pub fn push(&mut self, id: u32) -> Result<Piece, DataError> {
        if self.stopped {
            return Ok(Piece {
                text: String::new(),
                stopped: true,
            });
        }
        self.ids.push(id);
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..])?;
        // An unfinished character decodes as U+FFFD at the end: wait for its other bytes.
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') {
            return Ok(Piece::default());
        }
        let Some(new) = now.get(before.len()..) else {
            return Ok(Piece::default());
        };
        let new = new.to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(self.release(&new))
    }

    /// The rest at the end of generation: held-back bytes (an unfinished character shows as
    /// U+FFFD, as a full decoding would show it) and text kept back for a stop string that
    /// never came.
    pub fn finish(&mut self) -> Result<String, DataError> {
        if self.stopped {
            return Ok(String::new());
        }
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..])?;
        let rest = now.get(before.len()..).unwrap_or("").to_string();
        self.read = self.ids.len();
        self.prefix = self.read;
        let mut piece = self.release(&rest);
        piece.text.push_str(&std::mem::take(&mut self.held));
        Ok(piece.text)
    }

    /// Passes `new` text through the stop strings.
    fn release(&mut self, new: &str) -> Piece {
        if self.stops.is_empty() {
            return Piece {
                text: new.to_string(),
                stopped: false,
            };
        }
        self.held.push_str(new);
        let first_stop = self.stops.iter().filter_map(|s| self.held.find(s)).min();
        if let Some(at) = first_stop {
            self.stopped = true;
            let text = self.held[..at].to_string();
            self.held.clear();
            return Piece {
                text,
                stopped: true,
            };
        }
        // Keep back the longest tail that could still grow into a stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n) && self.held.ends_with(&s[..n]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        Piece {
            text,
            stopped: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BpeTokenizer;

    fn bpe() -> Tokenizer {
        let text = "the cat sat on the mat. le café est fermé. 東京は大きい 🦀 crabs\n".repeat(20);
        Tokenizer::Bpe(Box::new(BpeTokenizer::train(&text, 300).unwrap()))
    }

    fn stream_all(tokenizer: &Tokenizer, ids: &[u32], stops: &[String]) -> (String, bool) {
        let mut stream = TextStream::new(tokenizer, stops);
        let mut out = String::new();
        for &id in ids {
            let piece = stream.push(id).unwrap();
            out += &piece.text;
            if piece.stopped {
                return (out, true);
            }
        }
        out += &stream.finish().unwrap();
        (out, false)
    }

    #[test]
    fn multi_byte_characters_split_over_tokens_come_out_whole() {
        let tokenizer = bpe();
        let text = "a café, 東京, and 🦀 — déjà vu";
        let ids = tokenizer.encode(text).unwrap();
        // Token by token, the old way, some characters come out as U+FFFD halves.
        let one_by_one: String = ids
            .iter()
            .map(|&id| tokenizer.decode(&[id]).unwrap())
            .collect();
        assert!(one_by_one.contains('\u{FFFD}'), "{one_by_one:?}");
        let (streamed, stopped) = stream_all(&tokenizer, &ids, &[]);
        assert_eq!(streamed, text);
        assert!(!stopped);
        // Every piece is whole: no piece holds U+FFFD.
        let mut stream = TextStream::new(&tokenizer, &[]);
        for &id in &ids {
            assert!(!stream.push(id).unwrap().text.contains('\u{FFFD}'));
        }
    }

    #[test]
    fn random_tokens_stream_to_the_one_shot_decoding() {
        let tokenizer = bpe();
        let mut rng = qkv_rng::SplitMix64::new(7);
        for _ in 0..50 {
            let ids: Vec<u32> = (0..40).map(|_| rng.below(300) as u32).collect();
            let (streamed, _) = stream_all(&tokenizer, &ids, &[]);
            assert_eq!(streamed, tokenizer.decode(&ids).unwrap(), "{ids:?}");
        }
    }

    #[test]
    fn stop_strings_cut_the_text_even_across_tokens() {
        let tokenizer = bpe();
        let text = "the cat sat on the mat. le café est fermé.";
        let ids = tokenizer.encode(text).unwrap();
        let stops = vec!["mat.".to_string(), "zzz".to_string()];
        let (out, stopped) = stream_all(&tokenizer, &ids, &stops);
        assert_eq!(out, "the cat sat on the ");
        assert!(stopped);
        // A stop string that never comes holds nothing back at the end.
        let (out, stopped) = stream_all(&tokenizer, &ids, &["mat!".to_string()]);
        assert_eq!(out, text);
        assert!(!stopped);
        // A stop string made of a multi-byte character.
        let (out, stopped) = stream_all(&tokenizer, &ids, &["é".to_string()]);
        assert_eq!(out, "the cat sat on the mat. le caf");
        assert!(stopped);
    }
}
