//! Whole runs: exact resume, overfitting a tiny corpus, crash-safe checkpoints, divergence.

use std::sync::atomic::AtomicBool;

use burn::prelude::*;

use super::{lm_trainer, temp_dir, tiny_recall};
use crate::checkpoint::Checkpoint;
use crate::metrics;
use crate::checkpoint::SavePoint;
use crate::{DataConfig, ModelSettings, Start, StopReason, TrainError};

fn device() -> Device {
    qkv_test_support::flex().autodiff()
}

fn losses(dir: &std::path::Path) -> Vec<(usize, u64)> {
    metrics::read(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| (r.step, r.loss.to_bits()))
        .collect()
}

#[test]
fn resume_continues_exactly() {
    let _rng = super::rng_lock();
    for dropout in [0.0, 0.2] {
        let config = tiny_recall(12, dropout);
        let cache = temp_dir("cache");
        let stop = AtomicBool::new(false);

        let straight = temp_dir(&format!("straight-{dropout}"));
        lm_trainer(config.clone(), &straight, &cache, &device(), Start::Fresh)
            .unwrap()
            .run(&stop, None, |_| {})
            .unwrap();

        let halves = temp_dir(&format!("halves-{dropout}"));
        let summary = lm_trainer(config.clone(), &halves, &cache, &device(), Start::Fresh)
            .unwrap()
            .run(&stop, Some(6), |_| {})
            .unwrap();
        assert_eq!(summary.step, 6);
        let mut resumed = lm_trainer(config.clone(), &halves, &cache, &device(), Start::Resume).unwrap();
        assert_eq!(resumed.step, 6);
        resumed.run(&stop, None, |_| {}).unwrap();

        let (a, b) = (losses(&straight), losses(&halves));
        assert_eq!(a.len(), 12);
        assert_eq!(
            a, b,
            "dropout {dropout}: steps 7..12 after resuming equal the uninterrupted run, bit for bit"
        );
    }
}

#[test]
fn tiny_model_overfits_tiny_corpus() {
    let _rng = super::rng_lock();
    let dir = temp_dir("overfit");
    let corpus = dir.join("corpus.txt");
    // Every character has one successor, so a model that memorises the text can drive the
    // loss to zero at every position of a window.
    std::fs::write(&corpus, "qkv07 ZEBRA-jumps!".repeat(12)).unwrap();
    let mut config = tiny_recall(150, 0.0);
    config.data = DataConfig::TextFile {
        path: corpus,
        tokenizer: crate::TokenizerChoice::Char,
    };
    config.model = ModelSettings {
        n_layers: 1,
        n_heads: 2,
        d_model: 32,
        block_size: 8,
        dropout: 0.0,
        bias: true,
        positional: qkv_transformer::PositionalEncoding::Learned,
    };
    config.lr = 1e-2;
    config.min_lr = 1e-2;
    config.weight_decay = 0.0;
    config.eval_interval = 150;
    let mut trainer = lm_trainer(config, &dir.join("run"), &dir, &device(), Start::Fresh).unwrap();
    trainer.run(&AtomicBool::new(false), None, |_| {}).unwrap();
    let records = metrics::read(&dir.join("run/metrics.jsonl")).unwrap();
    let first = records[0].loss;
    let last = records.last().unwrap();
    assert!(first > 2.0, "starts near log(vocab): {first}");
    assert!(
        last.train_loss.unwrap() < 0.1,
        "memorised: final train loss {:?}",
        last.train_loss
    );
}

#[test]
fn crash_while_checkpointing_keeps_the_previous_one() {
    let _rng = super::rng_lock();
    let dir = temp_dir("crash");
    let cache = temp_dir("crash-cache");
    let config = tiny_recall(8, 0.0);
    let stop = AtomicBool::new(false);
    let mut trainer = lm_trainer(config.clone(), &dir, &cache, &device(), Start::Fresh).unwrap();
    trainer.run(&stop, Some(4), |_| {}).unwrap();
    let before = std::fs::read(dir.join("checkpoint/model.safetensors")).unwrap();

    // The write of the step-8 checkpoint dies after its first file.
    trainer.save_hook = Some(Box::new(|point| match point {
        SavePoint::FileWritten(0) => Err(TrainError::Io {
            path: "checkpoint.tmp/model.safetensors".into(),
            source: std::io::Error::other("simulated crash while writing the checkpoint"),
        }),
        _ => Ok(()),
    }));
    let err = trainer.run(&stop, None, |_| {}).unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    let checkpoint = Checkpoint::load(&dir).unwrap();
    assert_eq!(checkpoint.state.step, 4);
    assert_eq!(
        std::fs::read(dir.join("checkpoint/model.safetensors")).unwrap(),
        before
    );
    let resumed = lm_trainer(config.clone(), &dir, &cache, &device(), Start::Resume).unwrap();
    assert_eq!(resumed.step, 4);

    // A crash between the two renames leaves only checkpoint.old/: it is still found.
    std::fs::rename(dir.join("checkpoint"), dir.join("checkpoint.old")).unwrap();
    assert_eq!(Checkpoint::load(&dir).unwrap().state.step, 4);
}

#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let _rng = super::rng_lock();
    let dir = temp_dir("nan");
    let cache = temp_dir("nan-cache");
    let stop = AtomicBool::new(false);
    let mut trainer = lm_trainer(tiny_recall(12, 0.0), &dir, &cache, &device(), Start::Fresh).unwrap();
    trainer.run(&stop, Some(4), |_| {}).unwrap();
    // Poison one weight, as an exploding update would.
    let w = &mut trainer.model.blocks[0].mlp.fc.weight;
    *w = w
        .clone()
        .map(|t| t.inner().mul_scalar(f32::NAN).autodiff().require_grad());
    let err = trainer.run(&stop, None, |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::Diverged {
                step: 5,
                last_good: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("last good checkpoint (step 4)"),
        "{err}"
    );
    assert_eq!(Checkpoint::load(&dir).unwrap().state.step, 4);
}

#[test]
fn interrupt_saves_and_stops() {
    let _rng = super::rng_lock();
    let dir = temp_dir("interrupt");
    let cache = temp_dir("interrupt-cache");
    let stop = AtomicBool::new(false);
    let mut trainer = lm_trainer(tiny_recall(12, 0.0), &dir, &cache, &device(), Start::Fresh).unwrap();
    let summary = trainer
        .run(&stop, None, |event| {
            if let crate::Event::Step(r) = event
                && r.step == 3
            {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .unwrap();
    assert_eq!(summary.stopped, Some(StopReason::Interrupted));
    assert_eq!(summary.step, 3);
    assert_eq!(Checkpoint::load(&dir).unwrap().state.step, 3);
}
