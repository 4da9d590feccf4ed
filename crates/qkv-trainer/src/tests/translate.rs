//! Translation training: a short run learns (its held-out loss falls), saves a model that
//! loads back and translates exactly as before, and bad configs and inputs get named errors.

use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use qkv_data::TranslationTask;

use super::{rng_lock, temp_dir};
use crate::TrainError;
use crate::translate::{TranslateConfig, TranslateEvent, load_translator, train_translation};

fn tiny(task: TranslationTask, max_iters: usize) -> TranslateConfig {
    let mut c = TranslateConfig::for_task(task);
    c.n_layers = 1;
    c.d_model = 64;
    c.n_heads = 2;
    c.batch_size = 32;
    c.max_iters = max_iters;
    c.warmup_iters = 5;
    c.eval_interval = max_iters.div_ceil(2);
    c.eval_sentences = 200;
    c
}

#[test]
fn a_short_run_learns_dates_saves_and_reloads() {
    let _lock = rng_lock();
    let device = Device::flex();
    let dir = temp_dir("translate-run");
    let config = tiny(TranslationTask::Dates, 300);
    let mut evals = Vec::new();
    let summary = train_translation(
        &config,
        &dir,
        &device.clone().autodiff(),
        &AtomicBool::new(false),
        |e| {
            if let TranslateEvent::Eval {
                val_loss, accuracy, ..
            } = e
            {
                evals.push((*val_loss, *accuracy));
            }
        },
    )
    .unwrap();
    assert_eq!(summary.steps, 300);
    assert_eq!(evals.len(), 2);
    // Untrained, the held-out loss is about ln(vocab) ≈ 4; 300 steps of a one-layer model
    // learn the reordering (about 3 s here).
    let (loss, accuracy) = evals[1];
    assert!(
        loss < 0.5 && accuracy >= 0.9,
        "held-out loss {loss}, exact match {accuracy}"
    );
    assert!(dir.join("model.safetensors").is_file() && dir.join("loss.png").is_file());

    let t = load_translator(&dir, &device).unwrap();
    let first = t.translate(&["first of may 2001"], 1).unwrap();
    assert!(
        first[0].0.chars().all(|c| c.is_ascii_digit() || c == '-'),
        "{:?}",
        first[0].0
    );
    // Reloading gives the very same model.
    let again = load_translator(&dir, &device)
        .unwrap()
        .translate(&["first of may 2001"], 1)
        .unwrap();
    assert_eq!(first, again);
    let beam = t.translate(&["first of may 2001"], 3).unwrap();
    assert!(beam[0].1.log_prob.is_finite() && beam[0].1.log_prob <= 0.0);
}

#[test]
fn bad_configs_and_inputs_are_named() {
    let mut c = TranslateConfig::for_task(TranslationTask::Numbers);
    c.task = "klingon".into();
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("numbers or dates")
    );
    let mut c = TranslateConfig::for_task(TranslationTask::Numbers);
    c.lr = 0.0;
    assert!(c.validate().unwrap_err().to_string().contains("--lr"));
    let mut c = TranslateConfig::for_task(TranslationTask::Numbers);
    c.batch_size = 0;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("--batch-size")
    );
    let mut c = TranslateConfig::for_task(TranslationTask::Numbers);
    c.n_heads = 5;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("must divide")
    );

    let device = Device::flex();
    let missing = temp_dir("translate-missing");
    assert!(matches!(
        load_translator(&missing, &device),
        Err(TrainError::Io { .. })
    ));

    // Unknown words, empty input and over-long input, through a real (untrained) run.
    let _lock = rng_lock();
    let dir = temp_dir("translate-inputs");
    train_translation(
        &tiny(TranslationTask::Numbers, 2),
        &dir,
        &device.clone().autodiff(),
        &AtomicBool::new(false),
        |_| {},
    )
    .unwrap();
    let t = load_translator(&dir, &device).unwrap();
    for (input, needle) in [
        ("forty-two bananas", "\"bananas\""),
        ("", "empty"),
        (&["one"; 20].join(" ")[..], "maximum of 13"),
    ] {
        let err = t.translate(&[input], 1).unwrap_err().to_string();
        assert!(err.contains(needle), "{input:?}: {err}");
    }
    // A truncated weights file is an error, not a panic.
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert!(load_translator(&dir, &device).is_err());
}
