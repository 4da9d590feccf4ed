//! The translation task: the encoder–decoder ([`Seq2Seq`]) learns a built-in translation
//! task under the common [`Trainer`](crate::Trainer) (label-smoothed loss, exact-match
//! evaluation on held-out sentences), and a trained one is loaded to translate.
//!
//! A run directory holds `translate.json` (the config), `checkpoint/` (the format of every
//! task: weights, optimizer, step and RNG, so a run resumes exactly), `metrics.jsonl` and
//! `loss.png`.

use std::path::Path;

use burn::prelude::*;
use qkv_data::translate::{BOS, EOS, PAD};
use qkv_data::{Split, TranslateError, TranslationBatch, TranslationTask, TranslationVocab};
use qkv_transformer::weights::{
    HostTensors, load_module_tensors, module_tensors, read_safetensors, serialize_host,
};
use qkv_transformer::{
    DecodeConfig, Seq2Seq, Seq2SeqConfig, SplitMix64, Translation, smoothed_cross_entropy,
};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, RunState};
use crate::error::TrainError;
use crate::optim::AdamWSettings;
use crate::precision::Precision;
use crate::schedule::WarmupCosine;
use crate::task::{Evaluation, Recipe, Task};

/// Everything a translation run needs, saved as `translate.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslateConfig {
    /// `numbers` or `dates`.
    pub task: String,
    /// Encoder layers, and as many decoder layers.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Model width.
    pub d_model: usize,
    /// Dropout.
    pub dropout: f64,
    /// Sentence pairs per step.
    pub batch_size: usize,
    /// Optimisation steps.
    pub max_iters: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Linear warm-up steps.
    pub warmup_iters: usize,
    /// AdamW weight decay (matrices only).
    pub weight_decay: f64,
    /// AdamW β₁.
    #[serde(default = "beta1")]
    pub beta1: f64,
    /// AdamW β₂ (0.98, as in "Attention Is All You Need").
    #[serde(default = "beta2")]
    pub beta2: f64,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip: f64,
    /// Label smoothing ε of the loss.
    pub label_smoothing: f64,
    /// Evaluate every this many steps.
    pub eval_interval: usize,
    /// Held-out sentences per evaluation.
    pub eval_sentences: usize,
    /// Seed of initialisation, batches and dropout.
    pub seed: u64,
    /// Stop (after saving) once this much wall time has passed, in seconds.
    pub time_limit_s: Option<f64>,
}

fn beta1() -> f64 {
    0.9
}

fn beta2() -> f64 {
    0.98
}

impl TranslateConfig {
    /// The default recipe for `task`: 2 + 2 layers, 4 heads, 128 wide, batch 64, lr 2e-3,
    /// label smoothing 0.1, 2500 steps (numbers) or 1500 (dates).
    pub fn for_task(task: TranslationTask) -> Self {
        Self {
            task: task.name().to_string(),
            n_layers: 2,
            n_heads: 4,
            d_model: 128,
            dropout: 0.0,
            batch_size: 64,
            max_iters: match task {
                TranslationTask::Numbers => 2500,
                TranslationTask::Dates => 1500,
            },
            lr: 2e-3,
            min_lr: 1e-4,
            warmup_iters: 100,
            weight_decay: 0.01,
            beta1: beta1(),
            beta2: beta2(),
            grad_clip: 1.0,
            label_smoothing: 0.1,
            eval_interval: 250,
            eval_sentences: 1000,
            seed: 1337,
            time_limit_s: None,
        }
    }

    /// The task named by [`task`](Self::task).
    pub fn task(&self) -> Result<TranslationTask, TrainError> {
        self.task
            .parse()
            .map_err(|e: TranslateError| TrainError::Config(e.to_string()))
    }

    /// Checks every value, naming the first bad one and what to do.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.task()?;
        let bad = |msg: String| Err(TrainError::Config(msg));
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1 (--batch-size)".into());
        }
        if self.max_iters == 0 {
            return bad("max_iters must be at least 1 (--max-iters)".into());
        }
        self.recipe().validate()?;
        use crate::config::{MAX_BATCH, check_count};
        check_count("batch_size (--batch-size)", self.batch_size, MAX_BATCH)?;
        check_count(
            "eval_sentences (--eval-sentences)",
            self.eval_sentences,
            MAX_BATCH,
        )?;
        if self.eval_interval == 0 || self.eval_sentences == 0 {
            return bad("eval_interval and eval_sentences must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        self.model_config()?.validate()?;
        Ok(())
    }

    /// The model this config trains.
    pub fn model_config(&self) -> Result<Seq2SeqConfig, TrainError> {
        let task = self.task()?;
        let vocab = task.vocabulary().len();
        Ok(Seq2SeqConfig::new(
            vocab,
            vocab,
            task.max_source_tokens() + 1,
            task.max_target_tokens() + 1,
        )
        .with_n_encoder_layers(self.n_layers)
        .with_n_decoder_layers(self.n_layers)
        .with_n_heads(self.n_heads)
        .with_d_model(self.d_model)
        .with_dropout(self.dropout)
        .with_pad_id(PAD as usize))
    }

    /// The loop's settings: Adam's β₂ 0.98 and ε 1e-9 as in "Attention Is All You Need",
    /// the cosine ending at `max_iters`, one micro-batch per update.
    pub fn recipe(&self) -> Recipe {
        let c = self;
        Recipe {
            max_iters: c.max_iters,
            grad_accum: 1,
            schedule: WarmupCosine {
                lr: c.lr,
                min_lr: c.min_lr,
                warmup_iters: c.warmup_iters,
                decay_iters: c.max_iters,
            },
            adamw: AdamWSettings {
                beta1: c.beta1,
                beta2: c.beta2,
                eps: 1e-9,
                weight_decay: c.weight_decay,
            },
            grad_clip: c.grad_clip,
            eval_interval: c.eval_interval,
            seed: c.seed,
            time_limit_s: c.time_limit_s,
            precision: Precision::F32,
        }
    }
}

/// A trained model with its vocabulary, ready to translate.
#[derive(Debug)]
pub struct Translator {
    /// The model (no autodiff, no dropout).
    pub model: Seq2Seq,
    /// Its vocabulary.
    pub vocab: TranslationVocab,
    /// Its task.
    pub task: TranslationTask,
    /// The config it was trained with.
    pub config: TranslateConfig,
    /// GNMT length penalty α of beam search (0.6 when loaded; 0 ranks by log p alone).
    pub length_penalty: f64,
    device: Device,
}

impl Translator {
    /// Source text to ids, with a named error for unknown words, empty or too-long input.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TranslateError> {
        self.vocab
            .encode_source(text, self.task.max_source_tokens())
    }

    /// Translates sentences (greedy when `beam_width` is 1; beam search ranks finished
    /// hypotheses with [`length_penalty`](Self::length_penalty)).
    pub fn translate(
        &self,
        sentences: &[&str],
        beam_width: usize,
    ) -> Result<Vec<(String, Translation)>, TrainError> {
        let sources = sentences
            .iter()
            .map(|s| self.encode(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = DecodeConfig::greedy(self.task.max_target_tokens() + 1, BOS, EOS);
        config.beam_width = beam_width;
        config.length_penalty = self.length_penalty;
        let out = self.model.translate(&sources, &config, &self.device)?;
        Ok(out
            .into_iter()
            .map(|t| (self.vocab.decode_target(&t.tokens), t))
            .collect())
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// Reads and checks a run's `translate.json`.
pub fn read_config(run_dir: &Path) -> Result<TranslateConfig, TrainError> {
    let config_path = run_dir.join("translate.json");
    let text = std::fs::read_to_string(&config_path).map_err(|source| TrainError::Io {
        path: config_path.clone(),
        source,
    })?;
    let config: TranslateConfig =
        serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path: config_path.clone(),
            reason: format!("not a translation config: {e}"),
        })?;
    config.validate()?;
    Ok(config)
}

/// Loads a trained translation run from `run_dir`: its config and the weights of its last
/// complete checkpoint (or, for runs saved before translation had checkpoints, its
/// `model.safetensors`).
pub fn load_translator(run_dir: &Path, device: &Device) -> Result<Translator, TrainError> {
    let config = read_config(run_dir)?;
    let task = config.task()?;
    let legacy = run_dir.join("model.safetensors");
    let (tensors, model_path) = if !run_dir.join("checkpoint").exists()
        && !run_dir.join("checkpoint.old").exists()
        && legacy.is_file()
    {
        let bytes = std::fs::read(&legacy).map_err(|source| TrainError::Io {
            path: legacy.clone(),
            source,
        })?;
        (read_safetensors(&bytes, &legacy)?, legacy)
    } else {
        let checkpoint = Checkpoint::load(run_dir)?;
        let path = checkpoint.weights_path();
        (checkpoint.weights, path)
    };
    let model = config.model_config()?.try_init(device)?;
    let model = load_module_tensors(model, tensors, &model_path)?;
    Ok(Translator {
        model,
        vocab: task.vocabulary(),
        task,
        config,
        length_penalty: 0.6,
        device: device.clone(),
    })
}

/// `n` encoded pairs of `split`, drawn with `rng`.
fn draw_pairs(
    task: TranslationTask,
    vocab: &TranslationVocab,
    split: Split,
    n: usize,
    rng: &mut SplitMix64,
) -> Vec<(Vec<u32>, Vec<u32>)> {
    (0..n)
        .map(|_| {
            let (src, tgt) = task.example(split, &mut |k| rng.below(k));
            (
                vocab
                    .encode_source(&src, task.max_source_tokens())
                    .expect("generated sources are in the vocabulary"),
                vocab
                    .encode_target(&tgt)
                    .expect("generated targets are in the vocabulary"),
            )
        })
        .collect()
}

fn batch_tensors(
    batch: &TranslationBatch,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2, Int>) {
    let t = |ids: &Vec<i64>, len| {
        Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [batch.batch, len]), device)
    };
    (
        t(&batch.source, batch.src_len),
        t(&batch.decoder_input, batch.tgt_len),
        t(&batch.labels, batch.tgt_len),
    )
}

/// Held-out loss (teacher-forced, no smoothing) and greedy exact-match accuracy of `model`
/// on `pairs`.
pub fn evaluate(
    model: &Seq2Seq,
    task: TranslationTask,
    pairs: &[(Vec<u32>, Vec<u32>)],
    device: &Device,
) -> Result<(f64, f64), TrainError> {
    let mut loss_sum = 0.0;
    let mut correct = 0usize;
    let config = DecodeConfig::greedy(task.max_target_tokens() + 1, BOS, EOS);
    for chunk in pairs.chunks(250) {
        let batch = TranslationBatch::from_pairs(chunk);
        let (src, tgt_in, labels) = batch_tensors(&batch, device);
        let logits = model.forward(src, tgt_in)?;
        let loss = smoothed_cross_entropy(logits, labels, Some(PAD as i64), 0.0);
        loss_sum += loss.into_scalar::<f32>() as f64 * chunk.len() as f64;
        let sources: Vec<Vec<u32>> = chunk.iter().map(|(s, _)| s.clone()).collect();
        let out = model.translate(&sources, &config, device)?;
        correct += out
            .iter()
            .zip(chunk)
            .filter(|(t, (_, target))| t.finished && t.tokens[..] == target[..target.len() - 1])
            .count();
    }
    Ok((
        loss_sum / pairs.len() as f64,
        correct as f64 / pairs.len() as f64,
    ))
}

/// The translation task for the [`Trainer`](crate::Trainer): a config, its vocabulary and
/// the held-out sentences every evaluation scores.
#[derive(Debug, Clone)]
pub struct TranslationRun {
    /// The resolved configuration.
    pub config: TranslateConfig,
    /// The built-in task.
    pub task: TranslationTask,
    /// Its vocabulary.
    pub vocab: TranslationVocab,
    /// The held-out pairs, drawn once from a generator of their own (the same for every
    /// seed).
    pub held_out: Vec<(Vec<u32>, Vec<u32>)>,
}

impl TranslationRun {
    /// Validates `config` and draws the held-out sentences.
    pub fn new(config: TranslateConfig) -> Result<Self, TrainError> {
        config.validate()?;
        let task = config.task()?;
        let vocab = task.vocabulary();
        let held_out = draw_pairs(
            task,
            &vocab,
            Split::Val,
            config.eval_sentences,
            &mut SplitMix64::new(0xE7A1),
        );
        Ok(Self {
            config,
            task,
            vocab,
            held_out,
        })
    }
}

impl Task for TranslationRun {
    type Model = Seq2Seq;
    type Batch = TranslationBatch;
    const KIND: &'static str = "translate";

    fn recipe(&self) -> Recipe {
        self.config.recipe()
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn init_model(&self, device: &Device) -> Result<Seq2Seq, TrainError> {
        Ok(self.config.model_config()?.try_init(device)?)
    }

    fn weights_bytes(&self, model: &Seq2Seq) -> Vec<u8> {
        serialize_host(&module_tensors(model), None)
    }

    fn load_weights(
        &self,
        model: Seq2Seq,
        weights: HostTensors,
        path: &Path,
    ) -> Result<Seq2Seq, TrainError> {
        Ok(load_module_tensors(model, weights, path)?)
    }

    fn check_resume(&self, saved: &RunState, run_dir: &Path) -> Result<(), TrainError> {
        let path = run_dir.join("checkpoint");
        let saved: TranslateConfig =
            serde_json::from_value(saved.config.clone()).map_err(|e| TrainError::Checkpoint {
                path: path.clone(),
                reason: format!("its config is not a translation config: {e}"),
            })?;
        let shape = |c: &TranslateConfig| (c.task.clone(), c.n_layers, c.n_heads, c.d_model);
        if shape(&saved) != shape(&self.config) {
            return Err(TrainError::Checkpoint {
                path,
                reason: format!(
                    "it was saved from a {} model with {} layers, {} heads, {} wide; this run asks for {} with {}, {}, {}",
                    saved.task,
                    saved.n_layers,
                    saved.n_heads,
                    saved.d_model,
                    self.config.task,
                    self.config.n_layers,
                    self.config.n_heads,
                    self.config.d_model
                ),
            });
        }
        Ok(())
    }

    fn side_files(&self) -> Result<Vec<(String, Vec<u8>)>, TrainError> {
        Ok(vec![(
            "translate.json".into(),
            crate::lm::pretty(&self.config),
        )])
    }

    fn batch(&self, rng: &mut SplitMix64) -> TranslationBatch {
        TranslationBatch::from_pairs(&draw_pairs(
            self.task,
            &self.vocab,
            Split::Train,
            self.config.batch_size,
            rng,
        ))
    }

    fn batch_tokens(&self, batch: &TranslationBatch) -> usize {
        batch.batch * (batch.src_len + batch.tgt_len)
    }

    fn loss(
        &self,
        model: &Seq2Seq,
        batch: &TranslationBatch,
        device: &Device,
    ) -> Result<Tensor<1>, TrainError> {
        let (src, tgt_in, labels) = batch_tensors(batch, device);
        let logits = model.forward(src, tgt_in)?;
        Ok(smoothed_cross_entropy(
            logits,
            labels,
            Some(PAD as i64),
            self.config.label_smoothing,
        ))
    }

    fn evaluate(
        &self,
        model: &Seq2Seq,
        _step: usize,
        device: &Device,
    ) -> Result<Evaluation, TrainError> {
        let (val_loss, val_accuracy) = evaluate(model, self.task, &self.held_out, device)?;
        Ok(Evaluation {
            train_loss: None,
            val_loss,
            val_accuracy,
            attention: None,
        })
    }

    fn title(&self) -> String {
        format!("translation ({})", self.task.name())
    }
}
