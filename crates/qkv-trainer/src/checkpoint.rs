//! Checkpoints: weights, optimizer state and the run's position, written so that a crash at
//! any moment, and any number of crashes in a row, leave a complete checkpoint loadable.
//!
//! A checkpoint is a directory `checkpoint/` in the run directory holding
//! `model.safetensors` (the weights), `optimizer.safetensors` (AdamW's `m.<name>` and
//! `v.<name>`, by module path) and `state.json` (step, RNG state, optimizer step count, the
//! task and its config). One format for every [`Task`](crate::Task).
//!
//! A save writes `checkpoint.tmp/`, every file synced, then swaps it in with two renames
//! (`checkpoint/` → `checkpoint.old/`, `checkpoint.tmp/` → `checkpoint/`), syncing the run
//! directory after each, and removes `checkpoint.old/`. So at every instant either
//! `checkpoint/` is complete, or it is absent and `checkpoint.old/` is complete. Every reader
//! goes through [`latest`], which finds that one, and a save that finds only
//! `checkpoint.old/` (a crash between the renames) first moves it back, so the next crash
//! cannot take it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::prelude::*;
use qkv_transformer::weights::{
    HostTensors, NamedVisitor, current_name, read_safetensors, serialize_host, sync_dir,
    visit_named,
};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::optim::{AdamW, AdamWSettings, Moments};
use crate::precision::LossScaler;

/// Where a run stands, saved beside the weights as `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    /// Updates completed.
    pub step: usize,
    /// The batching generator's state.
    pub rng_state: u64,
    /// AdamW's update count.
    pub optimizer_t: u64,
    /// The task's kind (`lm`, `translate`); runs saved before there were two are `lm`.
    #[serde(default = "lm")]
    pub task: String,
    /// The task's whole config.
    pub config: serde_json::Value,
    /// The vocabulary size the model was built with (language models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// The f16 loss scaler, so a resumed run goes on with the same scale (f16 runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<LossScaler>,
}

fn lm() -> String {
    "lm".into()
}

/// What a checkpoint holds, once loaded.
#[derive(Debug)]
pub struct Checkpoint {
    /// The directory it was read from (`checkpoint/` or `checkpoint.old/`).
    pub dir: PathBuf,
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

/// The last complete checkpoint of a run: `checkpoint/`, or `checkpoint.old/` when a crash
/// came between a save's two renames. The error says what the directory holds instead.
pub fn latest(run_dir: &Path) -> Result<PathBuf, TrainError> {
    let current = checkpoint_dir(run_dir);
    if current.join("state.json").is_file() {
        return Ok(current);
    }
    let old = run_dir.join("checkpoint.old");
    if old.join("state.json").is_file() {
        return Ok(old);
    }
    let what = if !run_dir.is_dir() {
        "the directory does not exist"
    } else if run_dir.join("checkpoint.tmp").is_dir() {
        "it has only checkpoint.tmp/, a save that never finished: the run crashed before its first checkpoint"
    } else {
        "it has no checkpoint/ (train into it with cargo xtask train --out DIR)"
    };
    Err(TrainError::Checkpoint {
        path: run_dir.to_path_buf(),
        reason: format!("no complete checkpoint: {what}"),
    })
}

/// Whether `dir` holds a run (a checkpoint, a config, or metrics), so that starting a new
/// run there would overwrite something.
pub fn holds_a_run(dir: &Path) -> bool {
    [
        "checkpoint",
        "checkpoint.old",
        "checkpoint.tmp",
        "config.json",
        "translate.json",
        "metrics.jsonl",
    ]
    .iter()
    .any(|name| dir.join(name).exists())
}

/// The points of a save, in order, at which a test can stop it as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavePoint {
    /// A `checkpoint.old/` left alone by an earlier crash was moved back.
    Recovered,
    /// File number `n` (0-based: model, optimizer, state) of `checkpoint.tmp/` is written.
    FileWritten(usize),
    /// `checkpoint/` was renamed to `checkpoint.old/`.
    OldMoved,
    /// `checkpoint.tmp/` was renamed to `checkpoint/`.
    NewMoved,
    /// `checkpoint.old/` was removed: the save is done.
    Done,
}

/// Called at each [`SavePoint`]; an error stops the save there and is returned.
pub type SaveHook = Box<dyn FnMut(SavePoint) -> Result<(), TrainError> + Send>;

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

fn remove_dir(dir: &Path) -> Result<(), TrainError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(dir)(e)),
        _ => Ok(()),
    }
}

/// Saves a model's weights (as `weights`, a safetensors file), the optimizer and the state
/// into `run_dir/checkpoint/`, with the guarantees of the [module documentation](self).
pub fn save(
    run_dir: &Path,
    weights: Vec<u8>,
    optimizer: &AdamW,
    state: &RunState,
    hook: &mut Option<SaveHook>,
) -> Result<(), TrainError> {
    let mut at = |point| match hook {
        Some(hook) => hook(point),
        None => Ok(()),
    };
    let tmp = run_dir.join("checkpoint.tmp");
    let old = run_dir.join("checkpoint.old");
    let target = checkpoint_dir(run_dir);
    let sync_run = || sync_dir(run_dir).map_err(io(run_dir));
    if !target.join("state.json").is_file() && old.join("state.json").is_file() {
        remove_dir(&target)?;
        std::fs::rename(&old, &target).map_err(io(&old))?;
        sync_run()?;
        at(SavePoint::Recovered)?;
    }
    remove_dir(&tmp)?;
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
        ("model.safetensors", weights),
        ("optimizer.safetensors", serialize_host(&moments, None)),
        ("state.json", state_json.into_bytes()),
    ];
    for (n, (name, bytes)) in files.iter().enumerate() {
        write_synced(&tmp.join(name), bytes)?;
        at(SavePoint::FileWritten(n))?;
    }
    sync_dir(&tmp).map_err(io(&tmp))?;
    // `checkpoint/` is complete here (or absent), so an `old` is a leftover.
    remove_dir(&old)?;
    if target.exists() {
        std::fs::rename(&target, &old).map_err(io(&target))?;
        sync_run()?;
        at(SavePoint::OldMoved)?;
    }
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    sync_run()?;
    at(SavePoint::NewMoved)?;
    remove_dir(&old)?;
    sync_run()?;
    at(SavePoint::Done)
}

impl Checkpoint {
    /// Loads the last complete checkpoint of `run_dir` (see [`latest`]).
    pub fn load(run_dir: &Path) -> Result<Self, TrainError> {
        let dir = latest(run_dir)?;
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
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
            dir,
        })
    }

    /// Where the weights were read from (for error messages).
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }

    /// Rebuilds the optimizer on `device` for `model`, checking that every moment matches a
    /// parameter.
    pub fn optimizer<M: Module>(
        &self,
        settings: AdamWSettings,
        model: &M,
        device: &Device,
    ) -> Result<AdamW, TrainError> {
        let path = self.dir.join("optimizer.safetensors");
        let mut optimizer = AdamW::new(settings);
        optimizer.t = self.state.optimizer_t;
        let shapes: BTreeMap<String, usize> = optimizer_names(model);
        for (name, (shape, m)) in &self.optimizer {
            let Some(param) = name.strip_prefix("m.") else {
                if !name.starts_with("v.") {
                    return Err(TrainError::Checkpoint {
                        path,
                        reason: format!("{name:?} is neither m.<param> nor v.<param>"),
                    });
                }
                continue;
            };
            let expected = shapes.get(current_name(param).as_ref()).copied();
            let (vshape, v) = self.optimizer.get(&format!("v.{param}")).ok_or_else(|| {
                TrainError::Checkpoint {
                    path: path.clone(),
                    reason: format!("m.{param} has no matching v.{param}"),
                }
            })?;
            if shape.len() != 1 || expected != Some(shape[0]) || vshape != shape {
                return Err(TrainError::Checkpoint {
                    path,
                    reason: format!(
                        "optimizer state for {param:?} has shape {shape:?}, but the model's parameter has {expected:?} elements"
                    ),
                });
            }
            let tensor = |values: &Vec<f32>| {
                Tensor::<1>::from_data(TensorData::new(values.clone(), [shape[0]]), device)
            };
            optimizer.state.insert(
                current_name(param).into_owned(),
                Moments {
                    m: tensor(m),
                    v: tensor(v),
                },
            );
        }
        Ok(optimizer)
    }
}

/// The optimizer's names for a model's parameters (their module paths, see
/// `qkv_transformer::weights`) and their sizes.
pub fn optimizer_names<M: Module>(model: &M) -> BTreeMap<String, usize> {
    struct Names(BTreeMap<String, usize>);
    impl NamedVisitor for Names {
        fn visit<const D: usize>(&mut self, name: &str, param: &Param<Tensor<D>>) {
            self.0
                .insert(name.to_string(), param.val().shape().num_elements());
        }
    }
    let mut names = Names(BTreeMap::new());
    visit_named(model, &mut names);
    names.0
}
