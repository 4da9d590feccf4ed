//! A token stream split into train and validation, batched as random windows.

use std::path::Path;

use crate::error::DataError;
use crate::tokenizer::Tokenizer;

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The first 90% (what the model learns from).
    Train,
    /// The last 10% (what it is measured on).
    Val,
}

/// A batch of token windows for next-token training.
///
/// `inputs` and `targets` are `[batch, seq]`, row-major. A target equal to
/// [`IGNORE`](crate::IGNORE) carries no loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Sequences in the batch.
    pub batch: usize,
    /// Positions per sequence.
    pub seq: usize,
    /// Token ids, `[batch, seq]`.
    pub inputs: Vec<i64>,
    /// The token each position should predict, `[batch, seq]`.
    pub targets: Vec<i64>,
}

/// A tokenized text, split 90/10 into train and validation by position (nanoGPT's split:
/// the validation text is the last tenth of the file).
#[derive(Debug, Clone)]
pub struct TextDataset {
    /// The tokenizer the ids come from.
    pub tokenizer: Tokenizer,
    /// Training ids.
    pub train: Vec<u32>,
    /// Validation ids.
    pub val: Vec<u32>,
}

impl TextDataset {
    /// Reads `path` as UTF-8 text and tokenizes it with a character vocabulary built from it.
    pub fn char_level_from_file(path: &Path) -> Result<Self, DataError> {
        let text = read_text(path)?;
        let tokenizer = Tokenizer::Char(crate::tokenizer::CharTokenizer::from_text(&text));
        Self::from_text(&text, tokenizer)
    }

    /// Tokenizes `text` and splits it.
    pub fn from_text(text: &str, tokenizer: Tokenizer) -> Result<Self, DataError> {
        let ids = tokenizer.encode(text)?;
        let cut = ids.len() * 9 / 10;
        Ok(Self {
            tokenizer,
            train: ids[..cut].to_vec(),
            val: ids[cut..].to_vec(),
        })
    }

    /// Checks that both splits hold at least one window of `block_size + 1` tokens.
    pub fn check_block_size(&self, block_size: usize) -> Result<(), DataError> {
        for (split, ids) in [("train", &self.train), ("validation", &self.val)] {
            if ids.len() < block_size + 1 {
                return Err(DataError::TooShort {
                    split,
                    tokens: ids.len(),
                    needed: block_size + 1,
                });
            }
        }
        Ok(())
    }

    /// `batch` windows of `block_size` tokens at random offsets drawn by `below(n)` (a
    /// uniform integer in `0..n`), each with its next-token targets.
    ///
    /// # Panics
    /// If the split is shorter than `block_size + 1` (see
    /// [`check_block_size`](Self::check_block_size)).
    pub fn batch(
        &self,
        split: Split,
        batch: usize,
        block_size: usize,
        below: &mut dyn FnMut(usize) -> usize,
    ) -> TokenBatch {
        let ids = match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        };
        assert!(
            ids.len() > block_size,
            "split shorter than one window; call check_block_size first"
        );
        let mut inputs = Vec::with_capacity(batch * block_size);
        let mut targets = Vec::with_capacity(batch * block_size);
        for _ in 0..batch {
            let start = below(ids.len() - block_size);
            inputs.extend(ids[start..start + block_size].iter().map(|&t| t as i64));
            targets.extend(
                ids[start + 1..start + block_size + 1]
                    .iter()
                    .map(|&t| t as i64),
            );
        }
        TokenBatch {
            batch,
            seq: block_size,
            inputs,
            targets,
        }
    }
}

/// Reads a UTF-8 text file, with an error that says what is wrong with it.
pub fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.into(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.into(),
            needed: 2,
        });
    }
    String::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        path: path.into(),
        offset: e.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::CharTokenizer;

    fn dataset() -> TextDataset {
        let text: String = (0..100)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        TextDataset::from_text(&text, Tokenizer::Char(CharTokenizer::from_text(&text))).unwrap()
    }

    #[test]
    fn splits_ninety_ten_in_order() {
        let d = dataset();
        assert_eq!((d.train.len(), d.val.len()), (90, 10));
        assert_eq!(d.tokenizer.decode(&d.val[..2]).unwrap(), "mn"); // characters 90 and 91
    }

    #[test]
    fn windows_and_targets_line_up() {
        let d = dataset();
        let mut offsets = [3usize, 40, 0].into_iter();
        let b = d.batch(Split::Train, 3, 5, &mut |_| offsets.next().unwrap());
        assert_eq!(b.inputs.len(), 15);
        assert_eq!(&b.inputs[..5], &[3, 4, 5, 6, 7]);
        assert_eq!(&b.targets[..5], &[4, 5, 6, 7, 8]);
        assert_eq!(&b.inputs[5..7], &[14, 15]); // offset 40: 'o' is 14
    }

    #[test]
    fn short_and_bad_files_are_named() {
        let d = dataset();
        let err = d.check_block_size(10).unwrap_err().to_string();
        assert!(
            err.contains("validation split has 10 tokens") && err.contains("11"),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("qkv-data-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, b"").unwrap();
        assert!(
            read_text(&empty)
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
        let binary = dir.join("binary.bin");
        std::fs::write(&binary, [b'o', b'k', 0xff, 0xfe]).unwrap();
        let err = read_text(&binary).unwrap_err().to_string();
        assert!(
            err.contains("not valid UTF-8") && err.contains("offset 2") && err.contains("bpe"),
            "{err}"
        );
        assert!(
            read_text(&dir.join("missing.txt"))
                .unwrap_err()
                .to_string()
                .contains("missing.txt")
        );
    }
}
