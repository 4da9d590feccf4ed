//! Data-parallel training: N workers with B rows each give the gradients, losses and
//! parameters of one device with N·B rows; shards cover their batch; a data-parallel run
//! resumes bit for bit; bad device lists and batches too small to split are named errors.
//! Several workers run on the one Flex device, and across backends (Flex + NdArray), which
//! is the route of several GPUs: gradients move between devices.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use qkv_data::TranslationTask;
use qkv_transformer::SplitMix64;
use qkv_transformer::weights::{HostTensors, module_tensors};

use super::translate::tiny;
use super::{lm_trainer, rng_lock, temp_dir, tiny_recall};
use crate::optim::NamedGrads;
use crate::parallel::{Shard, Worker, parallel_gradients, split_rows};
use crate::translate::TranslationRun;
use crate::{LanguageModel, Start, Task, TrainError, Trainer, metrics};

fn flex() -> Device {
    qkv_test_support::flex().autodiff()
}

fn ndarray() -> Device {
    qkv_test_support::ndarray().autodiff()
}

/// `(name, device)` pairs named by their position.
fn named(devices: &[Device]) -> Vec<(String, Device)> {
    devices
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("device {i}"), d.clone()))
        .collect()
}

#[test]
fn rows_are_split_into_consecutive_ranges_that_cover_the_batch() {
    for rows in 0..20 {
        for parts in 1..6 {
            let ranges = split_rows(rows, parts);
            assert_eq!(ranges.len(), parts);
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[parts - 1].end, rows);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert!(pair[0].len() >= pair[1].len());
                assert!(pair[0].len() - pair[1].len() <= 1);
            }
        }
    }
}

#[test]
fn shards_put_the_batch_back_together_and_share_out_its_loss_targets() {
    let _rng = rng_lock();
    let cache = temp_dir("shard-cache");
    let task = LanguageModel::open(tiny_recall(1, 0.0), &cache).unwrap();
    let batch = task.batch(&mut SplitMix64::new(5));
    let shards: Vec<_> = split_rows(batch.rows(), 3)
        .into_iter()
        .map(|r| batch.slice_rows(r))
        .collect();
    assert_eq!(
        shards.iter().map(|s| s.rows()).collect::<Vec<_>>(),
        [3, 3, 2]
    );
    let joined: Vec<i64> = shards.iter().flat_map(|s| s.inputs.clone()).collect();
    assert_eq!(joined, batch.inputs);
    let joined: Vec<i64> = shards.iter().flat_map(|s| s.targets.clone()).collect();
    assert_eq!(joined, batch.targets);
    let counts: usize = shards.iter().map(|s| s.loss_targets()).sum();
    assert_eq!(counts, batch.loss_targets());
    // The recall task scores answers only: far fewer targets than positions.
    assert!(batch.loss_targets() < batch.batch * batch.seq / 2);

    let run = TranslationRun::new(tiny(TranslationTask::Numbers, 1)).unwrap();
    let batch = run.batch(&mut SplitMix64::new(5));
    let shards: Vec<_> = split_rows(batch.rows(), 2)
        .into_iter()
        .map(|r| batch.slice_rows(r))
        .collect();
    for (field, whole) in [
        (0, &batch.source),
        (1, &batch.decoder_input),
        (2, &batch.labels),
    ] {
        let joined: Vec<i64> = shards
            .iter()
            .flat_map(|s| match field {
                0 => s.source.clone(),
                1 => s.decoder_input.clone(),
                _ => s.labels.clone(),
            })
            .collect();
        assert_eq!(&joined, whole);
    }
    assert!(shards.iter().all(|s| s.src_len == batch.src_len));
    assert_eq!(
        shards.iter().map(|s| s.loss_targets()).sum::<usize>(),
        batch.loss_targets()
    );
}

/// Every gradient of `got` within `rel` of `want`'s, relative to each tensor's largest value;
/// a tensor whose true gradient is zero (the key bias: softmax ignores a constant added to
/// every score) holds rounding noise only, which is checked against the largest gradient of
/// the model instead.
fn assert_grads_close(got: &NamedGrads, want: &NamedGrads, rel: f32, what: &str) {
    let host = |g: &NamedGrads| -> Vec<(String, Vec<f32>)> {
        g.0.iter()
            .map(|(name, t)| (name.clone(), qkv_test_support::values(t.clone())))
            .collect()
    };
    let (got, want) = (host(got), host(want));
    assert_eq!(
        got.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        want.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "{what}: the same parameters have gradients"
    );
    let largest = want
        .iter()
        .flat_map(|(_, v)| v.iter())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if scale < 1e-6 * largest {
            qkv_test_support::assert_close(g, w, 1e-6 * largest, &format!("{what}: {name}"));
        } else {
            qkv_test_support::assert_rel_close(g, w, rel, &format!("{what}: {name}"));
        }
    }
}

/// The gradient of one batch on one device against the same batch cut across `devices`.
fn gradients_match<T: Task>(task: &T, model: &T::Model, main: &Device, devices: &[Device]) {
    let mut rng = SplitMix64::new(11);
    let batch = task.batch(&mut rng);
    let loss = task.loss(model, &batch, main).unwrap();
    let grads = loss.backward();
    let want = NamedGrads::collect(model, &grads);
    let want_loss = loss.into_scalar::<f32>() as f64;

    let workers = Worker::list(named(devices)).unwrap();
    let (loss, got, tokens) = parallel_gradients(
        task,
        model,
        &workers,
        main,
        1,
        0,
        0,
        &mut SplitMix64::new(11),
    )
    .unwrap();
    assert_eq!(tokens, task.batch_tokens(&batch));
    let what = format!("{} workers", devices.len());
    assert!(
        ((loss - want_loss) / want_loss).abs() < 1e-5,
        "{what}: loss {loss} against {want_loss}"
    );
    assert_grads_close(&got, &want, 1e-4, &what);
}

#[test]
fn workers_sum_to_the_gradient_of_the_whole_batch() {
    let _rng = rng_lock();
    let cache = temp_dir("grad-cache");
    let task = LanguageModel::open(tiny_recall(1, 0.0), &cache).unwrap();
    flex().seed(3);
    let model = task.init_model(&flex()).unwrap();
    // Two and three workers on the one CPU (8 rows: 4+4 and 3+3+2), and one Flex worker
    // beside an NdArray one: the gradients cross from one backend to the other.
    gradients_match(&task, &model, &flex(), &[flex(), flex()]);
    gradients_match(&task, &model, &flex(), &[flex(), flex(), flex()]);
    gradients_match(&task, &model, &flex(), &[flex(), ndarray()]);
    // Translation batches are padded: shards are weighted by their real targets.
    let run = TranslationRun::new(tiny(TranslationTask::Numbers, 1)).unwrap();
    let model = run.init_model(&flex()).unwrap();
    gradients_match(&run, &model, &flex(), &[flex(), flex(), flex()]);
}

/// Every parameter of a trained model, on the host.
fn parameters(trainer: &Trainer<LanguageModel>) -> HostTensors {
    module_tensors(&trainer.model)
}

fn losses(dir: &Path) -> Vec<(usize, f64, f64)> {
    metrics::read(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| (r.step, r.loss, r.val_loss.unwrap_or(f64::NAN)))
        .collect()
}

/// Trains `config` on `devices` (one device: the plain path) into a fresh directory.
fn run_on(
    config: &crate::TrainConfig,
    devices: &[Device],
    cache: &Path,
    name: &str,
) -> (Trainer<LanguageModel>, std::path::PathBuf) {
    let dir = temp_dir(name);
    let mut trainer = lm_trainer(config.clone(), &dir, cache, &devices[0], Start::Fresh)
        .unwrap()
        .with_devices(named(devices))
        .unwrap();
    trainer.run(&AtomicBool::new(false), None, |_| {}).unwrap();
    (trainer, dir)
}

#[test]
fn n_workers_of_b_rows_train_like_one_device_with_n_times_b() {
    let _rng = rng_lock();
    let cache = temp_dir("equiv-cache");
    let mut config = tiny_recall(4, 0.0);
    config.eval_interval = 4;
    let (one, one_dir) = run_on(&config, &[flex()], &cache, "equiv-one");
    assert!(one.workers().is_empty());
    for devices in [vec![flex(), flex()], vec![flex(), ndarray()]] {
        let (many, many_dir) = run_on(&config, &devices, &cache, "equiv-many");
        assert_eq!(many.workers().len(), 2);
        let (a, b) = (losses(&one_dir), losses(&many_dir));
        assert_eq!(a.len(), 4);
        for ((step, la, va), (_, lb, vb)) in a.iter().zip(&b) {
            assert!(
                (la - lb).abs() <= 1e-5 * la.abs(),
                "step {step}: loss {lb} against {la}"
            );
            if va.is_finite() {
                assert!(
                    (va - vb).abs() <= 1e-5 * va.abs(),
                    "step {step}: val {vb} against {va}"
                );
            }
        }
        // After four AdamW updates every parameter agrees to within 1e-4 of its tensor's
        // scale, but a key bias: its gradient is rounding noise, which AdamW turns into
        // steps of up to lr in either direction (bounded below by that).
        let (pa, pb) = (parameters(&one), parameters(&many));
        let lr = config.lr as f32;
        for (name, (_, want)) in &pa {
            let got = &pb[name].1;
            if name.contains("key") && name.ends_with("bias") {
                qkv_test_support::assert_close(got, want, 2.0 * 4.0 * lr, name);
            } else {
                qkv_test_support::assert_rel_close(got, want, 1e-4, name);
            }
        }
        assert_eq!(many.step, 4);
    }
}

#[test]
fn a_data_parallel_run_with_dropout_resumes_bit_for_bit() {
    let _rng = rng_lock();
    let cache = temp_dir("dp-resume-cache");
    let config = tiny_recall(8, 0.2);
    let devices = named(&[flex(), flex()]);
    let stop = AtomicBool::new(false);
    let bits = |dir: &Path| -> Vec<(usize, u64)> {
        losses(dir)
            .into_iter()
            .map(|(s, l, _)| (s, l.to_bits()))
            .collect()
    };

    let straight = temp_dir("dp-straight");
    lm_trainer(config.clone(), &straight, &cache, &flex(), Start::Fresh)
        .unwrap()
        .with_devices(devices.clone())
        .unwrap()
        .run(&stop, None, |_| {})
        .unwrap();
    let halves = temp_dir("dp-halves");
    lm_trainer(config.clone(), &halves, &cache, &flex(), Start::Fresh)
        .unwrap()
        .with_devices(devices.clone())
        .unwrap()
        .run(&stop, Some(4), |_| {})
        .unwrap();
    let mut resumed = lm_trainer(config.clone(), &halves, &cache, &flex(), Start::Resume)
        .unwrap()
        .with_devices(devices)
        .unwrap();
    assert_eq!(resumed.step, 4);
    resumed.run(&stop, None, |_| {}).unwrap();
    assert_eq!(bits(&straight).len(), 8);
    assert_eq!(
        bits(&straight),
        bits(&halves),
        "steps 5..8 after resuming equal the uninterrupted run, bit for bit"
    );

    // Dropout is on and the workers draw their own masks: this is not the one-device run.
    let single = temp_dir("dp-single");
    lm_trainer(config, &single, &cache, &flex(), Start::Fresh)
        .unwrap()
        .run(&stop, None, |_| {})
        .unwrap();
    assert_ne!(bits(&single), bits(&straight));
}

#[test]
fn bad_device_lists_and_batches_too_small_to_split_are_named() {
    let _rng = rng_lock();
    let cache = temp_dir("dp-errors-cache");
    let dir = temp_dir("dp-errors");
    let trainer = || lm_trainer(tiny_recall(2, 0.0), &dir, &cache, &flex(), Start::Overwrite);

    let message = |r: Result<Trainer<LanguageModel>, TrainError>| match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    let m = message(trainer().unwrap().with_devices(Vec::new()));
    assert!(m.contains("at least one device"), "{m}");
    // NdArray's dropout draws from the device's one generator: one worker per device.
    let m = message(
        trainer()
            .unwrap()
            .with_devices(named(&[ndarray(), ndarray()])),
    );
    assert!(
        m.contains("device 1 is the same device as device 0")
            && m.contains("only the flex backend"),
        "{m}"
    );
    let m = message(trainer().unwrap().with_devices(vec![
        ("0".into(), qkv_test_support::flex()),
        ("1".into(), flex()),
    ]));
    assert!(m.contains("device 0 has no autodiff"), "{m}");

    let mut config = tiny_recall(2, 0.0);
    config.batch_size = 2;
    let mut small = lm_trainer(config, &dir, &cache, &flex(), Start::Overwrite)
        .unwrap()
        .with_devices(named(&[flex(), flex(), flex()]))
        .unwrap();
    let m = small
        .run(&AtomicBool::new(false), None, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("a batch of 2 rows cannot be split across 3 devices")
            && m.contains("--batch-size"),
        "{m}"
    );
}
