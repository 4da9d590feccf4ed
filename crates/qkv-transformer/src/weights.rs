//! Saving and loading a [`Gpt`] as safetensors, under stable, documented tensor names.
//!
//! | name | shape |
//! | --- | --- |
//! | `token_embedding.weight` | `[vocab_size, d_model]` |
//! | `position_embedding.weight` (learned positions only) | `[block_size, d_model]` |
//! | `blocks.{i}.ln_1.weight`, `.bias` | `[d_model]` |
//! | `blocks.{i}.attn.{query,key,value,output}.weight` | `[d_model, d_model]` |
//! | `blocks.{i}.attn.{query,key,value,output}.bias` | `[d_model]` |
//! | `blocks.{i}.ln_2.weight`, `.bias` | `[d_model]` |
//! | `blocks.{i}.mlp.fc.weight`, `.bias` | `[d_model, d_ff]`, `[d_ff]` |
//! | `blocks.{i}.mlp.proj.weight`, `.bias` | `[d_ff, d_model]`, `[d_model]` |
//! | `ln_f.weight`, `.bias` | `[d_model]` |
//! | `lm_head.weight` (untied head only) | `[d_model, vocab_size]` |
//!
//! Biases are present only when the config has `bias = true`. Linear weights are stored
//! `[d_in, d_out]` (input × weight), the layout of Burn's `Linear` and of GPT-2's `Conv1D`;
//! a PyTorch `nn.Linear` weight is the transpose. Values are `F32`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

use crate::error::WeightsError;
use crate::gpt::Gpt;
use crate::norm::LayerNorm;

/// Tensors on the host by name: `name -> (shape, values)`.
pub type HostTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// A mutable handle on one parameter of the model, of rank 1 or 2.
pub(crate) enum Slot<'a> {
    One(&'a mut Param<Tensor<1>>),
    Two(&'a mut Param<Tensor<2>>),
}

impl Slot<'_> {
    fn shape(&self) -> Vec<usize> {
        match self {
            Slot::One(p) => p.val().dims().to_vec(),
            Slot::Two(p) => p.val().dims().to_vec(),
        }
    }

    fn values(&self) -> Vec<f32> {
        let data = match self {
            Slot::One(p) => p.val().into_data(),
            Slot::Two(p) => p.val().into_data(),
        };
        data.try_into_vec_as::<f32>().expect("float parameters")
    }

    /// Replaces the value, keeping the parameter's id, device and gradient tracking.
    fn set(&mut self, values: Vec<f32>) {
        fn replace<const D: usize>(p: &mut Param<Tensor<D>>, values: Vec<f32>) {
            let updated = p.clone().map(|old| {
                let shape = old.shape();
                let fresh = Tensor::<D>::from_data(TensorData::new(values, shape), &old.device());
                if old.is_require_grad() {
                    fresh.require_grad()
                } else {
                    fresh
                }
            });
            *p = updated;
        }
        match self {
            Slot::One(p) => replace(p, values),
            Slot::Two(p) => replace(p, values),
        }
    }
}

fn linear_slots<'a>(prefix: &str, linear: &'a mut Linear, out: &mut Vec<(String, Slot<'a>)>) {
    out.push((format!("{prefix}.weight"), Slot::Two(&mut linear.weight)));
    if let Some(bias) = &mut linear.bias {
        out.push((format!("{prefix}.bias"), Slot::One(bias)));
    }
}

fn norm_slots<'a>(prefix: &str, norm: &'a mut LayerNorm, out: &mut Vec<(String, Slot<'a>)>) {
    out.push((format!("{prefix}.weight"), Slot::One(&mut norm.gamma)));
    if let Some(beta) = &mut norm.beta {
        out.push((format!("{prefix}.bias"), Slot::One(beta)));
    }
}

impl Gpt {
    /// Every parameter under its stable name (see the module docs), in a fixed order.
    pub(crate) fn slots(&mut self) -> Vec<(String, Slot<'_>)> {
        let mut out = Vec::new();
        out.push((
            "token_embedding.weight".to_string(),
            Slot::Two(&mut self.token_embedding.weight),
        ));
        if let Some(wpe) = &mut self.position_embedding {
            out.push((
                "position_embedding.weight".to_string(),
                Slot::Two(&mut wpe.weight),
            ));
        }
        for (i, block) in self.blocks.iter_mut().enumerate() {
            norm_slots(&format!("blocks.{i}.ln_1"), &mut block.ln_1, &mut out);
            linear_slots(
                &format!("blocks.{i}.attn.query"),
                &mut block.attn.query,
                &mut out,
            );
            linear_slots(
                &format!("blocks.{i}.attn.key"),
                &mut block.attn.key,
                &mut out,
            );
            linear_slots(
                &format!("blocks.{i}.attn.value"),
                &mut block.attn.value,
                &mut out,
            );
            linear_slots(
                &format!("blocks.{i}.attn.output"),
                &mut block.attn.output,
                &mut out,
            );
            norm_slots(&format!("blocks.{i}.ln_2"), &mut block.ln_2, &mut out);
            linear_slots(&format!("blocks.{i}.mlp.fc"), &mut block.mlp.fc, &mut out);
            linear_slots(
                &format!("blocks.{i}.mlp.proj"),
                &mut block.mlp.proj,
                &mut out,
            );
        }
        norm_slots("ln_f", &mut self.ln_f, &mut out);
        if let Some(head) = &mut self.lm_head {
            linear_slots("lm_head", head, &mut out);
        }
        out
    }

    /// The names and shapes of every parameter, in the order [`save_safetensors`] writes them.
    ///
    /// [`save_safetensors`]: Self::save_safetensors
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut copy = self.clone();
        copy.slots()
            .into_iter()
            .map(|(name, slot)| (name, slot.shape()))
            .collect()
    }

    /// The number of scalar parameters (tied weights counted once).
    pub fn parameter_count(&self) -> usize {
        self.parameter_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Every parameter as `(name, shape, values)` on the host.
    pub fn named_parameters(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut copy = self.clone();
        copy.slots()
            .into_iter()
            .map(|(name, slot)| (name, slot.shape(), slot.values()))
            .collect()
    }

    /// The model's weights as safetensors bytes.
    pub fn to_safetensors_bytes(&self) -> Vec<u8> {
        let tensors: HostTensors = self
            .named_parameters()
            .into_iter()
            .map(|(name, shape, values)| (name, (shape, values)))
            .collect();
        serialize_host(&tensors, None)
    }

    /// Writes the weights to `path` atomically: to a temporary file beside it, flushed, then
    /// renamed over `path`, so a crash mid-write leaves any previous file whole.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), WeightsError> {
        write_atomically(path, &self.to_safetensors_bytes())
    }

    /// Loads weights saved by [`save_safetensors`](Self::save_safetensors) into this model
    /// (whose config must match): every tensor must be present with the right shape, and the
    /// file must hold no others.
    pub fn load_safetensors(self, path: &Path) -> Result<Self, WeightsError> {
        let bytes = std::fs::read(path).map_err(|source| io_error(path, source))?;
        let tensors = read_safetensors(&bytes, path)?;
        self.load_named(tensors, path)
    }

    /// Loads named host tensors into the model, with the checks of
    /// [`load_safetensors`](Self::load_safetensors).
    pub fn load_named(
        mut self,
        mut tensors: HostTensors,
        path: &Path,
    ) -> Result<Self, WeightsError> {
        let shown = path.display().to_string();
        for (name, mut slot) in self.slots() {
            let expected = slot.shape();
            let Some((found, values)) = tensors.remove(&name) else {
                return Err(WeightsError::Missing {
                    name,
                    expected,
                    path: shown,
                });
            };
            if found != expected {
                return Err(WeightsError::ShapeMismatch {
                    name,
                    found,
                    expected,
                    path: shown,
                });
            }
            slot.set(values);
        }
        if !tensors.is_empty() {
            return Err(WeightsError::Unexpected {
                names: tensors.into_keys().collect(),
                path: shown,
            });
        }
        Ok(self)
    }
}

/// Parses safetensors bytes into `name -> (shape, f32 values)`, converting F16 and BF16.
pub fn read_safetensors(bytes: &[u8], path: &Path) -> Result<HostTensors, WeightsError> {
    let shown = path.display().to_string();
    let file =
        safetensors::SafeTensors::deserialize(bytes).map_err(|e| WeightsError::NotSafetensors {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    let mut out = BTreeMap::new();
    for (name, view) in file.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(WeightsError::UnsupportedDtype {
                    name,
                    dtype: format!("{other:?}"),
                    path: shown,
                });
            }
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// Host tensors (and optional string metadata) as safetensors bytes, all `F32`.
pub fn serialize_host(
    tensors: &HostTensors,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Vec<u8> {
    let bytes: Vec<(&String, &Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            (
                name,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes.iter().map(|(name, shape, raw)| {
        let view =
            TensorView::new(Dtype::F32, (*shape).clone(), raw).expect("sizes are consistent");
        ((*name).clone(), view)
    });
    safetensors::serialize(views, metadata).expect("serialising in memory cannot fail")
}

/// Writes `bytes` to `path` through a temporary file and a rename, the file and then its
/// directory flushed to disk: after a crash `path` holds either the old bytes or the new
/// ones, never a mixture.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), WeightsError> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        io_error(path, source)
    })
}

/// Flushes a directory's entries (creations, renames, removals) to disk. Without it a rename
/// can be lost in a power cut although the renamed file's data was synced.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

fn io_error(path: &Path, source: std::io::Error) -> WeightsError {
    WeightsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Every float parameter of any module, named by its field path (`encoder.0.self_attn.query.weight`),
/// copied to the host. Tied or shared parameters appear once per path.
pub fn module_tensors<M: Module>(module: &M) -> HostTensors {
    struct Collect {
        path: Vec<String>,
        out: HostTensors,
    }
    impl burn::module::ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let shape = t.dims().to_vec();
            let values = t
                .into_data()
                .try_into_vec_as::<f32>()
                .expect("float parameter");
            self.out.insert(self.path.join("."), (shape, values));
        }
    }
    let mut visitor = Collect {
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

/// Loads host tensors named as [`module_tensors`] names them into `module`: every parameter
/// must be present with its shape, and no other tensor may be left over. `path` names the
/// source in errors.
pub fn load_module_tensors<M: Module>(
    module: M,
    mut tensors: HostTensors,
    path: &Path,
) -> Result<M, WeightsError> {
    struct Load<'a> {
        path: Vec<String>,
        tensors: &'a mut HostTensors,
        shown: String,
        error: Option<WeightsError>,
    }
    impl burn::module::ModuleMapper for Load<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let name = self.path.join(".");
            let expected = param.val().dims().to_vec();
            match self.tensors.remove(&name) {
                None => {
                    self.error.get_or_insert(WeightsError::Missing {
                        name,
                        expected,
                        path: self.shown.clone(),
                    });
                    param
                }
                Some((found, _)) if found != expected => {
                    self.error.get_or_insert(WeightsError::ShapeMismatch {
                        name,
                        found,
                        expected,
                        path: self.shown.clone(),
                    });
                    param
                }
                Some((shape, values)) => param.map(|p| {
                    let device = p.device();
                    let tracked = p.is_require_grad();
                    let t = Tensor::<D>::from_data(TensorData::new(values, shape), &device);
                    if tracked { t.require_grad() } else { t }
                }),
            }
        }
    }
    let mut loader = Load {
        path: Vec::new(),
        tensors: &mut tensors,
        shown: path.display().to_string(),
        error: None,
    };
    let module = module.map(&mut loader);
    if let Some(error) = loader.error {
        return Err(error);
    }
    if !tensors.is_empty() {
        return Err(WeightsError::Unexpected {
            names: tensors.into_keys().collect(),
            path: path.display().to_string(),
        });
    }
    Ok(module)
}
