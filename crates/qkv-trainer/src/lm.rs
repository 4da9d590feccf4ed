//! The language-model task: a GPT learns next tokens of the recall task or of a text.

use std::path::Path;

use burn::prelude::*;
use qkv_data::{IGNORE, Split, TokenBatch, Tokenizer};
use qkv_tensor_ops::attention_stats;
use qkv_transformer::weights::HostTensors;
use qkv_transformer::{Gpt, GptConfig, SplitMix64, cross_entropy};

use crate::checkpoint::RunState;
use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::metrics::HeadRecord;
use crate::source::BatchSource;
use crate::task::{Evaluation, Recipe, Task};

/// A GPT trained on next-token prediction (`cargo xtask train`, `--task lm`).
#[derive(Debug, Clone)]
pub struct LanguageModel {
    /// The resolved configuration.
    pub config: TrainConfig,
    /// The data.
    pub source: BatchSource,
}

impl LanguageModel {
    /// Validates `config` and opens its data (downloads are cached in `cache_dir`).
    pub fn open(config: TrainConfig, cache_dir: &Path) -> Result<Self, TrainError> {
        config.validate()?;
        let source = BatchSource::open(&config, cache_dir, None)?;
        let task = Self { config, source };
        qkv_transformer::limits::ensure_fits(
            task.training_bytes(),
            "one training step of this config",
            "lower --batch-size, --block-size, --n-layers or --d-model",
        )?;
        Ok(task)
    }

    /// A lower bound on the memory one training step needs: weights, gradients and both
    /// AdamW moments (16 bytes a parameter), the logits with their softmax and gradient, and
    /// the activations each block keeps for the backward pass. Checked before anything is
    /// allocated, so that an impossible config is an error, not an allocation abort.
    pub fn training_bytes(&self) -> u64 {
        let gpt = self.gpt_config();
        let tokens = self.config.batch_size as u128 * self.config.model.block_size as u128;
        let per_token_per_layer = 4 * gpt.d_model as u128 + 2 * gpt.d_ff() as u128;
        let floats = 4 * gpt.parameter_count()
            + 3 * tokens * gpt.vocab_size as u128
            + tokens * gpt.n_layers as u128 * per_token_per_layer;
        (floats * 4).min(u64::MAX as u128) as u64
    }

    /// The full model config (the vocabulary comes from the data's tokenizer).
    pub fn gpt_config(&self) -> GptConfig {
        self.config.model.gpt(self.source.tokenizer().vocab_size())
    }

    /// `batch` sequences of `split`, drawn with `rng`.
    pub fn draw(&self, split: Split, rng: &mut SplitMix64) -> TokenBatch {
        self.source.batch(
            split,
            self.config.batch_size,
            self.config.model.block_size,
            &mut |n| rng.below(n),
        )
    }

    /// Mean loss and argmax accuracy over `eval_iters` batches of `split`. The batches come
    /// from a generator seeded by the step, so evaluation does not disturb the training
    /// batch sequence.
    pub fn evaluate_split(
        &self,
        model: &Gpt,
        split: Split,
        step: usize,
        device: &Device,
    ) -> (f64, f64) {
        self.evaluate_split_with(&|x| model.forward(x), split, step, device)
    }

    /// [`evaluate_split`](Self::evaluate_split) of any model that maps `[batch, seq]` tokens
    /// to `[batch, seq, vocab_size]` logits.
    pub fn evaluate_split_with(
        &self,
        forward: &dyn Fn(Tensor<2, Int>) -> Tensor<3>,
        split: Split,
        step: usize,
        device: &Device,
    ) -> (f64, f64) {
        let mut rng = SplitMix64::new(self.config.seed ^ 0x5eed_0e7a1 ^ (step as u64) << 20);
        let (mut loss, mut correct, mut counted) = (0.0, 0usize, 0usize);
        for _ in 0..self.config.eval_iters {
            let batch = self.draw(split, &mut rng);
            let (x, y) = tensors(&batch, device);
            let logits = forward(x);
            let predicted: Vec<i64> = logits
                .clone()
                .argmax(2)
                .into_data()
                .convert::<i64>()
                .try_into_vec_as::<i64>()
                .expect("int predictions");
            for (p, t) in predicted.iter().zip(&batch.targets) {
                if *t != IGNORE {
                    counted += 1;
                    correct += (*p == *t) as usize;
                }
            }
            loss += cross_entropy(logits, y, Some(IGNORE)).into_scalar::<f32>() as f64;
        }
        (
            loss / self.config.eval_iters as f64,
            correct as f64 / counted.max(1) as f64,
        )
    }

    /// Per-layer, per-head attention statistics on one validation batch.
    pub fn attention_stats(
        &self,
        model: &Gpt,
        device: &Device,
    ) -> Result<Vec<HeadRecord>, TrainError> {
        let mut rng = SplitMix64::new(self.config.seed ^ 0xa77e_4710);
        let batch = self.draw(Split::Val, &mut rng);
        let (x, _) = tensors(&batch, device);
        let recorded = model.forward_detailed(x, None, true)?;
        let mut out = Vec::new();
        for (layer, probs) in recorded.attention.into_iter().enumerate() {
            for (head, s) in attention_stats(probs).into_iter().enumerate() {
                out.push(HeadRecord {
                    layer,
                    head,
                    entropy: s.entropy,
                    mean_distance: s.mean_distance,
                    max_prob: s.max_prob,
                    first_token_mass: s.first_token_mass,
                });
            }
        }
        Ok(out)
    }

    /// Checks that the tokenizer saved in `run_dir` is this data's, naming the difference.
    pub fn check_tokenizer(&self, run_dir: &Path) -> Result<(), TrainError> {
        let path = run_dir.join("checkpoint");
        let tokenizer = self.source.tokenizer();
        let saved_tokenizer = Tokenizer::load(&run_dir.join("tokenizer.json"))?;
        if saved_tokenizer.vocab_size() != tokenizer.vocab_size() {
            return Err(TrainError::Checkpoint {
                path,
                reason: format!(
                    "its vocabulary has {} tokens, this data's has {}",
                    saved_tokenizer.vocab_size(),
                    tokenizer.vocab_size()
                ),
            });
        }
        if saved_tokenizer.to_json()? != tokenizer.to_json()? {
            return Err(TrainError::Checkpoint {
                path,
                reason: "its tokenizer differs from this data's".into(),
            });
        }
        Ok(())
    }
}

impl Task for LanguageModel {
    type Model = Gpt;
    type Batch = TokenBatch;
    const KIND: &'static str = "lm";

    fn recipe(&self) -> Recipe {
        self.config.recipe()
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn init_model(&self, device: &Device) -> Result<Gpt, TrainError> {
        Ok(self.gpt_config().try_init(device)?)
    }

    fn weights_bytes(&self, model: &Gpt) -> Vec<u8> {
        model.to_safetensors_bytes()
    }

    fn load_weights(
        &self,
        model: Gpt,
        weights: HostTensors,
        path: &Path,
    ) -> Result<Gpt, TrainError> {
        Ok(model.load_named(weights, path)?)
    }

    fn check_resume(&self, saved: &RunState, run_dir: &Path) -> Result<(), TrainError> {
        let path = run_dir.join("checkpoint");
        let saved_config: TrainConfig =
            serde_json::from_value(saved.config.clone()).map_err(|e| TrainError::Checkpoint {
                path: path.clone(),
                reason: format!("its config is not a language-model config: {e}"),
            })?;
        if saved_config.model != self.config.model {
            return Err(TrainError::Checkpoint {
                path,
                reason: format!(
                    "it was saved from a model with another config ({:?}), this run asks for {:?}",
                    saved_config.model, self.config.model
                ),
            });
        }
        self.check_tokenizer(run_dir)
    }

    fn side_files(&self) -> Result<Vec<(String, Vec<u8>)>, TrainError> {
        Ok(vec![
            ("config.json".into(), pretty(&self.config)),
            ("model_config.json".into(), pretty(&self.gpt_config())),
            (
                "tokenizer.json".into(),
                self.source.tokenizer().to_json()?.into_bytes(),
            ),
        ])
    }

    fn batch(&self, rng: &mut SplitMix64) -> TokenBatch {
        self.draw(Split::Train, rng)
    }

    fn batch_tokens(&self, batch: &TokenBatch) -> usize {
        batch.batch * batch.seq
    }

    fn loss(
        &self,
        model: &Gpt,
        batch: &TokenBatch,
        device: &Device,
    ) -> Result<Tensor<1>, TrainError> {
        let (x, y) = tensors(batch, device);
        Ok(cross_entropy(model.forward(x), y, Some(IGNORE)))
    }

    fn evaluate(
        &self,
        model: &Gpt,
        step: usize,
        device: &Device,
    ) -> Result<Evaluation, TrainError> {
        let (train_loss, _) = self.evaluate_split(model, Split::Train, step, device);
        let (val_loss, val_accuracy) = self.evaluate_split(model, Split::Val, step, device);
        Ok(Evaluation {
            train_loss: Some(train_loss),
            val_loss,
            val_accuracy,
            attention: Some(self.attention_stats(model, device)?),
        })
    }

    fn title(&self) -> String {
        match &self.config.data {
            crate::DataConfig::Recall { .. } => "qkv recall".into(),
            crate::DataConfig::Shakespeare { .. } => "qkv shakespeare".into(),
            crate::DataConfig::TextFile { path, .. } => format!("qkv {}", path.display()),
        }
    }
}

/// Pretty JSON of a config, for the side files.
pub(crate) fn pretty<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_string_pretty(value)
        .expect("configs serialise")
        .into_bytes()
}

/// A batch as `[batch, seq]` input and target tensors.
pub fn tensors(batch: &TokenBatch, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let shape = [batch.batch, batch.seq];
    (
        Tensor::from_data(TensorData::new(batch.inputs.clone(), shape), device),
        Tensor::from_data(TensorData::new(batch.targets.clone(), shape), device),
    )
}

/// Mean next-token loss over an entire split of a text dataset, in consecutive windows of
/// `block_size` tokens (the last partial window dropped), `batch_size` windows at a time. Unlike
/// the periodic estimate on random batches, this is the same number every time it is run.
pub fn full_split_loss(
    model: &Gpt,
    dataset: &qkv_data::TextDataset,
    split: Split,
    block_size: usize,
    batch_size: usize,
    device: &Device,
) -> f64 {
    let ids = match split {
        Split::Train => &dataset.train,
        Split::Val => &dataset.val,
    };
    let windows = (ids.len().saturating_sub(1)) / block_size;
    let (mut total, mut count) = (0.0f64, 0usize);
    for first in (0..windows).step_by(batch_size.max(1)) {
        let n = batch_size.min(windows - first);
        let mut batch = TokenBatch {
            batch: n,
            seq: block_size,
            inputs: Vec::new(),
            targets: Vec::new(),
        };
        for w in first..first + n {
            let start = w * block_size;
            batch
                .inputs
                .extend(ids[start..start + block_size].iter().map(|&t| t as i64));
            batch.targets.extend(
                ids[start + 1..start + block_size + 1]
                    .iter()
                    .map(|&t| t as i64),
            );
        }
        let (x, y) = tensors(&batch, device);
        let loss = cross_entropy(model.forward(x), y, None).into_scalar::<f32>() as f64;
        total += loss * (n * block_size) as f64;
        count += n * block_size;
    }
    total / count.max(1) as f64
}
