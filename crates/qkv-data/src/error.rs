//! Errors of the data crate.

use std::path::PathBuf;

/// What can go wrong reading, fetching, tokenizing or batching data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data file holds nothing.
    #[error("{path} is empty; give a text file with at least {needed} tokens")]
    Empty {
        /// The file.
        path: PathBuf,
        /// Tokens needed.
        needed: usize,
    },
    /// Too little data for one training window.
    #[error(
        "the {split} split has {tokens} tokens, but one training window needs block_size + 1 = {needed}; use a longer text or a smaller --block-size"
    )]
    TooShort {
        /// Which split.
        split: &'static str,
        /// Tokens it has.
        tokens: usize,
        /// Tokens a window needs.
        needed: usize,
    },
    /// The file is not UTF-8 text.
    #[error(
        "{path} is not valid UTF-8 text (first bad byte at offset {offset}); the character tokenizer reads text only: convert the file to UTF-8, or use --tokenizer bpe, which works on bytes"
    )]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// Text holds a character the tokenizer has never seen.
    #[error("the character {0:?} is not in this model's vocabulary")]
    UnknownCharacter(char),
    /// A word outside a fixed vocabulary.
    #[error("the word {0:?} is not in this model's vocabulary")]
    UnknownWord(String),
    /// A token id the tokenizer cannot decode.
    #[error("token id {0} is not in this tokenizer's vocabulary")]
    UnknownToken(u32),
    /// A download's SHA-256 did not match.
    #[error(
        "{url}: checksum mismatch (expected SHA-256 {expected}, got {actual}); the download was discarded and nothing was cached"
    )]
    Checksum {
        /// Where it came from.
        url: String,
        /// The published digest.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The download failed (offline, or the server said no).
    #[error(
        "could not download {name} from {url} ({reason}). If this machine is offline, pass --data FILE with a local copy, or set {env_var} to a directory holding {file_name}"
    )]
    Download {
        /// The dataset.
        name: String,
        /// Where it was fetched from.
        url: String,
        /// What went wrong.
        reason: String,
        /// The environment variable naming a local data directory.
        env_var: &'static str,
        /// The file name expected in that directory.
        file_name: String,
    },
    /// A Hugging Face Hub file could not be had.
    #[error("{repo} (revision {revision}), {file}: {reason}")]
    Hub {
        /// The repository id.
        repo: String,
        /// The branch, tag or commit.
        revision: String,
        /// The file in the repository.
        file: String,
        /// What went wrong and what to do.
        reason: String,
    },
    /// A tokenizer file or training problem.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A parameter out of range.
    #[error("{0}")]
    Invalid(String),
}
