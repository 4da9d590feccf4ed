//! Cross-backend parity: every backend (ndarray, and wgpu on whatever adapter it finds, Mesa's
//! software Vulkan driver in CI) against Flex, the reference CPU backend, on small fixed
//! shapes: attention outputs and probabilities, a model forward, one training step's
//! gradients and update, greedy generation, and data-parallel training with a worker on the
//! backend beside one on Flex.
//!
//! Tolerances (absolute, f32): attention and logits 1e-4; gradients 1e-4 plus 1e-3 of the
//! largest reference gradient of that parameter; parameters after one AdamW step (lr 1e-2)
//! 5e-4, that is 5% of the learning rate: the first AdamW update is lr·g/(|g| + ε), which
//! turns the backends' tiny absolute differences in near-zero gradients into visible
//! differences of the update (9e-5 measured on ndarray and on lavapipe).
//! GPU reductions sum in a different order from the CPU, so bit equality is not expected.
//!
//! The wgpu copies (and the vulkan ones, in a build with the `vulkan` feature) need a Vulkan
//! driver; with none, they fail with a message saying which package to install (CI installs
//! Mesa's). They run with Burn's fusion and autotune on, as the command line does.

use burn::prelude::*;
use qkv_backends::Backend;
use qkv_tensor_ops::{AttentionPath, SdpaOptions, attention_probs, scaled_dot_product_attention};
use qkv_test_support::{SeededRng, assert_close, random_tensor, values};
use qkv_trainer::optim::{AdamW, AdamWSettings, NamedGrads};
use qkv_transformer::weights::HostTensors;
use qkv_transformer::{GenerationConfig, Gpt, GptConfig, cross_entropy};
use std::path::Path;
use std::sync::Mutex;

/// Expands to one test per non-reference backend, each calling `$body(&device)` where the
/// reference is always Flex.
macro_rules! against_flex {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn ndarray() {
                ($body)(&device(Backend::Ndarray));
            }
            #[test]
            fn wgpu() {
                ($body)(&device(Backend::Wgpu));
            }
            #[cfg(feature = "vulkan")]
            #[test]
            fn vulkan() {
                ($body)(&device(Backend::Vulkan));
            }
        }
    };
}

/// The device for `backend`, or a failure that says how to make it available. Each backend
/// is probed once per process, under a lock (the probe swaps the process's panic hook).
fn device(backend: Backend) -> Device {
    static CHECKED: Mutex<Vec<Backend>> = Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
    if !checked.contains(&backend) {
        backend.check().unwrap_or_else(|e| panic!("{e}"));
        checked.push(backend);
    }
    backend.device()
}

fn flex() -> Device {
    Backend::Flex.device()
}

/// The tiny model every model-level check uses: 2 layers, 4 heads, 32 wide, block 16.
fn tiny_config() -> GptConfig {
    GptConfig::new(23, 16, 2, 4, 32)
}

/// Deterministic weights drawn from [`SeededRng`], independent of any backend's generator.
fn seeded_weights(config: &GptConfig, seed: u64) -> HostTensors {
    let shapes = config.init(&flex()).parameter_shapes();
    let mut rng = SeededRng::new(seed);
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            let vals = if name.ends_with("gamma") {
                rng.vec(n, 0.1).into_iter().map(|v| 1.0 + v).collect()
            } else {
                rng.vec(n, 0.15)
            };
            (name, (shape, vals))
        })
        .collect()
}

/// The tiny model with the seeded weights, on `device`.
fn tiny_model(device: &Device) -> Gpt {
    let config = tiny_config();
    config
        .init(device)
        .load_named(seeded_weights(&config, 11), Path::new("seeded weights"))
        .expect("seeded weights fit the config")
}

fn tokens(rng: &mut SeededRng, batch: usize, seq: usize, device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = (0..batch * seq).map(|_| rng.below(23) as i64).collect();
    Tensor::from_data(TensorData::new(ids, [batch, seq]), device)
}

against_flex!(attention_outputs_and_probabilities, |device: &Device| {
    for path in [
        AttentionPath::Explicit,
        AttentionPath::Flash,
        AttentionPath::Fused,
    ] {
        let run = |dev: &Device| {
            let mut rng = SeededRng::new(5);
            let q = random_tensor(&mut rng, [2, 4, 12, 8], 1.0, dev);
            let k = random_tensor(&mut rng, [2, 4, 12, 8], 1.0, dev);
            let v = random_tensor(&mut rng, [2, 4, 12, 8], 1.0, dev);
            let options = SdpaOptions {
                causal: true,
                scale: None,
                path,
            };
            let probs = attention_probs(q.clone(), k.clone(), None, true, None);
            let out = scaled_dot_product_attention(q, k, v, None, options);
            (values(out.context), values(probs))
        };
        let (ctx, probs) = run(device);
        let (ctx_ref, probs_ref) = run(&flex());
        assert_close(&ctx, &ctx_ref, 1e-4, &format!("{path:?} attention context"));
        assert_close(&probs, &probs_ref, 1e-4, "attention probabilities");
        // Causality holds exactly on every backend, not just within tolerance.
        for (i, p) in probs.iter().enumerate() {
            let (row, col) = ((i / 12) % 12, i % 12);
            if col > row {
                assert_eq!(*p, 0.0, "probability above the diagonal at {row},{col}");
            }
        }
    }
});

against_flex!(model_forward_logits, |device: &Device| {
    let run = |dev: &Device| {
        let mut rng = SeededRng::new(9);
        values(tiny_model(dev).forward(tokens(&mut rng, 3, 16, dev)))
    };
    assert_close(&run(device), &run(&flex()), 1e-4, "logits");
});

/// One training step: loss, every parameter's gradient, and the parameters after AdamW.
fn training_step(device: &Device) -> (f32, NamedGrads, HostTensors) {
    let ad = device.clone().autodiff();
    let model = tiny_model(&ad);
    let mut rng = SeededRng::new(21);
    let x = tokens(&mut rng, 4, 16, &ad);
    let y = tokens(&mut rng, 4, 16, &ad);
    let loss = cross_entropy(model.forward(x), y, None);
    let loss_value = loss.clone().into_scalar::<f32>();
    let grads = loss.backward();
    let named = NamedGrads::collect(&model, &grads);
    let mut adamw = AdamW::new(AdamWSettings {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.1,
    });
    let updated = adamw.step(model, &named, 1e-2, 1.0);
    let params = updated
        .named_parameters()
        .into_iter()
        .map(|(name, shape, vals)| (name, (shape, vals)))
        .collect();
    (loss_value, named, params)
}

against_flex!(training_step_gradients_and_update, |device: &Device| {
    let (loss, grads, params) = training_step(device);
    let (loss_ref, grads_ref, params_ref) = training_step(&flex());
    assert!((loss - loss_ref).abs() < 1e-4, "loss {loss} vs {loss_ref}");
    assert_eq!(
        grads.0.keys().collect::<Vec<_>>(),
        grads_ref.0.keys().collect::<Vec<_>>()
    );
    for (name, g_ref) in &grads_ref.0 {
        let g_ref = values(g_ref.clone());
        let g = values(grads.0[name].clone());
        let scale = g_ref.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name}: the reference gradient is all zeros");
        assert_close(
            &g,
            &g_ref,
            1e-4 + 1e-3 * scale,
            &format!("gradient of {name}"),
        );
    }
    for (name, (_, p_ref)) in &params_ref {
        assert_close(&params[name].1, p_ref, 5e-4, &format!("{name} after AdamW"));
    }
});

/// Three f16 mixed-precision steps (f32 weights and AdamW, half forward and backward, the
/// loss scale at its default): their losses and gradient norms. The half types round
/// differently from f32 and sum in other orders on each backend.
fn f16_steps(device: &Device) -> Vec<(f64, f64)> {
    use qkv_trainer::{MixedPrecision, Precision, train_step_mixed};
    let ad = device.clone().autodiff();
    let mut model = tiny_model(&ad);
    let mut rng = SeededRng::new(21);
    let x = tokens(&mut rng, 4, 16, &ad);
    let y = tokens(&mut rng, 4, 16, &ad);
    let mut adamw = AdamW::new(AdamWSettings {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.1,
    });
    let mut mixed = MixedPrecision::new(Precision::F16);
    let mut out = Vec::new();
    for _ in 0..3 {
        let (m, report) = train_step_mixed(model, &mut adamw, &mut mixed, 1, 1e-2, 1.0, |m| {
            Ok(cross_entropy(m.forward(x.clone()), y.clone(), None))
        })
        .unwrap();
        assert!(report.applied, "{report:?}");
        model = m;
        out.push((report.loss, report.grad_norm));
    }
    out
}

/// Each loss within 0.5% and each gradient norm within 2% of Flex's f16 steps (f16 keeps 11
/// bits, so two backends' half-precision sums differ by about 1e-3 relative). NdArray has
/// no f16; the trainer refuses it by name (`qkv-trainer`'s precision tests).
fn f16_steps_match_flex(device: &Device) {
    assert!(
        device.supports_dtype(burn::tensor::DType::F16),
        "no f16 on {device:?}"
    );
    let got = f16_steps(device);
    let want = f16_steps(&flex());
    for (step, ((loss, norm), (want_loss, want_norm))) in got.iter().zip(&want).enumerate() {
        assert!(
            (loss - want_loss).abs() < 5e-3 * want_loss.abs(),
            "step {step}: loss {loss} vs Flex {want_loss}"
        );
        assert!(
            (norm - want_norm).abs() < 2e-2 * want_norm.abs(),
            "step {step}: gradient norm {norm} vs Flex {want_norm}"
        );
    }
}

#[test]
fn f16_mixed_precision_steps_wgpu() {
    f16_steps_match_flex(&device(Backend::Wgpu));
}

#[cfg(feature = "vulkan")]
#[test]
fn f16_mixed_precision_steps_vulkan() {
    f16_steps_match_flex(&device(Backend::Vulkan));
}

against_flex!(greedy_generation, |device: &Device| {
    let run = |dev: &Device| {
        let model = tiny_model(dev);
        let prompts = vec![vec![1, 2, 3], vec![4, 5, 6]];
        let mut config = GenerationConfig::greedy(20);
        config.keep_logits = true;
        model.generate(&prompts, &config, |_, _| {}).unwrap()
    };
    let got = run(device);
    let reference = run(&flex());
    assert_eq!(got.tokens, reference.tokens, "greedy tokens differ");
    // 20 steps run past the 16-token block, so the sliding-window path is covered too.
    for (a, b) in got
        .logits
        .iter()
        .flatten()
        .zip(reference.logits.iter().flatten())
    {
        assert_close(a, b, 1e-4, "logits behind each generated token");
    }
});

/// The losses of three data-parallel steps (and the evaluation after them) of a tiny recall
/// run, with a worker on each of `devices` (the first holds the model); one device: the
/// plain step.
fn data_parallel_losses(devices: &[Device]) -> Vec<f64> {
    use qkv_trainer::{DataConfig, LanguageModel, ModelSettings, Start, TrainConfig, Trainer};
    let mut config = TrainConfig::recall();
    config.model = ModelSettings {
        n_layers: 1,
        n_heads: 2,
        d_model: 16,
        block_size: 23,
        dropout: 0.0,
        bias: true,
        positional: qkv_transformer::PositionalEncoding::Learned,
    };
    config.data = DataConfig::Recall {
        n_pairs: 6,
        n_keys: 16,
        n_values: 10,
        gap: 0,
    };
    (config.batch_size, config.max_iters, config.lr_decay_iters) = (8, 3, 3);
    (config.eval_interval, config.eval_iters, config.warmup_iters) = (3, 1, 1);
    let dir = qkv_test_support::temp_dir("parity-data-parallel");
    let named: Vec<(String, Device)> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (i.to_string(), d.clone().autodiff()))
        .collect();
    let task = LanguageModel::open(config, &dir).unwrap();
    let mut trainer = Trainer::new(task, &dir.join("run"), &named[0].1, Start::Fresh)
        .unwrap()
        .with_devices(named)
        .unwrap();
    let mut losses = Vec::new();
    let summary = trainer
        .run(&std::sync::atomic::AtomicBool::new(false), None, |event| {
            if let qkv_trainer::Event::Step(record) = event {
                losses.push(record.loss);
            }
        })
        .unwrap();
    losses.push(summary.final_eval.unwrap().val_loss);
    losses
}

// A worker on each backend beside one on Flex (which holds the model): the gradients cross
// from the backend to Flex every step, as they cross from GPU to GPU, and the run is the
// one-device run.
against_flex!(
    data_parallel_with_a_worker_on_each_backend,
    |device: &Device| {
        let got = data_parallel_losses(&[flex(), device.clone()]);
        let want = data_parallel_losses(&[flex()]);
        assert_eq!(got.len(), 4);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs(),
                "step {} loss {g} against Flex alone {w}",
                i + 1
            );
        }
    }
);
