//! Every user mistake gets an error that names it.

use std::path::Path;

use super::lm_trainer;
use super::{temp_dir, tiny_recall};
use crate::{DataConfig, Start, TrainConfig};

fn device() -> burn::prelude::Device {
    qkv_test_support::flex().autodiff()
}

fn start(config: TrainConfig, dir: &Path) -> String {
    match lm_trainer(config, dir, dir, &device(), Start::Fresh) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn text_config(path: &Path) -> TrainConfig {
    let mut config = tiny_recall(4, 0.0);
    config.data = DataConfig::TextFile {
        path: path.into(),
        tokenizer: crate::TokenizerChoice::Char,
    };
    config.model.block_size = 16;
    config
}

#[test]
fn bad_settings_are_named() {
    let _rng = super::rng_lock();
    let dir = temp_dir("bad-settings");
    assert!(
        TrainConfig::preset("gpt5")
            .unwrap_err()
            .to_string()
            .contains("unknown preset \"gpt5\"")
    );
    let mut c = tiny_recall(4, 0.0);
    c.lr = 0.0;
    assert!(start(c, &dir).contains("learning rate must be a positive number"));
    let mut c = tiny_recall(4, 0.0);
    c.batch_size = 0;
    assert!(start(c, &dir).contains("batch_size must be at least 1"));
    let mut c = tiny_recall(4, 0.0);
    c.model.n_heads = 3;
    assert!(start(c, &dir).contains("n_heads (3) must divide d_model (16)"));
    let err = TrainConfig::from_json(r#"{"batch_sise": 3}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch_sise"), "{err}");
}

#[test]
fn bad_data_files_are_named() {
    let _rng = super::rng_lock();
    let dir = temp_dir("bad-data");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert!(start(text_config(&empty), &dir).contains("is empty"));
    let short = dir.join("short.txt");
    std::fs::write(&short, "too short").unwrap();
    let err = start(text_config(&short), &dir);
    assert!(err.contains("block_size + 1 = 17"), "{err}");
    let binary = dir.join("binary.txt");
    std::fs::write(&binary, [0xffu8; 64]).unwrap();
    assert!(start(text_config(&binary), &dir).contains("not valid UTF-8"));
}

#[test]
fn mismatched_or_broken_checkpoints_are_named() {
    let _rng = super::rng_lock();
    let dir = temp_dir("bad-checkpoint");
    let stop = std::sync::atomic::AtomicBool::new(false);
    lm_trainer(tiny_recall(4, 0.0), &dir, &dir, &device(), Start::Fresh)
        .unwrap()
        .run(&stop, None, |_| {})
        .unwrap();

    let mut wider = tiny_recall(4, 0.0);
    wider.model.d_model = 32;
    let err = lm_trainer(wider, &dir, &dir, &device(), Start::Resume)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another config"), "{err}");

    let mut other_vocab = tiny_recall(4, 0.0);
    other_vocab.data = DataConfig::Recall {
        n_pairs: 6,
        n_keys: 20,
        n_values: 10,
        gap: 0,
    };
    let err = lm_trainer(other_vocab, &dir, &dir, &device(), Start::Resume)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("vocabulary has 187 tokens") && err.contains("231"),
        "{err}"
    );

    let model = dir.join("checkpoint/model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 3]).unwrap();
    let err = lm_trainer(tiny_recall(4, 0.0), &dir, &dir, &device(), Start::Resume)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a valid safetensors file"), "{err}");

    let empty = temp_dir("no-checkpoint");
    let err = lm_trainer(
        tiny_recall(4, 0.0),
        &empty,
        &empty,
        &device(),
        Start::Resume,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("no complete checkpoint"), "{err}");
}

#[test]
fn a_finished_run_is_read_with_its_own_tokenizer_not_one_rebuilt_from_today_s_data() {
    let dir = temp_dir("saved-tokenizer");
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, "abcdefgh ".repeat(60)).unwrap();
    let config = text_config(&corpus);
    let saved = crate::BatchSource::open(&config, &dir, None)
        .unwrap()
        .tokenizer();
    // The file loses its 'a's after training: a tokenizer rebuilt from it would shift every
    // id by one; the run's own keeps them.
    std::fs::write(&corpus, "bcdefgh ".repeat(60)).unwrap();
    let rebuilt = crate::BatchSource::open(&config, &dir, None)
        .unwrap()
        .tokenizer();
    assert_ne!(rebuilt.encode("b").unwrap(), saved.encode("b").unwrap());
    let reopened = crate::BatchSource::open(&config, &dir, Some(saved.clone())).unwrap();
    let crate::BatchSource::Text(text) = reopened else {
        panic!("a text source")
    };
    assert_eq!(text.tokenizer.to_json().unwrap(), saved.to_json().unwrap());
    assert_eq!(text.train[0], saved.encode("b").unwrap()[0]);
}
