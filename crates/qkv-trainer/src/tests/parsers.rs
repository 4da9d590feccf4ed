//! Every file a user can hand in, parsed from thousands of generated variants of a valid one
//! (bits flipped, bytes cut, ranges dropped or repeated, numbers made huge, negative or not
//! numbers): each parse ends in a value or a named error, never a panic, and a config that
//! parses is then validated without a panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use qkv_transformer::SplitMix64;
use qkv_transformer::weights::read_safetensors;

use super::{lm_trainer, temp_dir, tiny_recall};
use crate::checkpoint::Checkpoint;
use crate::translate::TranslateConfig;
use crate::{Start, TrainConfig};

/// Variants of each valid file.
const VARIANTS: usize = 1500;

/// One random change to `bytes`.
fn mutate(bytes: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let n = out.len().max(1);
    match rng.below(8) {
        0 => {
            let i = rng.below(n).min(out.len().saturating_sub(1));
            if !out.is_empty() {
                out[i] ^= 1 << rng.below(8);
            }
        }
        1 => out.truncate(rng.below(n)),
        2 => {
            let (a, b) = (rng.below(n), rng.below(n));
            let (a, b) = (a.min(b), a.max(b).min(out.len()));
            out.drain(a..b);
        }
        3 => {
            let (a, b) = (rng.below(n), rng.below(n));
            let (a, b) = (a.min(b), a.max(b).min(out.len()));
            let copy = out[a..b].to_vec();
            out.splice(a..a, copy);
        }
        4 => {
            let at = rng.below(n).min(out.len());
            let junk: Vec<u8> = (0..1 + rng.below(16))
                .map(|_| rng.below(256) as u8)
                .collect();
            out.splice(at..at, junk);
        }
        _ => {
            // A number replaced with an extreme one.
            let text = String::from_utf8_lossy(&out).into_owned();
            let digits: Vec<usize> = text
                .char_indices()
                .filter(|(_, c)| c.is_ascii_digit())
                .map(|(i, _)| i)
                .collect();
            if let Some(&at) = digits.get(rng.below(digits.len().max(1))) {
                let end = text[at..]
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
                    .map_or(text.len(), |e| at + e);
                let extreme = [
                    "1000000000000",
                    "18446744073709551615",
                    "99999999999999999999999",
                    "-1",
                    "0",
                    "1e400",
                    "-0.0",
                    "1e-310",
                    "NaN",
                    "4294967296",
                ][rng.below(10)];
                out = format!("{}{extreme}{}", &text[..at], &text[end..]).into_bytes();
            }
        }
    }
    // Sometimes two changes.
    if rng.below(4) == 0 {
        return mutate(&out, rng);
    }
    out
}

/// Runs `parse` on `VARIANTS` variants of `seed`; returns how many parsed to a value.
fn fuzz(name: &str, seed: &[u8], mut parse: impl FnMut(&[u8]) -> Result<(), String>) -> usize {
    let mut rng = SplitMix64::new(name.len() as u64 * 7919);
    assert_eq!(parse(seed), Ok(()), "{name}: the valid file itself");
    let mut accepted = 0;
    for i in 0..VARIANTS {
        let input = mutate(seed, &mut rng);
        match catch_unwind(AssertUnwindSafe(|| parse(&input))) {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(message)) => assert!(!message.trim().is_empty(), "{name} #{i}: empty error"),
            Err(_) => panic!(
                "{name} #{i}: the parser panicked on {:?}",
                String::from_utf8_lossy(&input)
            ),
        }
    }
    accepted
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))
}

#[test]
fn config_files_parse_to_a_value_or_a_named_error() {
    let train = serde_json::to_vec_pretty(&TrainConfig::shakespeare_char()).unwrap();
    let accepted = fuzz("config.json", &train, |bytes| {
        let config = TrainConfig::from_json(utf8(bytes)?).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())
    });
    assert!(accepted > 0 && accepted < VARIANTS, "accepted {accepted}");

    let translate =
        serde_json::to_vec_pretty(&TranslateConfig::for_task(qkv_data::TranslationTask::Dates))
            .unwrap();
    fuzz("translate.json", &translate, |bytes| {
        let config: TranslateConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())
    });

    let gpt = serde_json::to_vec_pretty(&qkv_transformer::GptConfig::shakespeare_char(65)).unwrap();
    fuzz("model_config.json", &gpt, |bytes| {
        let config: qkv_transformer::GptConfig =
            serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())
    });

    let dir = temp_dir("fuzz-hf");
    let hf = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../qkv-transformer/fixtures/gpt2-tiny/config.json"),
    )
    .unwrap();
    fuzz("Hugging Face config.json", &hf, |bytes| {
        let path = dir.join("config.json");
        std::fs::write(&path, bytes).unwrap();
        let config =
            qkv_transformer::gpt2::gpt2_config_from_hf(&path).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())
    });
}

#[test]
fn tokenizer_files_parse_to_a_value_or_a_named_error() {
    let char_json = qkv_data::Tokenizer::Char(qkv_data::CharTokenizer::from_text("hello, world"))
        .to_json()
        .unwrap();
    let words = qkv_data::RecallTask::default()
        .tokenizer()
        .to_json()
        .unwrap();
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(40);
    let bpe =
        qkv_data::Tokenizer::Bpe(Box::new(qkv_data::BpeTokenizer::train(&text, 270).unwrap()))
            .to_json()
            .unwrap();
    for (name, seed) in [("char", char_json), ("words", words), ("bpe", bpe)] {
        fuzz(
            &format!("{name} tokenizer.json"),
            seed.as_bytes(),
            |bytes| {
                let tokenizer =
                    qkv_data::Tokenizer::from_json(utf8(bytes)?).map_err(|e| e.to_string())?;
                // A tokenizer that loads must also work.
                let ids = tokenizer.encode("the fox").unwrap_or_default();
                let _ = tokenizer.decode(&ids);
                Ok(())
            },
        );
    }
}

#[test]
fn checkpoint_files_load_to_a_value_or_a_named_error() {
    let _rng = super::rng_lock();
    let dir = temp_dir("fuzz-checkpoint");
    let run = dir.join("run");
    let mut trainer = lm_trainer(
        tiny_recall(2, 0.0),
        &run,
        &dir,
        &super::runs_device(),
        Start::Fresh,
    )
    .unwrap();
    trainer.run(&AtomicBool::new(false), None, |_| {}).unwrap();
    let model = trainer.model.valid();
    let checkpoint = run.join("checkpoint");
    let files: Vec<(String, Vec<u8>)> =
        ["state.json", "optimizer.safetensors", "model.safetensors"]
            .iter()
            .map(|name| {
                (
                    name.to_string(),
                    std::fs::read(checkpoint.join(name)).unwrap(),
                )
            })
            .collect();
    let plain = super::runs_device().without_autodiff();
    for (name, seed) in &files {
        let target = checkpoint.join(name);
        fuzz(name, seed, |bytes| {
            std::fs::write(&target, bytes).unwrap();
            let loaded = Checkpoint::load(&run).map_err(|e| e.to_string())?;
            let path = loaded.weights_path();
            let model = model
                .clone()
                .load_named(loaded.weights.clone(), &path)
                .map_err(|e| e.to_string())?;
            loaded
                .optimizer(
                    crate::optim::AdamWSettings {
                        beta1: 0.9,
                        beta2: 0.99,
                        eps: 1e-8,
                        weight_decay: 0.1,
                    },
                    &model,
                    &plain,
                )
                .map_err(|e| e.to_string())?;
            Ok(())
        });
        std::fs::write(&target, seed).unwrap();
    }
    // The safetensors reader alone, on the weights.
    let weights = &files[2].1;
    fuzz("safetensors header", weights, |bytes| {
        read_safetensors(bytes, Path::new("model.safetensors"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    // The streaming file reader, on the same variants: a value or an error, never a panic
    // or an allocation the file cannot back; and the same tensors as the reader of bytes.
    let file = std::env::temp_dir().join(format!("qkv-fuzz-st-{}.safetensors", std::process::id()));
    fuzz("safetensors file", weights, |bytes| {
        std::fs::write(&file, bytes).unwrap();
        let streamed = qkv_transformer::weights::read_safetensors_file(&file);
        let whole = read_safetensors(bytes, &file);
        match (streamed, whole) {
            (Ok(a), Ok(b)) if a == b => Ok(()),
            (Ok(_), Ok(_)) => panic!("the two readers disagree"),
            (Err(e), _) => Err(e.to_string()),
            (Ok(_), Err(e)) => Err(format!("only the reader of bytes refused: {e}")),
        }
    });
}

#[test]
fn metrics_files_read_to_records_or_a_named_error() {
    let record = crate::metrics::MetricsRecord::update(1, 2.5, 1e-3, 0.7, 0.01, 64);
    let mut text = String::new();
    for step in 1..=5 {
        let mut r = record.clone();
        r.step = step;
        text.push_str(&serde_json::to_string(&r).unwrap());
        text.push('\n');
    }
    let dir = temp_dir("fuzz-metrics");
    let path = dir.join("metrics.jsonl");
    fuzz("metrics.jsonl", text.as_bytes(), |bytes| {
        std::fs::write(&path, bytes).unwrap();
        crate::metrics::read_checked(&path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}
