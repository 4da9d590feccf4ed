//! Whole runs: exact resume, overfitting a tiny corpus, crash-safe checkpoints, divergence.

use std::sync::atomic::AtomicBool;

use burn::prelude::*;

use super::{lm_trainer, losses, temp_dir, tiny_recall};
use crate::checkpoint::Checkpoint;
use crate::checkpoint::SavePoint;
use crate::metrics;
use crate::{DataConfig, ModelSettings, Start, StopReason, TrainError};

fn device() -> Device {
    qkv_test_support::flex().autodiff()
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
        let mut resumed =
            lm_trainer(config.clone(), &halves, &cache, &device(), Start::Resume).unwrap();
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

/// Renames LayerNorm parameters in a safetensors file to the names versions before the one
/// naming scheme wrote (`….gamma`, `….beta`), keeping the `m.`/`v.` prefixes of the
/// optimizer's file.
fn write_old_names(path: &std::path::Path) -> usize {
    use qkv_transformer::weights::{read_safetensors, serialize_host};
    let tensors = read_safetensors(&std::fs::read(path).unwrap(), path).unwrap();
    let mut renamed = 0;
    let old = tensors
        .into_iter()
        .map(|(name, t)| {
            let norm = name.contains("ln_");
            let name = match (
                norm,
                name.strip_suffix(".weight"),
                name.strip_suffix(".bias"),
            ) {
                (true, Some(n), _) => format!("{n}.gamma"),
                (true, _, Some(n)) => format!("{n}.beta"),
                _ => return (name, t),
            };
            renamed += 1;
            (name, t)
        })
        .collect();
    std::fs::write(path, serialize_host(&old, None)).unwrap();
    renamed
}

#[test]
fn a_checkpoint_with_the_older_layer_norm_names_resumes_exactly() {
    let _rng = super::rng_lock();
    let config = tiny_recall(8, 0.0);
    let cache = temp_dir("cache");
    let stop = AtomicBool::new(false);
    let mut runs = Vec::new();
    for old_names in [false, true] {
        let dir = temp_dir(&format!("old-names-{old_names}"));
        lm_trainer(config.clone(), &dir, &cache, &device(), Start::Fresh)
            .unwrap()
            .run(&stop, Some(4), |_| {})
            .unwrap();
        if old_names {
            let checkpoint = dir.join("checkpoint");
            // Weights: ln_1, ln_2 per block and ln_f, each weight and bias.
            let n = write_old_names(&checkpoint.join("model.safetensors"));
            assert!(n >= 6, "{n} LayerNorm tensors renamed");
            // Moments: m. and v. of each.
            assert_eq!(
                write_old_names(&checkpoint.join("optimizer.safetensors")),
                2 * n
            );
        }
        lm_trainer(config.clone(), &dir, &cache, &device(), Start::Resume)
            .unwrap()
            .run(&stop, None, |_| {})
            .unwrap();
        runs.push(losses(&dir));
    }
    assert_eq!(runs[0].len(), 8);
    assert_eq!(
        runs[0], runs[1],
        "the renamed checkpoint resumes bit for bit"
    );
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
    let mut trainer =
        lm_trainer(tiny_recall(12, 0.0), &dir, &cache, &device(), Start::Fresh).unwrap();
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
    let mut trainer =
        lm_trainer(tiny_recall(12, 0.0), &dir, &cache, &device(), Start::Fresh).unwrap();
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

/// A save hook that fails (as a crash would) at the `n`-th point it reaches, counting from 0.
fn crash_at(n: usize) -> crate::checkpoint::SaveHook {
    let mut seen = 0;
    Box::new(move |point| {
        seen += 1;
        if seen - 1 == n {
            Err(TrainError::Io {
                path: "checkpoint".into(),
                source: std::io::Error::other(format!("simulated crash at {point:?}")),
            })
        } else {
            Ok(())
        }
    })
}

#[test]
fn a_crash_at_any_point_of_any_save_leaves_a_loadable_checkpoint() {
    let _rng = super::rng_lock();
    let cache = temp_dir("points-cache");
    let config = tiny_recall(20, 0.0);
    // Each save reaches 6 or 7 points (Recovered only after a crash between the renames);
    // crash at each in turn, several times in a row, and resume after every crash.
    for first in 0..7 {
        let dir = temp_dir(&format!("points-{first}"));
        let stop = AtomicBool::new(false);
        let mut trainer =
            lm_trainer(config.clone(), &dir, &cache, &device(), Start::Fresh).unwrap();
        trainer.run(&stop, Some(4), |_| {}).unwrap();
        let mut expected = 4;
        for (round, point) in [first, first, (first + 3) % 7].into_iter().enumerate() {
            let mut trainer =
                lm_trainer(config.clone(), &dir, &cache, &device(), Start::Resume).unwrap();
            assert_eq!(trainer.step, expected, "round {round}, point {point}");
            trainer.save_hook = Some(crash_at(point));
            match trainer.run(&stop, Some(expected + 4), |_| {}) {
                // A save without a crash to recover from has six points; a hook set for the
                // seventh never fires.
                Ok(_) => assert_eq!(point, 6, "round {round}: only point 6 can be missed"),
                Err(e) => assert!(e.to_string().contains("simulated crash"), "{e}"),
            }
            let on_disk = Checkpoint::load(&dir).unwrap().state.step;
            assert!(
                on_disk == expected || on_disk == expected + 4,
                "round {round}, point {point}: checkpoint at step {on_disk}"
            );
            expected = on_disk;
        }
        // And the run still finishes.
        let mut trainer =
            lm_trainer(config.clone(), &dir, &cache, &device(), Start::Resume).unwrap();
        trainer.run(&stop, None, |_| {}).unwrap();
        assert_eq!(Checkpoint::load(&dir).unwrap().state.step, 20);
        let steps: Vec<usize> = metrics::read(&dir.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, (1..=20).collect::<Vec<_>>(), "point {first}");
    }
}

#[test]
fn a_new_run_never_overwrites_one_without_being_asked() {
    let _rng = super::rng_lock();
    let dir = temp_dir("no-overwrite");
    let config = tiny_recall(4, 0.0);
    let stop = AtomicBool::new(false);
    lm_trainer(config.clone(), &dir, &dir, &device(), Start::Fresh)
        .unwrap()
        .run(&stop, None, |_| {})
        .unwrap();
    let before = std::fs::read(dir.join("config.json")).unwrap();
    let mut other = config.clone();
    other.lr = 5e-4;
    let err = lm_trainer(other.clone(), &dir, &dir, &device(), Start::Fresh)
        .err()
        .unwrap();
    assert!(matches!(err, TrainError::RunExists { .. }), "{err}");
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), before);
    assert_eq!(Checkpoint::load(&dir).unwrap().state.step, 4);

    let trainer = lm_trainer(other, &dir, &dir, &device(), Start::Overwrite).unwrap();
    assert_eq!(trainer.step, 0);
    assert!(
        Checkpoint::load(&dir).is_err(),
        "the old checkpoint is gone"
    );
}

#[test]
fn a_torn_metrics_line_is_cut_and_nothing_before_it_is_lost() {
    use std::io::Write;
    let _rng = super::rng_lock();
    let dir = temp_dir("torn-metrics");
    let config = tiny_recall(8, 0.0);
    let stop = AtomicBool::new(false);
    lm_trainer(config.clone(), &dir, &dir, &device(), Start::Fresh)
        .unwrap()
        .run(&stop, Some(4), |_| {})
        .unwrap();
    let path = dir.join("metrics.jsonl");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(br#"{"step":5,"loss":1.23"#)
        .unwrap();
    let (records, warning) = metrics::read_checked(&path).unwrap();
    assert_eq!(records.len(), 4);
    assert!(warning.unwrap().contains("line 5 was cut short"));
    let mut log = metrics::MetricsLog::open(&dir, Some(4)).unwrap();
    assert_eq!(log.warnings.len(), 1);
    log.sync().unwrap();
    drop(log);
    let mut resumed = lm_trainer(config.clone(), &dir, &dir, &device(), Start::Resume).unwrap();
    resumed.run(&stop, None, |_| {}).unwrap();
    let steps: Vec<usize> = metrics::read(&path)
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());

    // A bad line that is not the last is an error that names it, not a silent loss.
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text.replacen("{\"step\":2", "{\"stp\":2", 1);
    std::fs::write(&path, broken).unwrap();
    let err = metrics::MetricsLog::open(&dir, Some(8)).unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("\"stp\":2"),
        "left as it was"
    );
}
