//! Where a run's batches come from: the recall task or a character-level text.

use std::path::Path;

use qkv_data::{RecallTask, Split, TextDataset, TokenBatch, Tokenizer};

use crate::config::{DataConfig, TokenizerChoice, TrainConfig};
use crate::error::TrainError;

/// A run's data, ready to batch.
#[derive(Debug, Clone)]
pub enum BatchSource {
    /// Generated recall examples.
    Recall(RecallTask),
    /// A tokenized text.
    Text(Box<TextDataset>),
}

impl BatchSource {
    /// Opens the data a config names. `cache_dir` is where downloads are kept. A text is
    /// tokenized with `tokenizer` when given (a run's saved `tokenizer.json`, so that a
    /// finished run is evaluated with the vocabulary it was trained with), else with one
    /// built from the text.
    pub fn open(
        config: &TrainConfig,
        cache_dir: &Path,
        tokenizer: Option<Tokenizer>,
    ) -> Result<Self, TrainError> {
        let saved = tokenizer;
        let source = match &config.data {
            DataConfig::Recall { .. } => {
                BatchSource::Recall(config.data.recall().expect("recall config"))
            }
            DataConfig::Shakespeare { path, tokenizer } => {
                let file = qkv_data::tiny_shakespeare(path.as_deref(), cache_dir)?;
                BatchSource::Text(Box::new(text_dataset(&file, *tokenizer, saved)?))
            }
            DataConfig::TextFile { path, tokenizer } => {
                BatchSource::Text(Box::new(text_dataset(path, *tokenizer, saved)?))
            }
        };
        if let BatchSource::Text(text) = &source {
            text.check_block_size(config.model.block_size)?;
        }
        Ok(source)
    }

    /// The tokenizer to save beside the run.
    pub fn tokenizer(&self) -> Tokenizer {
        match self {
            BatchSource::Recall(task) => task.tokenizer(),
            BatchSource::Text(text) => text.tokenizer.clone(),
        }
    }

    /// A batch of `batch` sequences, drawn with `below`.
    pub fn batch(
        &self,
        split: Split,
        batch: usize,
        block_size: usize,
        below: &mut dyn FnMut(usize) -> usize,
    ) -> TokenBatch {
        match self {
            BatchSource::Recall(task) => task.batch(split, batch, below),
            BatchSource::Text(text) => text.batch(split, batch, block_size, below),
        }
    }
}

/// Reads and tokenizes a text file with `saved`, or the chosen tokenizer built from the text
/// itself.
fn text_dataset(
    path: &Path,
    choice: TokenizerChoice,
    saved: Option<Tokenizer>,
) -> Result<TextDataset, TrainError> {
    let text = qkv_data::read_text(path)?;
    if let Some(tokenizer) = saved {
        return Ok(TextDataset::from_text(&text, tokenizer)?);
    }
    let tokenizer = match choice {
        TokenizerChoice::Char => Tokenizer::Char(qkv_data::CharTokenizer::from_text(&text)),
        TokenizerChoice::Bpe { vocab_size } => {
            Tokenizer::Bpe(Box::new(qkv_data::BpeTokenizer::train(&text, vocab_size)?))
        }
    };
    Ok(TextDataset::from_text(&text, tokenizer)?)
}
