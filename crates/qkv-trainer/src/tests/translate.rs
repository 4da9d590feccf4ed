//! Translation training: a short run learns (its held-out loss falls), saves a model that
//! loads back and translates exactly as the trained one in memory does, resumes bit for bit,
//! stops on divergence naming the true last good step, and bad configs and inputs get named
//! errors.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use qkv_data::TranslationTask;

use super::{rng_lock, temp_dir};
use crate::translate::{TranslateConfig, TranslationRun, load_translator};
use crate::{Event, RunSummary, Start, TrainError, Trainer};

/// Trains `config` into `dir` (a fresh run) up to `stop_at`, reporting events to `on_event`.
fn train(
    config: &TranslateConfig,
    dir: &Path,
    start: Start,
    stop_at: Option<usize>,
    on_event: impl FnMut(&Event),
) -> (Trainer<TranslationRun>, RunSummary) {
    let device = qkv_test_support::flex().autodiff();
    let mut trainer = Trainer::new(
        TranslationRun::new(config.clone()).unwrap(),
        dir,
        &device,
        start,
    )
    .unwrap();
    let summary = trainer
        .run(&AtomicBool::new(false), stop_at, on_event)
        .unwrap();
    (trainer, summary)
}

fn losses(dir: &Path) -> Vec<(usize, u64, u64)> {
    crate::metrics::read(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| (r.step, r.loss.to_bits(), r.grad_norm.to_bits()))
        .collect()
}

/// A small translation recipe: one layer, 64 wide, batches of 32.
pub(super) fn tiny(task: TranslationTask, max_iters: usize) -> TranslateConfig {
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
    let (trainer, summary) = train(&config, &dir, Start::Fresh, None, |e| {
        if let Event::Eval { evaluation, .. } = e {
            evals.push((evaluation.val_loss, evaluation.val_accuracy));
        }
    });
    assert_eq!(summary.step, 300);
    assert_eq!(evals.len(), 2);
    // Untrained, the held-out loss is about ln(vocab) ≈ 4; 300 steps of a one-layer model
    // learn the reordering (about 3 s here).
    let (loss, accuracy) = evals[1];
    assert!(
        loss < 0.5 && accuracy >= 0.9,
        "held-out loss {loss}, exact match {accuracy}"
    );
    assert!(dir.join("checkpoint/model.safetensors").is_file() && dir.join("loss.png").is_file());

    let t = load_translator(&dir, &device).unwrap();
    let first = t.translate(&["first of may 2001"], 1).unwrap();
    // The reloaded model is the trained one: the same translations and log-probabilities
    // as the model still in memory, for a handful of held-out sentences.
    let mut in_memory = load_translator(&dir, &device).unwrap();
    in_memory.model = burn::module::Module::valid(&trainer.model);
    let sentences = [
        "first of may 2001",
        "seventh of march 2024",
        "thirty-first of december 1999",
    ];
    let (a, b) = (
        in_memory.translate(&sentences, 3).unwrap(),
        t.translate(&sentences, 3).unwrap(),
    );
    for ((ta, a), (tb, b)) in a.iter().zip(&b) {
        assert_eq!((ta, &a.tokens), (tb, &b.tokens));
        assert!(
            (a.log_prob - b.log_prob).abs() <= 1e-5 * a.log_prob.abs().max(1e-3),
            "{} vs {}",
            a.log_prob,
            b.log_prob
        );
    }
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
    train(
        &tiny(TranslationTask::Numbers, 2),
        &dir,
        Start::Fresh,
        None,
        |_| {},
    );
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
    let weights = dir.join("checkpoint/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert!(load_translator(&dir, &device).is_err());
}

#[test]
fn a_resumed_translation_run_continues_bit_for_bit() {
    let _lock = rng_lock();
    for dropout in [0.0, 0.1] {
        let mut config = tiny(TranslationTask::Numbers, 8);
        config.eval_interval = 4;
        config.eval_sentences = 20;
        config.dropout = dropout;
        let straight = temp_dir(&format!("translate-straight-{dropout}"));
        train(&config, &straight, Start::Fresh, None, |_| {});
        let halves = temp_dir(&format!("translate-halves-{dropout}"));
        let (_, first) = train(&config, &halves, Start::Fresh, Some(4), |_| {});
        assert_eq!(first.step, 4);
        let (resumed, _) = train(&config, &halves, Start::Resume, None, |_| {});
        assert_eq!(resumed.step, 8);
        let (a, b) = (losses(&straight), losses(&halves));
        assert_eq!(a.len(), 8);
        assert_eq!(
            a, b,
            "dropout {dropout}: steps 5..8 after resuming equal the uninterrupted run, bit for bit"
        );
    }
}

#[test]
fn a_diverging_translation_run_names_its_last_good_step() {
    let _lock = rng_lock();
    let dir = temp_dir("translate-nan");
    let mut config = tiny(TranslationTask::Numbers, 12);
    config.eval_interval = 4;
    config.eval_sentences = 20;
    let (mut trainer, _) = train(&config, &dir, Start::Fresh, Some(6), |_| {});
    // Poison the embedding, as an exploding update would.
    let w = &mut trainer.model.src_embedding.weight;
    *w = w
        .clone()
        .map(|t| t.inner().mul_scalar(f32::NAN).autodiff().require_grad());
    let err = trainer
        .run(&AtomicBool::new(false), None, |_| {})
        .unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::Diverged {
                step: 7,
                last_good: 6,
                ..
            }
        ),
        "{err}"
    );
    // Step 6 was saved because the run stopped there (stop_at), and it is still the one
    // on disk.
    assert_eq!(
        crate::checkpoint::Checkpoint::load(&dir)
            .unwrap()
            .state
            .step,
        6
    );
}
