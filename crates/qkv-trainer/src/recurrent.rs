//! The recurrent baseline as a task: an LSTM or GRU language model trained by the same
//! trainer, optimiser, schedule and data as the GPT of [`LanguageModel`] (whose config and
//! batches it reuses: `n_layers` and `d_model` shape the recurrent stack, `n_heads` is not
//! used).

use std::path::Path;

use burn::prelude::*;
use qkv_data::{IGNORE, Split, TokenBatch};
use qkv_transformer::recurrent::{RecurrentCell, RecurrentConfig, RecurrentLm};
use qkv_transformer::weights::{HostTensors, load_module_tensors, module_tensors, serialize_host};
use qkv_transformer::{SplitMix64, cross_entropy};
use serde::{Deserialize, Serialize};

use crate::checkpoint::RunState;
use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::lm::{LanguageModel, pretty, tensors};
use crate::precision::Precision;
use crate::task::{Evaluation, Recipe, Task};

/// What a recurrent run's `state.json` records: the language-model config and the cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurrentRunConfig {
    /// Data, optimiser and model width and depth, as for a GPT.
    pub train: TrainConfig,
    /// LSTM or GRU.
    pub cell: RecurrentCell,
}

/// An LSTM or GRU trained on next-token prediction, `KIND` `rnn`.
#[derive(Debug, Clone)]
pub struct RecurrentLanguageModel {
    /// The data, batches and evaluation, shared with the GPT task.
    pub lm: LanguageModel,
    /// The recurrent cell.
    pub cell: RecurrentCell,
}

impl RecurrentLanguageModel {
    /// Validates `config`, opens its data (downloads cached in `cache_dir`) and checks the
    /// recurrent model's shape.
    pub fn open(
        config: TrainConfig,
        cell: RecurrentCell,
        cache_dir: &Path,
    ) -> Result<Self, TrainError> {
        if config.precision != Precision::F32 {
            return Err(TrainError::Config(format!(
                "the recurrent baseline trains in f32 only, not {}: drop --dtype",
                config.precision
            )));
        }
        let task = Self {
            lm: LanguageModel::open(config, cache_dir)?,
            cell,
        };
        task.model_config().validate()?;
        Ok(task)
    }

    /// The recurrent model's shape (vocabulary from the data).
    pub fn model_config(&self) -> RecurrentConfig {
        let model = &self.lm.config.model;
        RecurrentConfig {
            vocab_size: self.lm.source.tokenizer().vocab_size(),
            d_model: model.d_model,
            n_layers: model.n_layers,
            cell: self.cell,
        }
    }

    fn run_config(&self) -> RecurrentRunConfig {
        RecurrentRunConfig {
            train: self.lm.config.clone(),
            cell: self.cell,
        }
    }
}

impl Task for RecurrentLanguageModel {
    type Model = RecurrentLm;
    type Batch = TokenBatch;
    const KIND: &'static str = "rnn";

    fn recipe(&self) -> Recipe {
        self.lm.config.recipe()
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(self.run_config()).expect("config serialises")
    }

    fn init_model(&self, device: &Device) -> Result<RecurrentLm, TrainError> {
        Ok(self.model_config().try_init(device)?)
    }

    fn weights_bytes(&self, model: &RecurrentLm) -> Vec<u8> {
        serialize_host(&module_tensors(model), None)
    }

    fn load_weights(
        &self,
        model: RecurrentLm,
        weights: HostTensors,
        path: &Path,
    ) -> Result<RecurrentLm, TrainError> {
        Ok(load_module_tensors(model, weights, path)?)
    }

    fn check_resume(&self, saved: &RunState, run_dir: &Path) -> Result<(), TrainError> {
        let path = run_dir.join("checkpoint");
        let saved_config: RecurrentRunConfig = serde_json::from_value(saved.config.clone())
            .map_err(|e| TrainError::Checkpoint {
                path: path.clone(),
                reason: format!("its config is not a recurrent-model config: {e}"),
            })?;
        let ours = self.run_config();
        if (saved_config.cell, &saved_config.train.model) != (ours.cell, &ours.train.model) {
            return Err(TrainError::Checkpoint {
                path,
                reason: format!(
                    "it was saved from another model ({:?} {:?}), this run asks for {:?} {:?}",
                    saved_config.cell, saved_config.train.model, ours.cell, ours.train.model
                ),
            });
        }
        self.lm.check_tokenizer(run_dir)
    }

    fn side_files(&self) -> Result<Vec<(String, Vec<u8>)>, TrainError> {
        Ok(vec![
            ("config.json".into(), pretty(&self.run_config())),
            ("model_config.json".into(), pretty(&self.model_config())),
            (
                "tokenizer.json".into(),
                self.lm.source.tokenizer().to_json()?.into_bytes(),
            ),
        ])
    }

    fn batch(&self, rng: &mut SplitMix64) -> TokenBatch {
        self.lm.draw(Split::Train, rng)
    }

    fn batch_tokens(&self, batch: &TokenBatch) -> usize {
        batch.batch * batch.seq
    }

    fn loss(
        &self,
        model: &RecurrentLm,
        batch: &TokenBatch,
        device: &Device,
    ) -> Result<Tensor<1>, TrainError> {
        let (x, y) = tensors(batch, device);
        Ok(cross_entropy(model.forward(x), y, Some(IGNORE)))
    }

    fn evaluate(
        &self,
        model: &RecurrentLm,
        step: usize,
        device: &Device,
    ) -> Result<Evaluation, TrainError> {
        let forward = |x| model.forward(x);
        let (train_loss, _) = self
            .lm
            .evaluate_split_with(&forward, Split::Train, step, device);
        let (val_loss, val_accuracy) =
            self.lm
                .evaluate_split_with(&forward, Split::Val, step, device);
        Ok(Evaluation {
            train_loss: Some(train_loss),
            val_loss,
            val_accuracy,
            attention: None,
        })
    }

    fn title(&self) -> String {
        format!("{} {}", self.cell.name(), self.lm.title())
    }
}
