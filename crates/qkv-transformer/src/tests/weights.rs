//! Saving and loading weights: bit-exact round trips and clear errors for bad files.

use std::collections::BTreeMap;

use burn::prelude::*;
use qkv_test_support::test_on_cpu_backends;

use super::temp_dir;
use crate::weights::read_safetensors;
use crate::{GptConfig, WeightsError};

fn config() -> GptConfig {
    GptConfig::new(29, 10, 2, 2, 12)
}

test_on_cpu_backends!(save_then_load_is_bit_exact, |device: &Device| {
    let dir = temp_dir("roundtrip");
    for config in [
        config(),
        config().with_bias(false).with_tie_embeddings(false),
    ] {
        device.seed(5);
        let model = config.init(device);
        let path = dir.join("model.safetensors");
        model.save_safetensors(&path).unwrap();
        device.seed(6);
        let loaded = config.init(device).load_safetensors(&path).unwrap();
        let bits = |m: &crate::Gpt| {
            m.named_parameters()
                .into_iter()
                .map(|(n, s, v)| (n, s, v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&model), bits(&loaded));
        let tokens = Tensor::<2, Int>::from_data([[1, 2, 3]], device);
        let a = model.forward(tokens.clone()).into_data();
        let b = loaded.forward(tokens).into_data();
        assert_eq!(a, b);
        assert!(
            !dir.join("model.safetensors.tmp").exists(),
            "no temporary file left behind"
        );
    }
});

test_on_cpu_backends!(
    every_name_is_a_module_path_from_the_documented_table,
    |device: &Device| {
        let model = config().with_tie_embeddings(false).init(device);
        let mut want = vec!["token_embedding.weight".to_string()];
        want.push("position_embedding.weight".into());
        for i in 0..2 {
            for part in [
                "ln_1",
                "attn.query",
                "attn.key",
                "attn.value",
                "attn.output",
                "ln_2",
                "mlp.fc",
                "mlp.proj",
            ] {
                want.push(format!("blocks.{i}.{part}.weight"));
                want.push(format!("blocks.{i}.{part}.bias"));
            }
        }
        want.extend([
            "ln_f.weight".into(),
            "ln_f.bias".into(),
            "lm_head.weight".into(),
        ]);
        want.sort();
        let mut names: Vec<String> = model
            .parameter_shapes()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.sort();
        assert_eq!(names, want);
        // The optimizer, the gradients and the files see the same names.
        let mut saved: Vec<String> = crate::weights::module_tensors(&model).into_keys().collect();
        saved.sort();
        assert_eq!(saved, want);
        let shapes: BTreeMap<String, Vec<usize>> = model.parameter_shapes().into_iter().collect();
        assert_eq!(shapes["blocks.1.mlp.fc.weight"], vec![12, 48]);
        assert_eq!(shapes["lm_head.weight"], vec![12, 29]);
    }
);

test_on_cpu_backends!(
    layer_norm_names_of_older_versions_still_load,
    |device: &Device| {
        device.seed(3);
        let model = config().init(device);
        let old: BTreeMap<String, (Vec<usize>, Vec<f32>)> = crate::weights::module_tensors(&model)
            .into_iter()
            .map(|(name, t)| {
                let is_norm = name.contains("ln_");
                let name = match (
                    is_norm,
                    name.strip_suffix(".weight"),
                    name.strip_suffix(".bias"),
                ) {
                    (true, Some(n), _) => format!("{n}.gamma"),
                    (true, _, Some(n)) => format!("{n}.beta"),
                    _ => name,
                };
                (name, t)
            })
            .collect();
        assert!(old.contains_key("ln_f.gamma") && old.contains_key("blocks.0.ln_2.beta"));
        device.seed(4);
        let loaded = config()
            .init(device)
            .load_named(old, std::path::Path::new("old.safetensors"))
            .unwrap();
        assert_eq!(model.named_parameters(), loaded.named_parameters());
    }
);

/// Writes `tensors` as a safetensors file and tries to load it into a model of `config()`.
fn load_edited(
    device: &Device,
    edit: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>),
) -> WeightsError {
    let dir = temp_dir("edited");
    let path = dir.join("model.safetensors");
    let model = config().init(device);
    model.save_safetensors(&path).unwrap();
    let mut tensors = read_safetensors(&std::fs::read(&path).unwrap(), &path).unwrap();
    edit(&mut tensors);
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, (s, v))| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = raw.iter().map(|(n, s, b)| {
        (
            n.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
        )
    });
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    config().init(device).load_safetensors(&path).unwrap_err()
}

test_on_cpu_backends!(
    missing_extra_and_misshapen_tensors_are_named,
    |device: &Device| {
        let err = load_edited(device, |t| {
            t.remove("blocks.1.attn.key.weight");
        });
        let message = err.to_string();
        assert!(
            message.contains("blocks.1.attn.key.weight") && message.contains("[12, 12]"),
            "{message}"
        );
        assert!(matches!(err, WeightsError::Missing { .. }));

        let err = load_edited(device, |t| {
            t.insert("blocks.7.attn.key.weight".into(), (vec![2], vec![0.0, 1.0]));
        });
        assert!(
            err.to_string().contains("blocks.7.attn.key.weight"),
            "{err}"
        );
        assert!(matches!(err, WeightsError::Unexpected { .. }));

        let err = load_edited(device, |t| {
            t.insert(
                "blocks.0.mlp.fc.weight".into(),
                (vec![12, 40], vec![0.0; 480]),
            );
        });
        let message = err.to_string();
        assert!(
            message.contains("blocks.0.mlp.fc.weight")
                && message.contains("[12, 40]")
                && message.contains("[12, 48]"),
            "{message}"
        );
    }
);

test_on_cpu_backends!(
    truncated_and_foreign_files_are_clear_errors,
    |device: &Device| {
        let dir = temp_dir("broken");
        let path = dir.join("model.safetensors");
        config().init(device).save_safetensors(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for (what, content) in [
            ("truncated", bytes[..bytes.len() / 2].to_vec()),
            ("header only", bytes[..6].to_vec()),
            ("empty", Vec::new()),
            (
                "text",
                b"this is not a weights file at all, just text".to_vec(),
            ),
        ] {
            std::fs::write(&path, &content).unwrap();
            let err = config().init(device).load_safetensors(&path).unwrap_err();
            assert!(
                matches!(err, WeightsError::NotSafetensors { .. }),
                "{what}: {err}"
            );
            assert!(
                err.to_string().contains("not a valid safetensors file"),
                "{what}: {err}"
            );
        }
        let err = config()
            .init(device)
            .load_safetensors(&dir.join("absent.safetensors"))
            .unwrap_err();
        assert!(
            matches!(err, WeightsError::Io { .. })
                && err.to_string().contains("absent.safetensors"),
            "{err}"
        );
    }
);
