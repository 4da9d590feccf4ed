//! The complete, typed configuration of a training run, its presets, and its checks.

use std::path::PathBuf;

use qkv_data::RecallTask;
use qkv_transformer::{GptConfig, PositionalEncoding};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::optim::AdamWSettings;
use crate::precision::Precision;
use crate::schedule::WarmupCosine;
use crate::task::Recipe;

/// What the model learns from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataConfig {
    /// The built-in associative-recall task (offline, generated from the seed).
    Recall {
        /// Key-value pairs per sequence.
        n_pairs: usize,
        /// Distinct keys.
        n_keys: usize,
        /// Distinct values.
        n_values: usize,
        /// Filler tokens between the pairs and the queries.
        #[serde(default, skip_serializing_if = "is_zero")]
        gap: usize,
    },
    /// Tiny Shakespeare: from `path` when given, else from `$QKV_DATA_DIR`, the cache, or a
    /// verified download.
    Shakespeare {
        /// A local copy of the text.
        path: Option<PathBuf>,
        /// How the text becomes tokens.
        #[serde(default)]
        tokenizer: TokenizerChoice,
    },
    /// Any UTF-8 text file.
    TextFile {
        /// The file.
        path: PathBuf,
        /// How the text becomes tokens.
        #[serde(default)]
        tokenizer: TokenizerChoice,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Which tokenizer a text run builds from its corpus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenizerChoice {
    /// One token per character (nanoGPT's `shakespeare_char`).
    #[default]
    Char,
    /// Byte-level BPE trained on the corpus, with this many tokens.
    Bpe {
        /// Vocabulary size (at least 257).
        vocab_size: usize,
    },
}

impl DataConfig {
    /// The recall task this describes, if it is one.
    pub fn recall(&self) -> Option<RecallTask> {
        match *self {
            DataConfig::Recall {
                n_pairs,
                n_keys,
                n_values,
                gap,
            } => Some(RecallTask {
                n_pairs,
                n_keys,
                n_values,
                gap,
            }),
            _ => None,
        }
    }
}

/// Every setting of a run. `config.json` in the run directory holds it, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The model. `vocab_size` is set from the data's tokenizer.
    pub model: ModelSettings,
    /// The data.
    pub data: DataConfig,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one update.
    pub grad_accum: usize,
    /// Updates to run.
    pub max_iters: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Steps of linear warm-up.
    pub warmup_iters: usize,
    /// Step where the cosine reaches `min_lr`.
    pub lr_decay_iters: usize,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// Decoupled weight decay on matrices.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    pub grad_clip: f64,
    /// Evaluate (and checkpoint) every this many steps, and at the end.
    pub eval_interval: usize,
    /// Batches per evaluation.
    pub eval_iters: usize,
    /// Seed of batching, initialisation and dropout.
    pub seed: u64,
    /// Stop (after evaluating and saving) once this many seconds have passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_s: Option<f64>,
    /// The float type the forward and backward passes compute in (`--dtype`); the weights
    /// and AdamW stay f32. Absent from `config.json` when f32.
    #[serde(default, skip_serializing_if = "is_f32")]
    pub precision: Precision,
}

fn is_f32(p: &Precision) -> bool {
    *p == Precision::F32
}

/// The model half of a [`TrainConfig`]: a [`GptConfig`] without the vocabulary, which comes
/// from the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// Transformer blocks.
    pub n_layers: usize,
    /// Heads per block.
    pub n_heads: usize,
    /// Residual width.
    pub d_model: usize,
    /// Context length.
    pub block_size: usize,
    /// Dropout (training only).
    pub dropout: f64,
    /// Biases in linears and LayerNorms.
    pub bias: bool,
    /// How positions are encoded (learned, as in GPT-2, unless set).
    #[serde(default = "learned")]
    pub positional: PositionalEncoding,
}

fn learned() -> PositionalEncoding {
    PositionalEncoding::Learned
}

impl ModelSettings {
    /// The full model config for a vocabulary of `vocab_size`.
    pub fn gpt(&self, vocab_size: usize) -> GptConfig {
        GptConfig::new(
            vocab_size,
            self.block_size,
            self.n_layers,
            self.n_heads,
            self.d_model,
        )
        .with_dropout(self.dropout)
        .with_bias(self.bias)
        .with_positional(self.positional.clone())
    }
}

/// The named presets, for `--preset`.
pub const PRESETS: [&str; 2] = ["recall", "shakespeare-char"];

impl TrainConfig {
    /// The default run: associative recall with a 2-layer, 4-head, 64-wide model and learned
    /// positions, 2000 steps of batch 64 at lr 1e-3 (about 35 s on 2 CPU cores with the Flex backend). Accuracy
    /// jumps from chance to 100% around step 700, when the lookup circuit forms.
    pub fn recall() -> Self {
        let task = RecallTask::default();
        Self {
            model: ModelSettings {
                n_layers: 2,
                n_heads: 4,
                d_model: 64,
                block_size: task.block_size(),
                dropout: 0.0,
                bias: true,
                positional: PositionalEncoding::Learned,
            },
            data: DataConfig::Recall {
                n_pairs: task.n_pairs,
                n_keys: task.n_keys,
                n_values: task.n_values,
                gap: task.gap,
            },
            batch_size: 64,
            grad_accum: 1,
            max_iters: 2000,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_iters: 50,
            lr_decay_iters: 2000,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.1,
            grad_clip: 1.0,
            eval_interval: 250,
            eval_iters: 16,
            seed: 1337,
            time_limit_s: None,
            precision: Precision::F32,
        }
    }

    /// nanoGPT's `shakespeare_char` recipe for a CPU: 4/4/128, block 64, batch 12, AdamW lr
    /// 1e-3 with β 0.9/0.99 and weight decay 0.1, 100 warm-up steps, cosine to 1e-4 at 2000,
    /// clip 1.0, no dropout, evaluation every 250 steps on 20 batches.
    pub fn shakespeare_char() -> Self {
        Self {
            model: ModelSettings {
                n_layers: 4,
                n_heads: 4,
                d_model: 128,
                block_size: 64,
                dropout: 0.0,
                bias: false,
                positional: PositionalEncoding::Learned,
            },
            data: DataConfig::Shakespeare {
                path: None,
                tokenizer: TokenizerChoice::Char,
            },
            batch_size: 12,
            grad_accum: 1,
            max_iters: 2000,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_iters: 100,
            lr_decay_iters: 2000,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.1,
            grad_clip: 1.0,
            eval_interval: 250,
            eval_iters: 20,
            seed: 1337,
            time_limit_s: None,
            precision: Precision::F32,
        }
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Result<Self, TrainError> {
        match name {
            "recall" => Ok(Self::recall()),
            "shakespeare-char" | "shakespeare_char" => Ok(Self::shakespeare_char()),
            other => Err(TrainError::Config(format!(
                "unknown preset {other:?}; the presets are {}",
                PRESETS.join(", ")
            ))),
        }
    }

    /// Reads a config from JSON, rejecting unknown keys.
    pub fn from_json(json: &str) -> Result<Self, TrainError> {
        serde_json::from_str(json).map_err(|e| TrainError::Config(format!("config JSON: {e}")))
    }

    /// The loop's settings (AdamW's ε is PyTorch's default, 1e-8).
    pub fn recipe(&self) -> Recipe {
        let c = self;
        Recipe {
            max_iters: c.max_iters,
            grad_accum: c.grad_accum,
            schedule: WarmupCosine {
                lr: c.lr,
                min_lr: c.min_lr,
                warmup_iters: c.warmup_iters,
                decay_iters: c.lr_decay_iters,
            },
            adamw: AdamWSettings {
                beta1: c.beta1,
                beta2: c.beta2,
                eps: 1e-8,
                weight_decay: c.weight_decay,
            },
            grad_clip: c.grad_clip,
            eval_interval: c.eval_interval,
            seed: c.seed,
            time_limit_s: c.time_limit_s,
            precision: c.precision,
        }
    }

    /// Checks every value, naming the first that is wrong.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return bad("grad_accum must be at least 1".into());
        }
        self.recipe().validate()?;
        check_count("batch_size (--batch-size)", self.batch_size, MAX_BATCH)?;
        check_count("grad_accum (--grad-accum)", self.grad_accum, MAX_BATCH)?;
        check_count("eval_iters (--eval-iters)", self.eval_iters, MAX_BATCH)?;
        if self.eval_interval == 0 || self.eval_iters == 0 {
            return bad("eval_interval and eval_iters must be at least 1".into());
        }
        if let Some(task) = self.data.recall() {
            task.validate()?;
            if self.model.block_size < task.block_size() {
                return bad(format!(
                    "the recall task needs block_size >= {}, got {}",
                    task.block_size(),
                    self.model.block_size
                ));
            }
        }
        // The model's own checks (heads divide width, dropout range, ...).
        self.model.gpt(1).validate()?;
        Ok(())
    }
}

/// Most sequences in a batch, micro-batches in an update, or batches in an evaluation.
pub const MAX_BATCH: usize = 1 << 20;

/// Errors unless `value <= max`, naming the setting and the limit.
pub(crate) fn check_count(name: &str, value: usize, max: usize) -> Result<(), TrainError> {
    if value > max {
        return Err(TrainError::Config(format!(
            "{name} is {value}, above the limit of {max}"
        )));
    }
    Ok(())
}
