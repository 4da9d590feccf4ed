//! Weight names and weight files: one naming scheme for every model, its optimizer state
//! and its gradients.
//!
//! A parameter's name is its module path: the field names from the model down to the
//! parameter, joined by dots, with list positions as numbers (`blocks.3.attn.query.weight`,
//! `encoder.0.self_attn.key.bias`). [`visit_named`] and [`map_named`] walk a module with
//! these names, and everything that names a parameter goes through them: weight files
//! ([`module_tensors`], [`load_module_tensors`]), the optimizer's moments and gradients
//! (`qkv-trainer`), checkpoints. The one table of other names is the Hugging Face GPT-2
//! import (`crate::gpt2`); names written by older versions of qkv are read through
//! [`current_name`].
//!
//! For a [`Gpt`] the names are:
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

use std::borrow::Cow;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

use crate::error::WeightsError;
use crate::gpt::Gpt;

/// Tensors on the host by name: `name -> (shape, values)`.
pub type HostTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

impl Gpt {
    /// The names and shapes of every parameter, in module order.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        struct Shapes(Vec<(String, Vec<usize>)>);
        impl NamedVisitor for Shapes {
            fn visit<const D: usize>(&mut self, name: &str, param: &Param<Tensor<D>>) {
                self.0.push((name.to_string(), param.val().dims().to_vec()));
            }
        }
        let mut shapes = Shapes(Vec::new());
        visit_named(self, &mut shapes);
        shapes.0
    }

    /// The number of scalar parameters (tied weights counted once).
    pub fn parameter_count(&self) -> usize {
        self.parameter_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Every parameter as `(name, shape, values)` on the host, sorted by name.
    pub fn named_parameters(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        module_tensors(self)
            .into_iter()
            .map(|(name, (shape, values))| (name, shape, values))
            .collect()
    }

    /// The model's weights as safetensors bytes.
    pub fn to_safetensors_bytes(&self) -> Vec<u8> {
        serialize_host(&module_tensors(self), None)
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
        let tensors = read_safetensors_file(path)?;
        self.load_named(tensors, path)
    }

    /// Loads named host tensors into the model, with the checks of
    /// [`load_safetensors`](Self::load_safetensors).
    pub fn load_named(self, tensors: HostTensors, path: &Path) -> Result<Self, WeightsError> {
        load_module_tensors(self, tensors, path)
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
        if element_size(view.dtype()).is_none() {
            return Err(WeightsError::UnsupportedDtype {
                name,
                dtype: format!("{:?}", view.dtype()),
                path: shown,
            });
        }
        let mut values = Vec::new();
        extend_f32(&mut values, view.dtype(), view.data());
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// Bytes per element of the dtypes weight files may hold (converted to `f32` on reading).
fn element_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::BF16 => Some(2),
        _ => None,
    }
}

/// Appends the little-endian `bytes` of `dtype` elements (one of [`element_size`]'s, whole
/// elements) to `out` as `f32`.
fn extend_f32(out: &mut Vec<f32>, dtype: Dtype, bytes: &[u8]) {
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        _ => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
    }
}

/// [`read_safetensors`] from a file, one tensor at a time: the file is never held in memory
/// whole, so loading needs the converted tensors' memory and no second copy (a GPT-2's
/// 500 MB are read as 500 MB, not 1 GB). Every size is checked against the file's length
/// before anything is allocated.
pub fn read_safetensors_file(path: &Path) -> Result<HostTensors, WeightsError> {
    use std::io::{Read, Seek, SeekFrom};
    /// The safetensors crate's own limit on the JSON header.
    const MAX_HEADER: u64 = 100_000_000;
    let shown = path.display().to_string();
    let bad = |reason: String| WeightsError::NotSafetensors {
        path: shown.clone(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let len = file.metadata().map_err(|e| io_error(path, e))?.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix)
        .map_err(|_| bad("shorter than the 8-byte header length".into()))?;
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER || n > len - 8 {
        return Err(bad(format!(
            "a header of {n} bytes in a file of {len} bytes (at most {MAX_HEADER})"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| io_error(path, e))?;
    let metadata: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let data_start = 8 + n;
    let data_len = len - data_start;
    let mut infos: Vec<(String, &safetensors::tensor::TensorInfo)> =
        metadata.tensors().into_iter().collect();
    infos.sort_by_key(|(_, info)| info.data_offsets.0);
    let mut out = BTreeMap::new();
    let mut buffer = vec![0u8; 1 << 20];
    for (name, info) in infos {
        let Some(element) = element_size(info.dtype) else {
            return Err(WeightsError::UnsupportedDtype {
                name,
                dtype: format!("{:?}", info.dtype),
                path: shown,
            });
        };
        let count = info
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("{name}: shape {:?} overflows", info.shape)))?;
        let (start, end) = info.data_offsets;
        let fits = count
            .checked_mul(element)
            .is_some_and(|bytes| end.checked_sub(start) == Some(bytes))
            && end as u64 <= data_len;
        if !fits {
            return Err(bad(format!(
                "{name}: shape {:?} and offsets {start}..{end} disagree, or pass the end of the data ({data_len} bytes)",
                info.shape
            )));
        }
        file.seek(SeekFrom::Start(data_start + start as u64))
            .map_err(|e| io_error(path, e))?;
        let mut values = Vec::with_capacity(count);
        let mut left = end - start;
        while left > 0 {
            let chunk = left.min(buffer.len());
            file.read_exact(&mut buffer[..chunk])
                .map_err(|e| io_error(path, e))?;
            extend_f32(&mut values, info.dtype, &buffer[..chunk]);
            left -= chunk;
        }
        out.insert(name, (info.shape.clone(), values));
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

/// Reads every float parameter of a module with its name (see the module docs).
pub trait NamedVisitor {
    /// Called once per parameter, in module order.
    fn visit<const D: usize>(&mut self, name: &str, param: &Param<Tensor<D>>);
}

/// Replaces every float parameter of a module, given its name (see the module docs).
pub trait NamedMapper {
    /// Called once per parameter, in module order; returns the parameter to keep.
    fn map<const D: usize>(&mut self, name: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>>;
}

/// The one place that turns Burn's module walk into parameter names.
struct Named<T> {
    path: Vec<String>,
    inner: T,
}

impl<T> Named<T> {
    fn new(inner: T) -> Self {
        Self {
            path: Vec::new(),
            inner,
        }
    }

    fn enter(&mut self, name: &str) {
        self.path.push(name.to_string());
    }

    fn exit(&mut self) {
        self.path.pop();
    }

    fn name(&self) -> String {
        self.path.join(".")
    }
}

impl<V: NamedVisitor> ModuleVisitor for Named<&mut V> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = self.name();
        self.inner.visit(&name, param);
    }
}

impl<F: NamedMapper> ModuleMapper for Named<&mut F> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.name();
        self.inner.map(&name, param)
    }
}

/// Walks `module`, handing each float parameter and its name to `visitor`.
pub fn visit_named<M: Module, V: NamedVisitor>(module: &M, visitor: &mut V) {
    module.visit(&mut Named::new(visitor));
}

/// Rebuilds `module`, each float parameter replaced by what `mapper` returns for it.
pub fn map_named<M: Module, F: NamedMapper>(module: M, mapper: &mut F) -> M {
    module.map(&mut Named::new(mapper))
}

/// A parameter name as this version writes it, given one that an older version may have
/// written: LayerNorm's scale and shift were saved as `….gamma` and `….beta` before they
/// took PyTorch's names `….weight` and `….bias`. Every reader of saved names goes through it.
pub fn current_name(name: &str) -> Cow<'_, str> {
    if let Some(norm) = name.strip_suffix(".gamma") {
        Cow::Owned(format!("{norm}.weight"))
    } else if let Some(norm) = name.strip_suffix(".beta") {
        Cow::Owned(format!("{norm}.bias"))
    } else {
        Cow::Borrowed(name)
    }
}

/// Every float parameter of any module under its name (see the module docs), copied to the
/// host. Tied or shared parameters appear once per path.
pub fn module_tensors<M: Module>(module: &M) -> HostTensors {
    struct Collect(HostTensors);
    impl NamedVisitor for Collect {
        fn visit<const D: usize>(&mut self, name: &str, param: &Param<Tensor<D>>) {
            let t = param.val();
            let shape = t.dims().to_vec();
            let values = t
                .into_data()
                .try_into_vec_as::<f32>()
                .expect("float parameter");
            self.0.insert(name.to_string(), (shape, values));
        }
    }
    let mut collect = Collect(BTreeMap::new());
    visit_named(module, &mut collect);
    collect.0
}

/// Loads host tensors named as [`module_tensors`] names them (or as older versions did, see
/// [`current_name`]) into `module`: every parameter must be present with its shape, and no
/// other tensor may be left over. Each value keeps its parameter's id, device and gradient
/// tracking. `path` names the source in errors.
pub fn load_module_tensors<M: Module>(
    module: M,
    tensors: HostTensors,
    path: &Path,
) -> Result<M, WeightsError> {
    struct Load {
        tensors: HostTensors,
        shown: String,
        error: Option<WeightsError>,
    }
    impl NamedMapper for Load {
        fn map<const D: usize>(&mut self, name: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            // The shape without initialising the parameter: a model built to be loaded
            // never draws its random initial values.
            let expected = param.lazy_shape().to_vec();
            match self.tensors.remove(name) {
                None => {
                    self.error.get_or_insert(WeightsError::Missing {
                        name: name.to_string(),
                        expected,
                        path: self.shown.clone(),
                    });
                    param
                }
                Some((found, _)) if found != expected => {
                    self.error.get_or_insert(WeightsError::ShapeMismatch {
                        name: name.to_string(),
                        found,
                        expected,
                        path: self.shown.clone(),
                    });
                    param
                }
                Some((shape, values)) => {
                    let t = Tensor::<D>::from_data(
                        TensorData::new(values, shape),
                        &param.lazy_device(),
                    );
                    let id = param.id;
                    param.transform_for_load(t, id)
                }
            }
        }
    }
    let mut load = Load {
        tensors: tensors
            .into_iter()
            .map(|(name, t)| (current_name(&name).into_owned(), t))
            .collect(),
        shown: path.display().to_string(),
        error: None,
    };
    let module = map_named(module, &mut load);
    if let Some(error) = load.error {
        return Err(error);
    }
    if !load.tensors.is_empty() {
        return Err(WeightsError::Unexpected {
            names: load.tensors.into_keys().collect(),
            path: load.shown,
        });
    }
    Ok(module)
}
