//! Checkpoints: weights, optimizer state and the run's position, written so that a crash at
//! any moment leaves the previous checkpoint loadable.
//!
//! A checkpoint is a directory `checkpoint/` in the run directory holding
//! `model.safetensors` (the weights, under [`qkv_transformer::weights`]' names),
//! `optimizer.safetensors` (AdamW's `m.<name>` and `v.<name>`), and `state.json` (step, RNG
//! state, optimizer step count, and the config). It is written as `checkpoint.tmp/`, every
//! file flushed to disk, then swapped in with two renames (`checkpoint/` → `checkpoint.old/`,
//! `checkpoint.tmp/` → `checkpoint/`). A crash before the swap leaves the old checkpoint; a
//! crash between the renames leaves `checkpoint.old/`, which [`Checkpoint::load`] falls
//! back to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use qkv_transformer::Gpt;
use qkv_transformer::weights::{HostTensors, read_safetensors, serialize_host};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::optim::{AdamW, Moments};

/// Where a run stands, saved beside the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    /// Updates completed.
    pub step: usize,
    /// The batching generator's state.
    pub rng_state: u64,
    /// AdamW's update count.
    pub optimizer_t: u64,
    /// The run's configuration.
    pub config: TrainConfig,
    /// The vocabulary size the model was built with.
    pub vocab_size: usize,
}

/// What a checkpoint holds, once loaded.
#[derive(Debug)]
pub struct Checkpoint {
    /// The model's weights, by name.
    pub weights: HostTensors,
    /// The optimizer moments, by name (`m.<param>`, `v.<param>`).
    pub optimizer: HostTensors,
    /// Step, RNG, config.
    pub state: RunState,
}

/// The checkpoint directory of a run.
pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoint")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Saves model, optimizer and state atomically into `run_dir/checkpoint/`.
///
/// `fail_after_files` exists for tests: it stops the write after that many files, as a crash
/// would, and returns an error.
pub fn save(
    run_dir: &Path,
    model: &Gpt,
    optimizer: &AdamW,
    state: &RunState,
    fail_after_files: Option<usize>,
) -> Result<(), TrainError> {
    let tmp = run_dir.join("checkpoint.tmp");
    let old = run_dir.join("checkpoint.old");
    let target = checkpoint_dir(run_dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;

    let mut moments: HostTensors = BTreeMap::new();
    for (name, Moments { m, v }) in &optimizer.state {
        let host = |t: &Tensor<1>| {
            t.clone()
                .into_data()
                .try_into_vec_as::<f32>()
                .expect("float state")
        };
        let n = m.dims()[0];
        moments.insert(format!("m.{name}"), (vec![n], host(m)));
        moments.insert(format!("v.{name}"), (vec![n], host(v)));
    }
    let state_json = serde_json::to_string_pretty(state).expect("state serialises");
    let files: [(&str, Vec<u8>); 3] = [
        ("model.safetensors", model.to_safetensors_bytes()),
        ("optimizer.safetensors", serialize_host(&moments, None)),
        ("state.json", state_json.into_bytes()),
    ];
    for (written, (name, bytes)) in files.iter().enumerate() {
        if fail_after_files == Some(written) {
            return Err(TrainError::Io {
                path: tmp.join(name),
                source: std::io::Error::other("simulated crash while writing the checkpoint"),
            });
        }
        write_synced(&tmp.join(name), bytes)?;
    }
    let _ = std::fs::remove_dir_all(&old);
    if target.exists() {
        std::fs::rename(&target, &old).map_err(io(&target))?;
    }
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

impl Checkpoint {
    /// Loads `run_dir/checkpoint/` (or `checkpoint.old/` when a crash interrupted the swap).
    pub fn load(run_dir: &Path) -> Result<Self, TrainError> {
        let mut dir = checkpoint_dir(run_dir);
        if !dir.join("state.json").exists() && run_dir.join("checkpoint.old/state.json").exists() {
            dir = run_dir.join("checkpoint.old");
        }
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::Checkpoint {
            path: dir.clone(),
            reason: format!(
                "no readable state.json ({e}); is this a qkv run directory with a checkpoint?"
            ),
        })?;
        let state: RunState = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path: state_path.clone(),
            reason: format!("unreadable state: {e}"),
        })?;
        let read = |name: &str| -> Result<HostTensors, TrainError> {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            Ok(read_safetensors(&bytes, &path)?)
        };
        Ok(Self {
            weights: read("model.safetensors")?,
            optimizer: read("optimizer.safetensors")?,
            state,
        })
    }

    /// Rebuilds the optimizer on `device`, checking that every moment matches a parameter.
    pub fn optimizer(
        &self,
        settings: crate::optim::AdamWSettings,
        model: &Gpt,
        device: &Device,
    ) -> Result<AdamW, TrainError> {
        let mut optimizer = AdamW::new(settings);
        optimizer.t = self.state.optimizer_t;
        let shapes: BTreeMap<String, usize> = optimizer_names(model);
        for (name, (shape, m)) in &self.optimizer {
            let Some(param) = name.strip_prefix("m.") else {
                continue;
            };
            let expected = shapes.get(param).copied();
            let (vshape, v) = self.optimizer.get(&format!("v.{param}")).ok_or_else(|| {
                TrainError::Checkpoint {
                    path: PathBuf::from("optimizer.safetensors"),
                    reason: format!("m.{param} has no matching v.{param}"),
                }
            })?;
            if expected != Some(shape[0]) || vshape != shape {
                return Err(TrainError::Checkpoint {
                    path: PathBuf::from("optimizer.safetensors"),
                    reason: format!(
                        "optimizer state for {param:?} has shape {shape:?}, but the model's parameter has {expected:?} elements"
                    ),
                });
            }
            let tensor = |values: &Vec<f32>| {
                Tensor::<1>::from_data(TensorData::new(values.clone(), [shape[0]]), device)
            };
            optimizer.state.insert(
                param.to_string(),
                Moments {
                    m: tensor(m),
                    v: tensor(v),
                },
            );
        }
        Ok(optimizer)
    }
}

/// The optimizer's names for a model's parameters (Burn module paths) and their sizes.
pub fn optimizer_names(model: &Gpt) -> BTreeMap<String, usize> {
    use burn::module::{Module, ModuleVisitor, Param};
    struct Names {
        path: Vec<String>,
        out: BTreeMap<String, usize>,
    }
    impl ModuleVisitor for Names {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out
                .insert(self.path.join("."), param.val().shape().num_elements());
        }
    }
    let mut names = Names {
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    model.visit(&mut names);
    names.out
}
