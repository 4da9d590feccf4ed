//! The flags of `cargo xtask train` and how they resolve to a task's config: the preset or
//! `--config` file first, then each flag given, with [`TASK_ONLY`] naming the flags that
//! belong to one task.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use qkv_backends::Backend;
use qkv_data::TranslationTask;
use qkv_trainer::translate::TranslateConfig;
use qkv_trainer::{DataConfig, Precision, Start, TokenizerChoice, TrainConfig};

/// `--task` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskFlag {
    /// A GPT language model (the recall task, Shakespeare, or any text).
    Lm,
    /// The encoder–decoder on a built-in translation task.
    Translate,
}

/// `--tokenizer` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TokenizerFlag {
    /// One token per character.
    Char,
    /// Byte-level BPE trained on the corpus.
    Bpe,
}

/// Options of `cargo xtask train`. Flags override the preset, the `--config` file or, with
/// `--resume`, the run's own saved config.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// What to train: `lm` (a GPT language model) or `translate` (the encoder–decoder on a
    /// built-in translation task).
    #[arg(long, value_enum, default_value = "lm")]
    pub(super) task: TaskFlag,
    /// With `--task translate`: `numbers` (number words to digits, the default) or `dates`
    /// (English dates to ISO dates).
    #[arg(long)]
    translation: Option<String>,
    /// With `--task translate`: label smoothing of the loss.
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// With `--task translate`: held-out sentences per evaluation.
    #[arg(long)]
    eval_sentences: Option<usize>,
    /// Stop (after evaluating and saving) after this many seconds.
    #[arg(long)]
    time_limit: Option<f64>,
    /// Named recipe: `recall` (default, offline) or `shakespeare-char`.
    #[arg(long)]
    preset: Option<String>,
    /// A JSON config file (as written to `config.json` by a run) instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to compute: flex, ndarray, wgpu (vulkan, cuda in builds with them).
    #[arg(long, default_value = "flex")]
    pub(super) backend: Backend,
    /// Train data-parallel on several devices, comma-separated: indices of the backend's
    /// devices (`0,1`; the CPU backends have device 0 only, which may repeat: `0,0` runs two
    /// workers on it), `default` (the wgpu adapter), or remote devices served by
    /// `cargo xtask serve-device` (`ws://host:port`, `ws://host:port/1`). Every batch is cut
    /// across them; the first holds the model, the optimizer and the evaluations. Batch size,
    /// schedule, checkpoints and resume are those of one device.
    #[arg(long)]
    pub(super) devices: Option<String>,
    /// The run directory (default `runs/<preset>` or `runs/translate-<task>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in `--out` exactly where its last checkpoint stopped (its
    /// saved config is the base that flags override).
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start a new run in `--out` even if it holds one, replacing it.
    #[arg(long)]
    overwrite: bool,
    /// A local text file: for `shakespeare-char` a copy of Tiny Shakespeare, otherwise any
    /// UTF-8 text to train on at the character level.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Tokenizer for text data: `char`, or `bpe` (byte-level BPE trained on the corpus).
    #[arg(long, value_enum)]
    tokenizer: Option<TokenizerFlag>,
    /// Vocabulary size of `--tokenizer bpe`.
    #[arg(long)]
    bpe_vocab: Option<usize>,
    /// Where downloaded datasets are cached.
    #[arg(long, default_value = "data")]
    pub(super) cache_dir: PathBuf,
    /// Updates to run.
    #[arg(long)]
    max_iters: Option<usize>,
    /// Sequences (or sentence pairs) per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per update.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Final learning rate.
    #[arg(long)]
    min_lr: Option<f64>,
    /// Warm-up steps.
    #[arg(long)]
    warmup_iters: Option<usize>,
    /// Step where the cosine ends.
    #[arg(long)]
    lr_decay_iters: Option<usize>,
    /// AdamW weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip (0 = off).
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Evaluate and checkpoint every N steps.
    #[arg(long)]
    eval_interval: Option<usize>,
    /// Batches per evaluation.
    #[arg(long)]
    eval_iters: Option<usize>,
    /// Transformer blocks (per stack, for translation).
    #[arg(long)]
    n_layers: Option<usize>,
    /// Heads per block.
    #[arg(long)]
    n_heads: Option<usize>,
    /// Model width.
    #[arg(long)]
    d_model: Option<usize>,
    /// Context length.
    #[arg(long)]
    block_size: Option<usize>,
    /// Dropout.
    #[arg(long)]
    dropout: Option<f64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// The float type of the forward and backward passes: `f32` (default), `f16` (with a
    /// dynamic loss scale) or `bf16`. Weights, gradients and AdamW stay f32; LayerNorm, the
    /// attention softmax and the loss compute in f32. Meant for GPUs; one device only.
    #[arg(long)]
    dtype: Option<Precision>,
}

/// Whether a flag was given on the command line.
type Given = fn(&TrainArgs) -> bool;

/// Flags that only one task takes: the flag, its task, and whether it was given.
pub const TASK_ONLY: [(&str, TaskFlag, Given); 13] = [
    ("--translation", TaskFlag::Translate, |a| {
        a.translation.is_some()
    }),
    ("--label-smoothing", TaskFlag::Translate, |a| {
        a.label_smoothing.is_some()
    }),
    ("--eval-sentences", TaskFlag::Translate, |a| {
        a.eval_sentences.is_some()
    }),
    ("--preset", TaskFlag::Lm, |a| a.preset.is_some()),
    ("--config", TaskFlag::Lm, |a| a.config.is_some()),
    ("--data", TaskFlag::Lm, |a| a.data.is_some()),
    ("--tokenizer", TaskFlag::Lm, |a| a.tokenizer.is_some()),
    ("--bpe-vocab", TaskFlag::Lm, |a| a.bpe_vocab.is_some()),
    ("--grad-accum", TaskFlag::Lm, |a| a.grad_accum.is_some()),
    ("--lr-decay-iters", TaskFlag::Lm, |a| {
        a.lr_decay_iters.is_some()
    }),
    ("--eval-iters", TaskFlag::Lm, |a| a.eval_iters.is_some()),
    ("--block-size", TaskFlag::Lm, |a| a.block_size.is_some()),
    ("--dtype", TaskFlag::Lm, |a| a.dtype.is_some()),
];

impl TrainArgs {
    /// Rejects the flags of the other task, naming them.
    pub(super) fn check_task_flags(&self) -> Result<()> {
        for (flag, only, given) in TASK_ONLY {
            if only != self.task && given(self) {
                let (this, that) = match self.task {
                    TaskFlag::Lm => ("lm", "translate"),
                    TaskFlag::Translate => ("translate", "lm"),
                };
                bail!("{flag} applies to --task {that} only, not to --task {this}");
            }
        }
        Ok(())
    }

    /// The run directory.
    pub(super) fn out(&self) -> PathBuf {
        if let Some(out) = &self.out {
            return out.clone();
        }
        let name = match self.task {
            TaskFlag::Lm if self.config.is_some() => "custom".to_string(),
            TaskFlag::Lm => self.preset.clone().unwrap_or_else(|| "recall".into()),
            TaskFlag::Translate => format!(
                "translate-{}",
                self.translation.as_deref().unwrap_or("numbers")
            ),
        };
        PathBuf::from("runs").join(name)
    }

    pub(super) fn start(&self) -> Start {
        match (self.resume, self.overwrite) {
            (true, _) => Start::Resume,
            (false, true) => Start::Overwrite,
            (false, false) => Start::Fresh,
        }
    }

    /// The language-model config: the preset, `--config` file or (with `--resume`) the run's
    /// `config.json`, then every flag given.
    pub fn lm_config(&self, out: &Path) -> Result<TrainConfig> {
        let from_file = |path: &Path| -> Result<TrainConfig> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(TrainConfig::from_json(&text)?)
        };
        let mut c = match (&self.config, self.resume) {
            (Some(path), _) => from_file(path)?,
            (None, true) if self.preset.is_none() => from_file(&out.join("config.json"))
                .context("--resume reads the run's config.json")?,
            (None, _) => TrainConfig::preset(self.preset.as_deref().unwrap_or("recall"))?,
        };
        let choice = match self.tokenizer {
            Some(TokenizerFlag::Char) => Some(TokenizerChoice::Char),
            Some(TokenizerFlag::Bpe) => Some(TokenizerChoice::Bpe {
                vocab_size: self.bpe_vocab.unwrap_or(512),
            }),
            None => None,
        };
        if self.bpe_vocab.is_some() && !matches!(choice, Some(TokenizerChoice::Bpe { .. })) {
            bail!("--bpe-vocab applies to --tokenizer bpe");
        }
        c.data = match (c.data, &self.data) {
            (DataConfig::Shakespeare { path, tokenizer }, data) => DataConfig::Shakespeare {
                path: data.clone().or(path),
                tokenizer: choice.unwrap_or(tokenizer),
            },
            (DataConfig::TextFile { path, tokenizer }, data) => DataConfig::TextFile {
                path: data.clone().unwrap_or(path),
                tokenizer: choice.unwrap_or(tokenizer),
            },
            (recall @ DataConfig::Recall { .. }, None) => {
                if choice.is_some() {
                    bail!(
                        "--tokenizer applies to text data; the recall task has its own vocabulary"
                    );
                }
                recall
            }
            (DataConfig::Recall { .. }, Some(path)) => DataConfig::TextFile {
                path: path.clone(),
                tokenizer: choice.unwrap_or_default(),
            },
        };
        macro_rules! set {
            ($($flag:ident => $($field:ident).+),* $(,)?) => {
                $(if let Some(v) = self.$flag { c.$($field).+ = v; })*
            };
        }
        set!(max_iters => max_iters, batch_size => batch_size, grad_accum => grad_accum, lr => lr,
             min_lr => min_lr, warmup_iters => warmup_iters, lr_decay_iters => lr_decay_iters,
             weight_decay => weight_decay, grad_clip => grad_clip, eval_interval => eval_interval,
             eval_iters => eval_iters, n_layers => model.n_layers, n_heads => model.n_heads,
             d_model => model.d_model, block_size => model.block_size, dropout => model.dropout,
             seed => seed);
        if self.time_limit.is_some() {
            c.time_limit_s = self.time_limit;
        }
        if let Some(precision) = self.dtype {
            c.precision = precision;
        }
        if self.max_iters.is_some() && self.lr_decay_iters.is_none() {
            c.lr_decay_iters = c.max_iters;
        }
        Ok(c)
    }

    /// The translation config: the task's recipe or (with `--resume`) the run's
    /// `translate.json`, then every flag given.
    pub fn translate_config(&self, out: &Path) -> Result<TranslateConfig> {
        let mut c = if self.resume {
            qkv_trainer::translate::read_config(out)
                .context("--resume reads the run's translate.json")?
        } else {
            let task: TranslationTask = self.translation.as_deref().unwrap_or("numbers").parse()?;
            TranslateConfig::for_task(task)
        };
        if let Some(task) = &self.translation {
            c.task = task.clone();
        }
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { c.$field = v; })* };
        }
        set!(
            max_iters,
            batch_size,
            lr,
            min_lr,
            warmup_iters,
            weight_decay,
            grad_clip,
            eval_interval,
            eval_sentences,
            n_layers,
            n_heads,
            d_model,
            dropout,
            seed,
            label_smoothing
        );
        if self.time_limit.is_some() {
            c.time_limit_s = self.time_limit;
        }
        Ok(c)
    }
}
