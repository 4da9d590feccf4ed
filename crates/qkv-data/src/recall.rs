//! Associative recall, the built-in task of `cargo xtask train`: a sequence lists key-value
//! pairs, then asks for keys again; the model must answer each with its value. The answer
//! is only in the context, at the position of the matching key, so the task cannot be done
//! without attention, and a trained model's attention map shows the query looking at the key.
//!
//! ```text
//! c7 a2 k0 f5 b9 h3 ?a2 ?h3 ?c7 ?k0 ?b9 ?f5
//! ```
//! (spaces added for reading). Every answer digit carries loss; nothing else does. Many
//! queries per sequence, not one, give the model many answers to learn from per example:
//! with one query, a 2-layer model stalled near chance for thousands of steps.
//!
//! Held-out examples are disjoint from training ones by construction: a sequence whose pair
//! section has a checksum divisible by 10 is held out, and training never draws one.

use crate::dataset::{Split, TokenBatch};
use crate::tokenizer::{CharTokenizer, Tokenizer};

/// The query marker.
pub const QUERY: char = '?';

/// The recall task's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallTask {
    /// Key-value pairs per sequence (and queries: each key is asked once).
    pub n_pairs: usize,
    /// Distinct keys, the letters `a`, `b`, …
    pub n_keys: usize,
    /// Distinct values, the digits `0`, `1`, …
    pub n_values: usize,
}

impl Default for RecallTask {
    /// 6 pairs over 16 keys and 10 values: 29 input positions, 27 tokens.
    fn default() -> Self {
        Self { n_pairs: 6, n_keys: 16, n_values: 10 }
    }
}

impl RecallTask {
    /// Checks the shape: keys are letters (at most 26), values digits (at most 10), and a
    /// sequence needs as many distinct keys as pairs.
    pub fn validate(&self) -> Result<(), crate::DataError> {
        let bad = |m: String| Err(crate::DataError::Invalid(m));
        if self.n_keys == 0 || self.n_keys > 26 {
            return bad(format!("recall: n_keys must be in 1..=26, got {}", self.n_keys));
        }
        if self.n_values == 0 || self.n_values > 10 {
            return bad(format!("recall: n_values must be in 1..=10, got {}", self.n_values));
        }
        if self.n_pairs == 0 || self.n_pairs > self.n_keys {
            return bad(format!("recall: n_pairs must be in 1..=n_keys ({}), got {}", self.n_keys, self.n_pairs));
        }
        Ok(())
    }

    /// The vocabulary: digits, `?`, letters (sorted by code point).
    pub fn tokenizer(&self) -> Tokenizer {
        let digits = (0..self.n_values as u8).map(|v| char::from(b'0' + v));
        let letters = (0..self.n_keys as u8).map(|k| char::from(b'a' + k));
        Tokenizer::Char(CharTokenizer::from_chars(digits.chain([QUERY]).chain(letters)))
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.n_values + 1 + self.n_keys
    }

    /// The full length of one sequence (`2·n_pairs + 3·n_pairs`); the model sees one less.
    pub fn sequence_len(&self) -> usize {
        5 * self.n_pairs
    }

    /// Input positions per example.
    pub fn block_size(&self) -> usize {
        self.sequence_len() - 1
    }

    /// One example's text, drawn with `below` and kept only if it belongs to `split`.
    pub fn example(&self, split: Split, below: &mut dyn FnMut(usize) -> usize) -> String {
        loop {
            let (text, checksum) = self.draw(below);
            if (checksum % 10 == 0) == (split == Split::Val) {
                return text;
            }
        }
    }

    fn draw(&self, below: &mut dyn FnMut(usize) -> usize) -> (String, usize) {
        // A random subset of keys in random order (partial Fisher-Yates).
        let mut keys: Vec<usize> = (0..self.n_keys).collect();
        for i in 0..self.n_pairs {
            let j = i + below(self.n_keys - i);
            keys.swap(i, j);
        }
        let keys = &keys[..self.n_pairs];
        let values: Vec<usize> = (0..self.n_pairs).map(|_| below(self.n_values)).collect();
        let key_char = |k: usize| char::from(b'a' + k as u8);
        let value_char = |v: usize| char::from(b'0' + v as u8);
        let mut text = String::with_capacity(self.sequence_len());
        let mut checksum = 0;
        for (i, (&k, &v)) in keys.iter().zip(&values).enumerate() {
            text.push(key_char(k));
            text.push(value_char(v));
            checksum += (i + 1) * (k * self.n_values + v + 1);
        }
        let mut order: Vec<usize> = (0..self.n_pairs).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, below(i + 1));
        }
        for i in order {
            text.push(QUERY);
            text.push(key_char(keys[i]));
            text.push(value_char(values[i]));
        }
        (text, checksum)
    }

    /// A batch: inputs are a sequence without its last token, targets the next tokens, with
    /// every target [`IGNORE`](crate::IGNORE)d except the answers to queries.
    pub fn batch(&self, split: Split, batch: usize, below: &mut dyn FnMut(usize) -> usize) -> TokenBatch {
        let tokenizer = self.tokenizer();
        let seq = self.block_size();
        let mut inputs = Vec::with_capacity(batch * seq);
        let mut targets = Vec::with_capacity(batch * seq);
        for _ in 0..batch {
            let text = self.example(split, below);
            let ids = tokenizer.encode(&text).expect("recall text uses its own vocabulary");
            let query_id = tokenizer.encode("?").expect("? is in the vocabulary")[0];
            for t in 0..seq {
                inputs.push(ids[t] as i64);
                // Position t holds a queried key when the token before it is '?'.
                let is_answer = t >= 1 && ids[t - 1] == query_id;
                targets.push(if is_answer { ids[t + 1] as i64 } else { crate::IGNORE });
            }
        }
        TokenBatch { batch, seq, inputs, targets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(seed: u64) -> impl FnMut(usize) -> usize {
        let mut state = seed;
        move |n| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % n
        }
    }

    #[test]
    fn examples_are_well_formed() {
        let task = RecallTask::default();
        let mut below = counter(1);
        for split in [Split::Train, Split::Val] {
            for _ in 0..50 {
                let text = task.example(split, &mut below);
                assert_eq!(text.len(), 30);
                let chars: Vec<char> = text.chars().collect();
                let pairs: Vec<(char, char)> = (0..6).map(|i| (chars[2 * i], chars[2 * i + 1])).collect();
                let mut keys: Vec<char> = pairs.iter().map(|p| p.0).collect();
                keys.sort();
                keys.dedup();
                assert_eq!(keys.len(), 6, "distinct keys in {text}");
                for q in 0..6 {
                    let (mark, key, value) = (chars[12 + 3 * q], chars[13 + 3 * q], chars[14 + 3 * q]);
                    assert_eq!(mark, '?');
                    assert_eq!(pairs.iter().find(|p| p.0 == key).unwrap().1, value, "{text}");
                }
            }
        }
    }

    #[test]
    fn only_answers_carry_loss() {
        let task = RecallTask::default();
        let b = task.batch(Split::Train, 4, &mut counter(2));
        assert_eq!((b.batch, b.seq), (4, 29));
        for row in 0..4 {
            let answers: Vec<usize> =
                (0..29).filter(|&t| b.targets[row * 29 + t] != crate::IGNORE).collect();
            assert_eq!(answers, vec![13, 16, 19, 22, 25, 28]);
        }
        assert_eq!(task.tokenizer().vocab_size(), task.vocab_size());
    }

    #[test]
    fn held_out_never_appears_in_training() {
        let task = RecallTask::default();
        let is_held_out = |text: &str| {
            let c: Vec<usize> = text.bytes().collect::<Vec<_>>().chunks(2).take(6).enumerate()
                .map(|(i, p)| (i + 1) * ((p[0] - b'a') as usize * 10 + (p[1] - b'0') as usize + 1))
                .collect();
            c.iter().sum::<usize>() % 10 == 0
        };
        let mut below = counter(3);
        for _ in 0..300 {
            assert!(!is_held_out(&task.example(Split::Train, &mut below)));
            assert!(is_held_out(&task.example(Split::Val, &mut below)));
        }
    }

    #[test]
    fn bad_shapes_are_named() {
        let bad = RecallTask { n_pairs: 7, n_keys: 6, n_values: 10 };
        assert!(bad.validate().unwrap_err().to_string().contains("n_pairs"));
        assert!(RecallTask { n_keys: 27, ..Default::default() }.validate().is_err());
    }
}
