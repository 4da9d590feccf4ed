//! Associative recall, the built-in task of `cargo xtask train`: a sequence lists key-value
//! pairs, then asks for keys again; the model must answer each with its value. The answer
//! is only in the context, at the position of the matching pair, so the task cannot be done
//! without attention, and a trained model's attention map shows the query looking at it.
//!
//! ```text
//! c7 a2 k0 f5 b9 h3 ? a 2 ? h 3 ? c 7 ? k 0 ? b 9 ? f 5
//! ```
//! Each pair is one token (`a2`: key `a`, value `2`); each query is three (`?`, the key, then
//! the value to predict). Every answer carries loss; nothing else does. In attention terms:
//! the query token `a` *looks for* key `a` (its Query), each pair token *offers* its key
//! (its Key) and *gives* its value (its Value).
//!
//! Why pairs are single tokens: written as two adjacent tokens (`a 2`), the value must first
//! learn its key from the token before it, a two-layer "induction head" that, in our runs
//! (here and in PyTorch), sat at 50% accuracy for thousands of steps. As one token, a
//! 2-layer model reaches 100% in about 500 steps. Many queries per sequence, not one, give
//! the model many answers to learn from per example.
//!
//! Held-out examples are disjoint from training ones by construction: a sequence whose pair
//! section has a checksum divisible by 10 is held out, and training never draws one.

use crate::dataset::{Split, TokenBatch};
use crate::tokenizer::{Tokenizer, WordTokenizer};

/// The query marker.
pub const QUERY: &str = "?";

/// The filler between pairs and queries when [`RecallTask::gap`] is set.
pub const FILLER: &str = ".";

/// The longest gap a task can have.
pub const MAX_GAP: usize = 4096;

/// The recall task's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallTask {
    /// Key-value pairs per sequence (and queries: each key is asked once).
    pub n_pairs: usize,
    /// Distinct keys, the letters `a`, `b`, …
    pub n_keys: usize,
    /// Distinct values, the digits `0`, `1`, …
    pub n_values: usize,
    /// Filler tokens (`.`) between the pairs and the queries: every answer lies this much
    /// further back, while the lookup itself stays as hard (`cargo xtask compare`'s
    /// distance experiment). 0 adds nothing, not even the filler to the vocabulary.
    pub gap: usize,
}

impl Default for RecallTask {
    /// 6 pairs over 16 keys and 10 values: 23 input positions, 187 tokens.
    fn default() -> Self {
        Self {
            n_pairs: 6,
            n_keys: 16,
            n_values: 10,
            gap: 0,
        }
    }
}

impl RecallTask {
    /// Checks the shape: keys are letter names (at most [`MAX_KEYS`]), values digits (at most 10), and a
    /// sequence needs as many distinct keys as pairs.
    pub fn validate(&self) -> Result<(), crate::DataError> {
        let bad = |m: String| Err(crate::DataError::Invalid(m));
        if self.n_keys == 0 || self.n_keys > MAX_KEYS {
            return bad(format!(
                "recall: n_keys must be in 1..={MAX_KEYS}, got {}",
                self.n_keys
            ));
        }
        if self.n_values == 0 || self.n_values > 10 {
            return bad(format!(
                "recall: n_values must be in 1..=10, got {}",
                self.n_values
            ));
        }
        if self.gap > MAX_GAP {
            return bad(format!(
                "recall: gap must be at most {MAX_GAP}, got {}",
                self.gap
            ));
        }
        if self.n_pairs == 0 || self.n_pairs > self.n_keys {
            return bad(format!(
                "recall: n_pairs must be in 1..=n_keys ({}), got {}",
                self.n_keys, self.n_pairs
            ));
        }
        // Examples are drawn until one falls in the wanted split, so both splits must be
        // likely enough for that to end quickly: with one key and one value there is a
        // single example, which is never held out, and evaluation would loop forever.
        let (train, val) = self.split_shares();
        if train < MIN_SPLIT_SHARE || val < MIN_SPLIT_SHARE {
            return bad(format!(
                "recall: with {} keys, {} values and {} pairs, {:.1}% of examples are held out and {:.1}% train; each split needs at least {:.0}%. Use more keys or values",
                self.n_keys,
                self.n_values,
                self.n_pairs,
                val * 100.0,
                train * 100.0,
                MIN_SPLIT_SHARE * 100.0
            ));
        }
        Ok(())
    }

    /// The shares of (training, held-out) examples, estimated from a fixed sample of
    /// [`SPLIT_SAMPLE`] draws (deterministic: the same answer every time).
    pub fn split_shares(&self) -> (f64, f64) {
        let mut rng = qkv_rng::SplitMix64::new(0x5b1f);
        let mut below = |n: usize| rng.below(n);
        let val = (0..SPLIT_SAMPLE)
            .filter(|_| self.draw(&mut below).1.is_multiple_of(10))
            .count();
        let val = val as f64 / SPLIT_SAMPLE as f64;
        (1.0 - val, val)
    }

    /// The vocabulary: values (`0`…), `?`, keys (`a`…), then every pair token (`a0`, `a1`, …).
    pub fn tokenizer(&self) -> Tokenizer {
        let values = (0..self.n_values).map(value_name);
        let keys = (0..self.n_keys).map(key_name);
        let pairs = (0..self.n_keys).flat_map(|k| {
            (0..self.n_values).map(move |v| format!("{}{}", key_name(k), value_name(v)))
        });
        let filler = (self.gap > 0).then(|| FILLER.to_string());
        let tokens = values
            .chain([QUERY.to_string()])
            .chain(keys)
            .chain(pairs)
            .chain(filler)
            .collect();
        Tokenizer::Words(WordTokenizer::new(tokens))
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.n_values + 1 + self.n_keys + self.n_keys * self.n_values + (self.gap > 0) as usize
    }

    /// The full length of one sequence (`n_pairs` pairs, the gap, `3·n_pairs` query tokens); the
    /// model sees one less.
    pub fn sequence_len(&self) -> usize {
        4 * self.n_pairs + self.gap
    }

    /// Input positions per example.
    pub fn block_size(&self) -> usize {
        self.sequence_len() - 1
    }

    /// Token ids of one example, drawn with `below` and kept only if it belongs to `split`.
    pub fn example_ids(&self, split: Split, below: &mut dyn FnMut(usize) -> usize) -> Vec<u32> {
        loop {
            let (ids, checksum) = self.draw(below);
            if (checksum % 10 == 0) == (split == Split::Val) {
                return ids;
            }
        }
    }

    /// One example as text (tokens separated by spaces).
    pub fn example(&self, split: Split, below: &mut dyn FnMut(usize) -> usize) -> String {
        let ids = self.example_ids(split, below);
        self.tokenizer().decode(&ids).expect("recall ids decode")
    }

    fn draw(&self, below: &mut dyn FnMut(usize) -> usize) -> (Vec<u32>, usize) {
        // A random subset of keys in random order (partial Fisher-Yates).
        let mut keys: Vec<usize> = (0..self.n_keys).collect();
        for i in 0..self.n_pairs {
            let j = i + below(self.n_keys - i);
            keys.swap(i, j);
        }
        let keys = &keys[..self.n_pairs];
        let values: Vec<usize> = (0..self.n_pairs).map(|_| below(self.n_values)).collect();
        let query = self.n_values as u32;
        let key_id = |k: usize| (self.n_values + 1 + k) as u32;
        let pair_id =
            |k: usize, v: usize| (self.n_values + 1 + self.n_keys + k * self.n_values + v) as u32;
        let mut ids = Vec::with_capacity(self.sequence_len());
        let mut checksum = 0;
        for (i, (&k, &v)) in keys.iter().zip(&values).enumerate() {
            ids.push(pair_id(k, v));
            checksum += (i + 1) * (k * self.n_values + v + 1);
        }
        let filler = (self.n_values + 1 + self.n_keys + self.n_keys * self.n_values) as u32;
        ids.extend(std::iter::repeat_n(filler, self.gap));
        let mut order: Vec<usize> = (0..self.n_pairs).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, below(i + 1));
        }
        for i in order {
            ids.extend([query, key_id(keys[i]), values[i] as u32]);
        }
        (ids, checksum)
    }

    /// A batch: inputs are a sequence without its last token, targets the next tokens, with
    /// every target [`IGNORE`](crate::IGNORE)d except the answers to queries.
    pub fn batch(
        &self,
        split: Split,
        batch: usize,
        below: &mut dyn FnMut(usize) -> usize,
    ) -> TokenBatch {
        let seq = self.block_size();
        let query = self.n_values as u32;
        let mut inputs = Vec::with_capacity(batch * seq);
        let mut targets = Vec::with_capacity(batch * seq);
        for _ in 0..batch {
            let ids = self.example_ids(split, below);
            for t in 0..seq {
                inputs.push(ids[t] as i64);
                // Position t holds a queried key when the token before it is '?'.
                let is_answer = t >= 1 && ids[t - 1] == query;
                targets.push(if is_answer {
                    ids[t + 1] as i64
                } else {
                    crate::IGNORE
                });
            }
        }
        TokenBatch {
            batch,
            seq,
            inputs,
            targets,
        }
    }
}

impl RecallTask {
    /// For each input position of one example (`inputs`: a row of a [`batch`](Self::batch)),
    /// the distance in tokens from the pair that holds the answer to the position that must
    /// give it, or `None` where nothing is asked. The recall distance of
    /// `cargo xtask compare`.
    pub fn answer_distances(&self, inputs: &[i64]) -> Vec<Option<usize>> {
        let query = self.n_values as i64;
        let first_pair = (self.n_values + 1 + self.n_keys) as i64;
        let key_of_pair = |id: i64| (id - first_pair) as usize / self.n_values;
        let pair_at = |key: usize| {
            inputs
                .iter()
                .take(self.n_pairs)
                .position(|&id| id >= first_pair && key_of_pair(id) == key)
        };
        (0..inputs.len())
            .map(|t| {
                if t == 0 || inputs[t - 1] != query {
                    return None;
                }
                let key = (inputs[t] - self.n_values as i64 - 1) as usize;
                pair_at(key).map(|p| t - p)
            })
            .collect()
    }
}

/// Draws [`RecallTask::split_shares`] estimates from.
pub const SPLIT_SAMPLE: usize = 4000;

/// The least share of examples each split must have, so that drawing an example of a split
/// takes at most about 1 / 0.02 = 50 tries on average.
pub const MIN_SPLIT_SHARE: f64 = 0.02;

/// Most keys a task can have: `a` … `z`, then the two-letter names `aa` … `dx`.
pub const MAX_KEYS: usize = 128;

/// The name of key `k`: a letter for the first 26, two letters after (`aa`, `ab`, …), so
/// that long recall sequences (the distance experiments of `cargo xtask compare`) have
/// enough distinct keys.
fn key_name(k: usize) -> String {
    let letter = |i: usize| char::from(b'a' + i as u8);
    if k < 26 {
        letter(k).to_string()
    } else {
        let j = k - 26;
        format!("{}{}", letter(j / 26), letter(j % 26))
    }
}

fn value_name(v: usize) -> String {
    char::from(b'0' + v as u8).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(seed: u64) -> impl FnMut(usize) -> usize {
        let mut state = seed;
        move |n| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % n
        }
    }

    #[test]
    fn configs_whose_splits_cannot_both_be_drawn_are_rejected() {
        let one = RecallTask {
            n_pairs: 1,
            n_keys: 1,
            n_values: 1,
            gap: 0,
        };
        let err = one.validate().unwrap_err().to_string();
        assert!(err.contains("0.0% of examples are held out"), "{err}");
        assert!(RecallTask::default().validate().is_ok());
        let (_, val) = RecallTask::default().split_shares();
        assert!((0.07..0.13).contains(&val), "about a tenth held out: {val}");
        // Every small config that validation accepts draws examples of both splits (each
        // draw is in a split with probability at least 2%, so 2000 tries cannot all miss).
        let mut accepted = 0;
        for n_keys in 1..=4 {
            for n_values in 1..=4 {
                for n_pairs in 1..=n_keys {
                    let task = RecallTask {
                        n_pairs,
                        n_keys,
                        n_values,
                        gap: 0,
                    };
                    if task.validate().is_err() {
                        continue;
                    }
                    accepted += 1;
                    let mut below = counter(n_keys as u64 * 100 + n_values as u64);
                    for split in [Split::Train, Split::Val] {
                        let found = (0..2000).any(|_| {
                            let (_, checksum) = task.draw(&mut below);
                            (checksum % 10 == 0) == (split == Split::Val)
                        });
                        assert!(found, "{task:?}: no {split:?} example in 2000 draws");
                    }
                }
            }
        }
        assert!(accepted >= 5, "only {accepted} small configs accepted");
    }

    #[test]
    fn keys_beyond_z_have_distinct_two_letter_names() {
        let names: Vec<String> = (0..MAX_KEYS).map(key_name).collect();
        assert_eq!((names[25].as_str(), names[26].as_str()), ("z", "aa"));
        assert_eq!(names[MAX_KEYS - 1], "dx");
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), MAX_KEYS);
        let task = RecallTask {
            n_pairs: 64,
            n_keys: 64,
            n_values: 10,
            gap: 0,
        };
        assert!(task.validate().is_ok());
        let text = task.example(Split::Train, &mut counter(3));
        assert_eq!(text.split(' ').count(), 4 * 64);
        assert_eq!(task.tokenizer().vocab_size(), task.vocab_size());
        let too_many = RecallTask {
            n_keys: MAX_KEYS + 1,
            ..task
        };
        assert!(
            too_many
                .validate()
                .unwrap_err()
                .to_string()
                .contains("n_keys")
        );
    }

    #[test]
    fn answer_distances_point_at_the_pair() {
        for gap in [0, 5] {
            let task = RecallTask {
                gap,
                ..RecallTask::default()
            };
            assert_eq!(task.tokenizer().vocab_size(), task.vocab_size());
            answer_distances_hold(task);
        }
    }

    fn answer_distances_hold(task: RecallTask) {
        let batch = task.batch(Split::Train, 4, &mut counter(7));
        let tokenizer = task.tokenizer();
        for row in 0..4 {
            let inputs = &batch.inputs[row * batch.seq..(row + 1) * batch.seq];
            let targets = &batch.targets[row * batch.seq..(row + 1) * batch.seq];
            let distances = task.answer_distances(inputs);
            let words: Vec<String> = inputs
                .iter()
                .map(|&id| tokenizer.decode(&[id as u32]).unwrap())
                .collect();
            for (t, d) in distances.iter().enumerate() {
                assert_eq!(d.is_some(), targets[t] != crate::IGNORE, "position {t}");
                if let Some(d) = d {
                    assert!(*d > task.gap + 1, "distance {d} spans the gap {}", task.gap);
                    // The pair d tokens back is the queried key with the answer's value.
                    let pair = &words[t - d];
                    let value = tokenizer.decode(&[targets[t] as u32]).unwrap();
                    assert_eq!(*pair, format!("{}{}", words[t], value), "{words:?}");
                }
            }
        }
    }

    #[test]
    fn examples_are_well_formed() {
        let task = RecallTask::default();
        let mut below = counter(1);
        for split in [Split::Train, Split::Val] {
            for _ in 0..50 {
                let text = task.example(split, &mut below);
                let tokens: Vec<&str> = text.split(' ').collect();
                assert_eq!(tokens.len(), 24, "{text}");
                let pairs: Vec<(char, char)> = tokens[..6]
                    .iter()
                    .map(|p| (p.chars().next().unwrap(), p.chars().nth(1).unwrap()))
                    .collect();
                let mut keys: Vec<char> = pairs.iter().map(|p| p.0).collect();
                keys.sort();
                keys.dedup();
                assert_eq!(keys.len(), 6, "distinct keys in {text}");
                for q in 0..6 {
                    let (mark, key, value) =
                        (tokens[6 + 3 * q], tokens[7 + 3 * q], tokens[8 + 3 * q]);
                    assert_eq!(mark, "?");
                    let want = pairs.iter().find(|p| p.0.to_string() == key).unwrap().1;
                    assert_eq!(value, want.to_string(), "{text}");
                }
                assert_eq!(task.tokenizer().encode(&text).unwrap().len(), 24);
            }
        }
    }

    #[test]
    fn only_answers_carry_loss() {
        let task = RecallTask::default();
        let b = task.batch(Split::Train, 4, &mut counter(2));
        assert_eq!((b.batch, b.seq), (4, 23));
        for row in 0..4 {
            let answers: Vec<usize> = (0..23)
                .filter(|&t| b.targets[row * 23 + t] != crate::IGNORE)
                .collect();
            assert_eq!(answers, vec![7, 10, 13, 16, 19, 22]);
            for &t in &answers {
                assert!(b.targets[row * 23 + t] < 10, "answers are values");
            }
        }
        assert_eq!(task.tokenizer().vocab_size(), task.vocab_size());
    }

    #[test]
    fn held_out_never_appears_in_training() {
        let task = RecallTask::default();
        let is_held_out = |text: &str| {
            let sum: usize = text
                .split(' ')
                .take(6)
                .enumerate()
                .map(|(i, p)| {
                    let b = p.as_bytes();
                    (i + 1) * ((b[0] - b'a') as usize * 10 + (b[1] - b'0') as usize + 1)
                })
                .sum();
            sum.is_multiple_of(10)
        };
        let mut below = counter(3);
        for _ in 0..300 {
            assert!(!is_held_out(&task.example(Split::Train, &mut below)));
            assert!(is_held_out(&task.example(Split::Val, &mut below)));
        }
    }

    #[test]
    fn bad_shapes_are_named() {
        let bad = RecallTask {
            n_pairs: 7,
            n_keys: 6,
            n_values: 10,
            gap: 0,
        };
        assert!(bad.validate().unwrap_err().to_string().contains("n_pairs"));
        assert!(
            RecallTask {
                n_keys: MAX_KEYS + 1,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        let long = RecallTask {
            gap: MAX_GAP + 1,
            ..Default::default()
        };
        assert!(long.validate().unwrap_err().to_string().contains("gap"));
    }
}
