//! Importing GPT-2 checkpoints saved in the Hugging Face layout: a directory with
//! `config.json` and `model.safetensors`.
//!
//! Hugging Face's GPT-2 stores its linear layers as `Conv1D`, whose weight is `[d_in, d_out]`
//! (the transpose of `nn.Linear`, and the layout of Burn's `Linear`), and fuses the query,
//! key and value projections into one `c_attn` of width `3·d_model`, which is split here.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use serde::Deserialize;

use crate::config::{Activation, GptConfig};
use crate::error::{ModelError, WeightsError};
use crate::gpt::Gpt;
use crate::weights::{HostTensors, read_safetensors_file};

/// The fields of a Hugging Face GPT-2 `config.json` that shape the model.
#[derive(Debug, Deserialize)]
struct HfGpt2Config {
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    #[serde(default)]
    n_inner: Option<usize>,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    activation_function: String,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
    #[serde(default)]
    model_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_activation() -> String {
    "gelu_new".into()
}
fn default_true() -> bool {
    true
}

/// Reads a Hugging Face GPT-2 `config.json` into our config.
pub fn gpt2_config_from_hf(path: &Path) -> Result<GptConfig, WeightsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| WeightsError::Io {
        path: shown.clone(),
        source,
    })?;
    let hf: HfGpt2Config = serde_json::from_str(&text).map_err(|e| WeightsError::BadConfig {
        path: shown.clone(),
        reason: format!("not a GPT-2 config.json: {e}"),
    })?;
    if let Some(kind) = &hf.model_type
        && kind != "gpt2"
    {
        return Err(WeightsError::BadConfig {
            path: shown,
            reason: format!("model_type is {kind:?}, not \"gpt2\""),
        });
    }
    let activation = match hf.activation_function.as_str() {
        "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
        "gelu" => Activation::Gelu,
        other => {
            return Err(WeightsError::BadConfig {
                path: shown,
                reason: format!("unsupported activation_function {other:?}"),
            });
        }
    };
    let d_ff = hf.n_inner.unwrap_or(4 * hf.n_embd);
    if !d_ff.is_multiple_of(hf.n_embd.max(1)) {
        return Err(WeightsError::BadConfig {
            path: shown,
            reason: format!("n_inner {d_ff} is not a multiple of n_embd {}", hf.n_embd),
        });
    }
    Ok(GptConfig::new(
        hf.vocab_size,
        hf.n_positions,
        hf.n_layer,
        hf.n_head,
        hf.n_embd,
    )
    .with_mlp_ratio(d_ff / hf.n_embd.max(1))
    .with_layer_norm_eps(hf.layer_norm_epsilon)
    .with_activation(activation)
    .with_tie_embeddings(hf.tie_word_embeddings)
    .with_dropout(0.0))
}

/// Loads a GPT-2 from a Hugging Face directory (`config.json` + `model.safetensors`).
pub fn load_hf_gpt2(dir: &Path, device: &Device) -> Result<(Gpt, GptConfig), ModelError> {
    let config = gpt2_config_from_hf(&dir.join("config.json"))?;
    let weights_path = dir.join("model.safetensors");
    let hf = read_safetensors_file(&weights_path)?;
    let ours = rename_hf_gpt2(hf, &config, &weights_path)?;
    let model = config.try_init(device)?.load_named(ours, &weights_path)?;
    Ok((model, config))
}

/// Hugging Face's names for the parameters of one block (`h.{i}.…`) and ours
/// (`blocks.{i}.…`), apart from `attn.c_attn`, which is split into query, key and value.
const HF_BLOCK_NAMES: &[(&str, &str)] = &[
    ("ln_1.weight", "ln_1.weight"),
    ("ln_1.bias", "ln_1.bias"),
    ("attn.c_proj.weight", "attn.output.weight"),
    ("attn.c_proj.bias", "attn.output.bias"),
    ("ln_2.weight", "ln_2.weight"),
    ("ln_2.bias", "ln_2.bias"),
    ("mlp.c_fc.weight", "mlp.fc.weight"),
    ("mlp.c_fc.bias", "mlp.fc.bias"),
    ("mlp.c_proj.weight", "mlp.proj.weight"),
    ("mlp.c_proj.bias", "mlp.proj.bias"),
];

/// Hugging Face's names for the parameters outside the blocks and ours, apart from an
/// untied `lm_head.weight`, which is transposed.
const HF_TOP_NAMES: &[(&str, &str)] = &[
    ("wte.weight", "token_embedding.weight"),
    ("wpe.weight", "position_embedding.weight"),
    ("ln_f.weight", "ln_f.weight"),
    ("ln_f.bias", "ln_f.bias"),
];

/// Our name for a Hugging Face name, by `table`; a name not in it is kept, so that loading
/// reports it as unexpected.
fn renamed<'a>(table: &[(&str, &'a str)], hf: &'a str) -> &'a str {
    table
        .iter()
        .find(|(from, _)| *from == hf)
        .map_or(hf, |(_, to)| to)
}

/// Maps Hugging Face GPT-2 names to ours (the tables above), splitting `c_attn` into query,
/// key and value.
fn rename_hf_gpt2(
    hf: HostTensors,
    config: &GptConfig,
    path: &Path,
) -> Result<HostTensors, WeightsError> {
    let d = config.d_model;
    let mut out = BTreeMap::new();
    for (name, (shape, values)) in hf {
        let name = name
            .strip_prefix("transformer.")
            .unwrap_or(&name)
            .to_string();
        // Buffers of older checkpoints (the causal mask), and a tied head that repeats wte.
        if name.ends_with(".attn.bias") && shape.len() == 4
            || name.ends_with(".attn.masked_bias")
            || (name == "lm_head.weight" && config.tie_embeddings)
        {
            continue;
        }
        let renamed = if let Some(rest) = name.strip_prefix("h.") {
            let (layer, rest) = rest.split_once('.').unwrap_or((rest, ""));
            let prefix = format!("blocks.{layer}");
            match rest {
                "attn.c_attn.weight" | "attn.c_attn.bias" => {
                    let is_weight = rest.ends_with("weight");
                    let expected = if is_weight {
                        vec![d, 3 * d]
                    } else {
                        vec![3 * d]
                    };
                    if shape != expected {
                        return Err(WeightsError::ShapeMismatch {
                            name: format!("h.{layer}.{rest}"),
                            found: shape,
                            expected,
                            path: path.display().to_string(),
                        });
                    }
                    let suffix = if is_weight { "weight" } else { "bias" };
                    for (part, which) in ["query", "key", "value"].iter().enumerate() {
                        let piece: Vec<f32> = if is_weight {
                            let mut piece = Vec::with_capacity(d * d);
                            for row in values.chunks_exact(3 * d) {
                                piece.extend_from_slice(&row[part * d..(part + 1) * d]);
                            }
                            piece
                        } else {
                            values[part * d..(part + 1) * d].to_vec()
                        };
                        let piece_shape = if is_weight { vec![d, d] } else { vec![d] };
                        out.insert(
                            format!("{prefix}.attn.{which}.{suffix}"),
                            (piece_shape, piece),
                        );
                    }
                    continue;
                }
                other => format!("{prefix}.{}", renamed(HF_BLOCK_NAMES, other)),
            }
        } else {
            match name.as_str() {
                "lm_head.weight" => {
                    // An untied head is nn.Linear, [vocab, d_model]; ours is [d_model, vocab].
                    let [rows, cols] = [shape[0], shape.get(1).copied().unwrap_or(1)];
                    let mut t = vec![0.0; values.len()];
                    for r in 0..rows {
                        for c in 0..cols {
                            t[c * rows + r] = values[r * cols + c];
                        }
                    }
                    out.insert("lm_head.weight".into(), (vec![cols, rows], t));
                    continue;
                }
                other => renamed(HF_TOP_NAMES, other).to_string(),
            }
        };
        out.insert(renamed, (shape, values));
    }
    Ok(out)
}
