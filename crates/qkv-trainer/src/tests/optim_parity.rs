//! AdamW against PyTorch's `torch.optim.AdamW` on the tiny GPT-2 fixture: the losses of 5
//! steps (decay on 2-D weights only, lr 1e-2, β 0.9/0.99) within 1e-3.

use std::path::PathBuf;

use burn::prelude::*;
use qkv_test_support::test_on_cpu_backends;
use qkv_transformer::cross_entropy;
use qkv_transformer::gpt2::load_hf_gpt2;

use crate::optim::{AdamW, AdamWSettings, NamedGrads, clip_factor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../qkv-transformer/fixtures")
}

test_on_cpu_backends!(five_adamw_steps_match_pytorch, |device: &Device| {
    let ad = device.clone().autodiff();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gpt2-tiny-reference.json")).unwrap(),
    )
    .unwrap();
    let ints = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|t| t.as_i64().unwrap()))
            .collect()
    };
    let x = Tensor::<2, Int>::from_data(TensorData::new(ints(&json["input_ids"]), [3, 16]), &ad);
    let y = Tensor::<2, Int>::from_data(TensorData::new(ints(&json["targets"]), [3, 16]), &ad);
    let adamw = &json["adamw"];
    let settings = AdamWSettings {
        beta1: adamw["betas"][0].as_f64().unwrap(),
        beta2: adamw["betas"][1].as_f64().unwrap(),
        eps: adamw["eps"].as_f64().unwrap(),
        weight_decay: adamw["weight_decay"].as_f64().unwrap(),
    };
    let lr = adamw["lr"].as_f64().unwrap();
    let want: Vec<f64> = adamw["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();

    let (mut model, _) = load_hf_gpt2(&fixtures().join("gpt2-tiny"), &ad).unwrap();
    let mut optimizer = AdamW::new(settings);
    for (step, want) in want.iter().enumerate() {
        let (updated, report) = crate::train_step(model, &mut optimizer, 1, lr, 0.0, |m| {
            Ok(cross_entropy(m.forward(x.clone()), y.clone(), Some(-100)))
        })
        .unwrap();
        model = updated;
        let got = report.loss;
        assert!(
            (got - want).abs() < 1e-3,
            "step {step}: loss {got} vs PyTorch {want}"
        );
    }
    // The losses moved: the optimizer did something.
    assert!(want[4] < want[0] - 1.0);
});

#[test]
fn clipping_uses_the_global_norm() {
    let device = qkv_test_support::flex();
    let mut grads = NamedGrads::default();
    grads
        .0
        .insert("a".into(), Tensor::from_data([3.0, 0.0], &device));
    grads
        .0
        .insert("b".into(), Tensor::from_data([4.0], &device));
    assert!((grads.global_norm() - 5.0).abs() < 1e-6);
    assert!((clip_factor(5.0, 1.0) - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
    assert_eq!(clip_factor(0.5, 1.0), 1.0);
    assert_eq!(clip_factor(50.0, 0.0), 1.0, "0 turns clipping off");
}
