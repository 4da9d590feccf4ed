//! Mixed precision: f16 and bf16 steps against f32 ones on the same model and batches, the
//! casts' gradients reaching the f32 weights, the f16 loss scale's overflow handling, and
//! whole f16 runs that resume exactly.

use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use qkv_transformer::{Gpt, GptConfig, cross_entropy};

use super::{lm_trainer, losses, temp_dir, tiny_recall};
use crate::optim::{AdamW, AdamWSettings, NamedGrads};
use crate::precision::{LossScaler, MixedPrecision, Precision};
use crate::{Event, Start, TrainError, train_step_mixed};

fn config(dropout: f64) -> GptConfig {
    GptConfig {
        vocab_size: 65,
        block_size: 32,
        n_layers: 2,
        n_heads: 4,
        d_model: 64,
        dropout,
        ..GptConfig::shakespeare_char(65)
    }
}

fn batch(device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let draw = |d: &Device| Tensor::<2, Int>::random([4, 32], Distribution::Uniform(0.0, 65.0), d);
    (draw(device), draw(device))
}

fn adamw() -> AdamW {
    AdamW::new(AdamWSettings {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.1,
    })
}

/// The losses and gradient norms of `steps` applied AdamW steps in `mixed`'s precision, from
/// the model seeded 7 on one fixed batch, and how many steps overflowed on the way.
fn run(
    device: &Device,
    mut mixed: MixedPrecision,
    dropout: f64,
    steps: usize,
) -> (Vec<(f64, f64)>, usize, Gpt) {
    let ad = device.clone().autodiff();
    ad.seed(7);
    let mut model: Gpt = config(dropout).init(&ad);
    let (x, y) = batch(&ad);
    let mut optimizer = adamw();
    let (mut out, mut overflows) = (Vec::new(), 0);
    while out.len() < steps {
        let (m, report) = train_step_mixed(model, &mut optimizer, &mut mixed, 1, 3e-3, 1.0, |m| {
            Ok(cross_entropy(m.forward(x.clone()), y.clone(), None))
        })
        .unwrap();
        model = m;
        if report.overflowed {
            overflows += 1;
            assert!(overflows < 64, "the loss scale never stopped overflowing");
            continue;
        }
        assert!(report.applied, "{}: {report:?}", mixed.precision());
        out.push((report.loss, report.grad_norm));
    }
    (out, overflows, model)
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// Twenty steps in f16 and in bf16 track the f32 run: every loss within 1% of f32's and the
/// first gradient norm within 2% (measured: losses f16 0.3%, bf16 0.6% at worst), while the losses
/// fall by more than half, so a mistake in the scaling, the casts' gradients or the f32
/// islands (10% anywhere) shows. The runs do differ from f32: they computed in half.
#[test]
fn half_precision_tracks_f32() {
    let _rng = super::rng_lock();
    let device = qkv_test_support::flex();
    let (want, _, _) = run(&device, MixedPrecision::new(Precision::F32), 0.0, 20);
    assert!(want[19].0 < want[0].0 / 2.0, "f32 run learned: {want:?}");
    for precision in [Precision::F16, Precision::Bf16] {
        let (got, overflows, model) = run(&device, MixedPrecision::new(precision), 0.0, 20);
        assert_eq!(
            overflows, 0,
            "{precision}: no overflow at the default scale"
        );
        // The first step's weights are f32's rounded: its loss agrees to 2e-4 (measured
        // 3e-5), which a loss or LayerNorm computed in the half type misses (7e-4 for bf16).
        assert!(
            relative(got[0].0, want[0].0) < 2e-4,
            "{precision}: first loss {} vs f32 {}",
            got[0].0,
            want[0].0
        );
        for (step, ((loss, _), (want_loss, _))) in got.iter().zip(&want).enumerate() {
            assert!(
                relative(*loss, *want_loss) < 0.01,
                "{precision} step {step}: loss {loss} vs f32 {want_loss}"
            );
        }
        assert!(
            relative(got[0].1, want[0].1) < 0.02,
            "{precision}: gradient norm {} vs f32 {}",
            got[0].1,
            want[0].1
        );
        assert!(
            got.iter().zip(&want).any(|(g, w)| g.0 != w.0),
            "{precision}: bit-identical to f32, so nothing ran in half precision"
        );
        // The master weights stay f32.
        for w in [
            model.token_embedding.weight.val(),
            model.blocks[0].mlp.fc.weight.val(),
        ] {
            assert_eq!(w.dtype(), DType::F32, "{precision}");
        }
    }
}

/// The model a mixed step computes on holds its parameters in the half type and yields half
/// logits; the backward pass reaches the f32 parameters with f32 gradients equal to f32's
/// within 3% of each tensor's largest gradient.
#[test]
fn compute_model_is_half_and_its_gradients_reach_the_f32_weights() {
    let _rng = super::rng_lock();
    let ad = qkv_test_support::flex().autodiff();
    ad.seed(7);
    let model: Gpt = config(0.0).init(&ad);
    let (x, y) = batch(&ad);
    let grads_of = |m: &Gpt| {
        let loss = cross_entropy(m.forward(x.clone()), y.clone(), None);
        assert_eq!(loss.dtype(), DType::F32, "the loss is f32");
        NamedGrads::collect(&model, &loss.backward())
    };
    let want = grads_of(&model);
    for (precision, dtype) in [(Precision::F16, DType::F16), (Precision::Bf16, DType::BF16)] {
        let half = MixedPrecision::new(precision).compute_model(&model);
        assert_eq!(half.token_embedding.weight.val().dtype(), dtype);
        assert_eq!(half.blocks[1].attn.query.weight.val().dtype(), dtype);
        assert_eq!(half.forward(x.clone()).dtype(), dtype, "{precision} logits");
        let got = grads_of(&half);
        assert_eq!(got.0.len(), want.0.len(), "every parameter has a gradient");
        for (name, w) in &want.0 {
            let g = &got.0[name];
            assert_eq!(g.dtype(), DType::F32, "{precision} {name}");
            let w: Vec<f32> = w.to_data().try_to_vec::<f32>().unwrap();
            let g: Vec<f32> = g.to_data().try_to_vec::<f32>().unwrap();
            let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = w
                .iter()
                .zip(&g)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= 0.03 * max,
                "{precision} {name}: gradient off by {err}, largest {max}"
            );
        }
    }
}

/// A loss scale far too large overflows f16: each such step leaves the model as it was and
/// halves the scale, until the gradients fit; the steps then track f32 as usual.
#[test]
fn f16_overflow_skips_the_step_and_halves_the_scale() {
    let _rng = super::rng_lock();
    let device = qkv_test_support::flex();
    let ad = device.clone().autodiff();
    ad.seed(7);
    let model: Gpt = config(0.0).init(&ad);
    let before = model.named_parameters();
    let (x, y) = batch(&ad);
    let start = 2f64.powi(40);
    let mut mixed = MixedPrecision::resume(Precision::F16, Some(LossScaler::starting_at(start)));
    let mut optimizer = adamw();
    let (model, report) = train_step_mixed(model, &mut optimizer, &mut mixed, 1, 3e-3, 1.0, |m| {
        Ok(cross_entropy(m.forward(x.clone()), y.clone(), None))
    })
    .unwrap();
    assert!(report.overflowed && !report.applied, "{report:?}");
    assert!(report.loss.is_finite());
    assert_eq!(mixed.loss_scale(), start / 2.0);
    assert_eq!(optimizer.t, 0, "AdamW did not step");
    assert_eq!(
        before,
        model.named_parameters(),
        "every parameter is unchanged"
    );

    let (want, _, _) = run(&device, MixedPrecision::new(Precision::F32), 0.0, 5);
    let scaled = MixedPrecision::resume(Precision::F16, Some(LossScaler::starting_at(start)));
    let (got, overflows, _) = run(&device, scaled, 0.0, 5);
    assert!((1..40).contains(&overflows), "{overflows} overflows");
    for ((loss, _), (want_loss, _)) in got.iter().zip(&want) {
        assert!(relative(*loss, *want_loss) < 0.01, "{loss} vs {want_loss}");
    }
}

/// Sinusoidal and rotary positions (f32 tables added to, or multiplied into, half tensors)
/// give f32's first loss within 2e-4 in both half types, and learn.
#[test]
fn every_position_encoding_runs_in_half_precision() {
    use qkv_transformer::PositionalEncoding;
    let _rng = super::rng_lock();
    let ad = qkv_test_support::flex().autodiff();
    let (x, y) = batch(&ad);
    for positional in [
        PositionalEncoding::Sinusoidal,
        PositionalEncoding::Rotary { base: 10000.0 },
    ] {
        let losses = |precision| {
            ad.seed(7);
            let mut model: Gpt = GptConfig {
                positional: positional.clone(),
                ..config(0.0)
            }
            .init(&ad);
            let (mut mixed, mut optimizer) = (MixedPrecision::new(precision), adamw());
            let mut out = Vec::new();
            for _ in 0..10 {
                let (m, report) =
                    train_step_mixed(model, &mut optimizer, &mut mixed, 1, 3e-3, 1.0, |m| {
                        Ok(cross_entropy(m.forward(x.clone()), y.clone(), None))
                    })
                    .unwrap();
                assert!(report.applied, "{positional:?} {precision}: {report:?}");
                model = m;
                out.push(report.loss);
            }
            out
        };
        let want = losses(Precision::F32);
        for precision in [Precision::F16, Precision::Bf16] {
            let got = losses(precision);
            assert!(
                relative(got[0], want[0]) < 2e-4,
                "{positional:?} {precision}: {} vs f32 {}",
                got[0],
                want[0]
            );
            assert!(
                relative(got[9], want[9]) < 0.01 && got[9] < got[0] * 0.9,
                "{positional:?} {precision}: {got:?} vs f32 {want:?}"
            );
        }
    }
}

/// With dropout, the half-precision steps (dropout masks drawn in the half type) still learn.
#[test]
fn half_precision_with_dropout_learns() {
    let _rng = super::rng_lock();
    let device = qkv_test_support::flex();
    for precision in [Precision::F16, Precision::Bf16] {
        let (got, _, _) = run(&device, MixedPrecision::new(precision), 0.1, 20);
        assert!(got.iter().all(|(l, n)| l.is_finite() && n.is_finite()));
        assert!(got[19].0 < got[0].0 / 2.0, "{precision}: {got:?}");
    }
}

/// A whole f16 run through the trainer: its config says f16, the checkpoint carries the loss
/// scaler, a run resumed half-way equals the straight one bit for bit, and the final loss
/// is within 2% of the same run in f32.
#[test]
fn f16_runs_resume_exactly_and_track_f32() {
    let _rng = super::rng_lock();
    let device = qkv_test_support::flex().autodiff();
    let cache = temp_dir("cache-f16");
    let stop = AtomicBool::new(false);
    let mut config = tiny_recall(12, 0.0);
    let f32_dir = temp_dir("f32-run");
    lm_trainer(config.clone(), &f32_dir, &cache, &device, Start::Fresh)
        .unwrap()
        .run(&stop, None, |_| {})
        .unwrap();

    config.precision = Precision::F16;
    let straight = temp_dir("f16-straight");
    let mut cuts = 0;
    lm_trainer(config.clone(), &straight, &cache, &device, Start::Fresh)
        .unwrap()
        .run(&stop, None, |e| {
            cuts += matches!(e, Event::LossScaleCut { .. }) as usize
        })
        .unwrap();
    assert_eq!(cuts, 0);
    let saved = std::fs::read_to_string(straight.join("config.json")).unwrap();
    assert!(saved.contains("\"precision\": \"f16\""), "{saved}");

    let halves = temp_dir("f16-halves");
    lm_trainer(config.clone(), &halves, &cache, &device, Start::Fresh)
        .unwrap()
        .run(&stop, Some(6), |_| {})
        .unwrap();
    let checkpoint = crate::checkpoint::Checkpoint::load(&halves).unwrap();
    assert_eq!(
        checkpoint.state.loss_scaler.as_ref().map(LossScaler::scale),
        Some(LossScaler::INITIAL_SCALE)
    );
    let mut resumed = lm_trainer(config.clone(), &halves, &cache, &device, Start::Resume).unwrap();
    assert_eq!(resumed.mixed.precision(), Precision::F16);
    resumed.run(&stop, None, |_| {}).unwrap();
    let (a, b) = (losses(&straight), losses(&halves));
    assert_eq!(a.len(), 12);
    assert_eq!(a, b, "the resumed f16 run equals the straight one");

    let last = |dir| f64::from_bits(losses(dir)[11].1);
    let (f16, f32) = (last(&straight), last(&f32_dir));
    assert!(relative(f16, f32) < 0.02, "final loss {f16} vs f32 {f32}");
}

/// Mixed precision on several devices, on the recurrent baseline and on a backend without
/// half types (NdArray) is refused, by name, before anything is written.
#[test]
fn unsupported_mixed_precision_is_refused_with_a_reason() {
    let _rng = super::rng_lock();
    let device = qkv_test_support::flex().autodiff();
    let cache = temp_dir("cache-f16-refused");
    let mut config = tiny_recall(2, 0.0);
    config.precision = Precision::Bf16;
    let dir = temp_dir("bf16-devices");
    let err = lm_trainer(config.clone(), &dir, &cache, &device, Start::Fresh)
        .unwrap()
        .with_devices(vec![
            ("0".into(), device.clone()),
            ("1".into(), device.clone()),
        ])
        .err()
        .expect("refused");
    assert!(
        matches!(&err, TrainError::Config(m) if m.contains("one device") && m.contains("--dtype")),
        "{err}"
    );
    let err = crate::RecurrentLanguageModel::open(
        config,
        qkv_transformer::recurrent::RecurrentCell::Lstm,
        &cache,
    )
    .expect_err("refused");
    assert!(err.to_string().contains("f32 only"), "{err}");

    let ndarray = qkv_test_support::ndarray().autodiff();
    let mut config = tiny_recall(2, 0.0);
    for precision in [Precision::F16, Precision::Bf16] {
        config.precision = precision;
        let dir = temp_dir(&format!("{precision}-ndarray"));
        let err = lm_trainer(config.clone(), &dir, &cache, &ndarray, Start::Fresh)
            .err()
            .expect("refused");
        let text = err.to_string();
        assert!(
            text.contains(&format!("cannot compute in {precision}"))
                && text.contains("--dtype f32"),
            "{text}"
        );
        assert!(!dir.join("checkpoint").exists());
    }
}
