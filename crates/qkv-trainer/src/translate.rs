//! Training the encoder–decoder ([`Seq2Seq`]) on a built-in translation task, and loading a
//! trained one to translate: AdamW, warm-up + cosine, global-norm clipping, label
//! smoothing, exact-match evaluation on held-out sentences, atomic saves.
//!
//! A run directory holds `translate.json` (the config), `model.safetensors` (written to a
//! temporary name, then renamed), `metrics.jsonl` and `loss.png`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::prelude::*;
use qkv_data::translate::{BOS, EOS, PAD};
use qkv_data::{Split, TranslateError, TranslationBatch, TranslationTask, TranslationVocab};
use qkv_transformer::weights::{
    load_module_tensors, module_tensors, read_safetensors, serialize_host, write_atomically,
};
use qkv_transformer::{
    DecodeConfig, Seq2Seq, Seq2SeqConfig, SplitMix64, Translation, smoothed_cross_entropy,
};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::metrics::{MetricsLog, MetricsRecord};
use crate::optim::{AdamW, AdamWSettings, NamedGrads, clip_factor};
use crate::schedule::WarmupCosine;

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
        if self.lr <= 0.0 || !self.lr.is_finite() {
            return bad(format!("learning rate must be > 0, got {} (--lr)", self.lr));
        }
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
}

/// What a translation run reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum TranslateEvent {
    /// One optimisation step done.
    Step(MetricsRecord),
    /// An evaluation: exact-match accuracy on held-out sentences.
    Eval {
        /// Steps done.
        step: usize,
        /// Teacher-forced loss on the held-out sentences.
        val_loss: f64,
        /// Fraction of held-out sentences translated exactly (greedy).
        accuracy: f64,
    },
}

/// How a translation run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslateSummary {
    /// Steps done.
    pub steps: usize,
    /// Exact-match accuracy of the last evaluation.
    pub accuracy: f64,
    /// Held-out loss of the last evaluation.
    pub val_loss: f64,
    /// Wall time, seconds.
    pub wall_s: f64,
    /// Whether Ctrl-C or the time limit stopped it early.
    pub stopped_early: bool,
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

/// Loads a trained translation run from `run_dir`.
pub fn load_translator(run_dir: &Path, device: &Device) -> Result<Translator, TrainError> {
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
    let task = config.task()?;
    let model_path = run_dir.join("model.safetensors");
    let bytes = std::fs::read(&model_path).map_err(|source| TrainError::Io {
        path: model_path.clone(),
        source,
    })?;
    let tensors = read_safetensors(&bytes, &model_path)?;
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

/// Trains a translation model into `run_dir` on `device` (an autodiff device), reporting
/// through `on_event`. Stops early, saving first, when `interrupt` is set or the time limit
/// passes.
pub fn train_translation(
    config: &TranslateConfig,
    run_dir: &Path,
    device: &Device,
    interrupt: &AtomicBool,
    mut on_event: impl FnMut(&TranslateEvent),
) -> Result<TranslateSummary, TrainError> {
    config.validate()?;
    let task = config.task()?;
    let vocab = task.vocabulary();
    std::fs::create_dir_all(run_dir).map_err(|source| TrainError::Io {
        path: run_dir.to_path_buf(),
        source,
    })?;
    let config_path = run_dir.join("translate.json");
    write_atomically(
        &config_path,
        serde_json::to_string_pretty(config)
            .expect("config serialises")
            .as_bytes(),
    )?;
    device.seed(config.seed);
    let mut model = config.model_config()?.try_init(device)?;
    let mut optimizer = AdamW::new(AdamWSettings {
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-9,
        weight_decay: config.weight_decay,
    });
    let schedule = WarmupCosine {
        lr: config.lr,
        min_lr: config.min_lr,
        warmup_iters: config.warmup_iters,
        decay_iters: config.max_iters,
    };
    let mut rng = SplitMix64::new(config.seed);
    // The held-out sentences come from their own generator, the same for every seed.
    let held_out = draw_pairs(
        task,
        &vocab,
        Split::Val,
        config.eval_sentences,
        &mut SplitMix64::new(0xE7A1),
    );
    let mut log = MetricsLog::open(run_dir, None)?;
    let started = Instant::now();
    let mut last = (f64::NAN, 0.0);
    let mut stopped_early = false;
    let mut step = 0;
    while step < config.max_iters {
        let t0 = Instant::now();
        let lr = schedule.at(step);
        let batch = TranslationBatch::from_pairs(&draw_pairs(
            task,
            &vocab,
            Split::Train,
            config.batch_size,
            &mut rng,
        ));
        let (src, tgt_in, labels) = batch_tensors(&batch, device);
        let logits = model.forward(src, tgt_in)?;
        let loss = smoothed_cross_entropy(logits, labels, Some(PAD as i64), config.label_smoothing);
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        if !loss_value.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss: loss_value,
                last_good: 0,
            });
        }
        let grads = NamedGrads::collect(&model, &loss.backward());
        let grad_norm = grads.global_norm();
        model = optimizer.step(model, &grads, lr, clip_factor(grad_norm, config.grad_clip));
        step += 1;
        let elapsed = t0.elapsed().as_secs_f64();
        let tokens = batch.batch * (batch.src_len + batch.tgt_len);
        let mut record = MetricsRecord::update(step, loss_value, lr, grad_norm, elapsed, tokens);
        let out_of_time = config
            .time_limit_s
            .is_some_and(|limit| started.elapsed().as_secs_f64() >= limit);
        let interrupted = interrupt.load(Ordering::SeqCst);
        if step.is_multiple_of(config.eval_interval)
            || step == config.max_iters
            || out_of_time
            || interrupted
        {
            let (val_loss, accuracy) = evaluate(
                &model.valid(),
                task,
                &held_out,
                &device.clone().without_autodiff(),
            )?;
            record.val_loss = Some(val_loss);
            record.val_accuracy = Some(accuracy);
            last = (val_loss, accuracy);
            save_model(&model, run_dir)?;
            on_event(&TranslateEvent::Step(record.clone()));
            on_event(&TranslateEvent::Eval {
                step,
                val_loss,
                accuracy,
            });
        } else {
            on_event(&TranslateEvent::Step(record.clone()));
        }
        log.append(&record)?;
        if out_of_time || interrupted {
            stopped_early = step < config.max_iters;
            break;
        }
    }
    let records = crate::metrics::read(&run_dir.join("metrics.jsonl"))?;
    crate::plot::loss_curve(
        &records,
        &format!("translation ({})", task.name()),
        &run_dir.join("loss.png"),
    )?;
    Ok(TranslateSummary {
        steps: step,
        accuracy: last.1,
        val_loss: last.0,
        wall_s: started.elapsed().as_secs_f64(),
        stopped_early,
    })
}

/// Writes the weights as `model.safetensors`, atomically.
fn save_model(model: &Seq2Seq, run_dir: &Path) -> Result<PathBuf, TrainError> {
    let path = run_dir.join("model.safetensors");
    write_atomically(&path, &serialize_host(&module_tensors(model), None))?;
    Ok(path)
}
