//! AdamW against PyTorch's `torch.optim.AdamW` on the tiny GPT-2 fixture: the losses of 5
//! steps (decay on 2-D weights only, lr 1e-2, β 0.9/0.99) within 1e-3, then every updated
//! parameter, and every parameter's total update, against PyTorch's.

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

    // Every parameter after the 5 steps, against PyTorch's (made by
    // fixtures/make_adamw_fixture.py), within 5e-3 of each tensor's largest value: an
    // update 10% off in any one tensor, a LayerNorm's bias included, fails.
    let (after, _) = load_hf_gpt2(&fixtures().join("gpt2-tiny-adamw5"), device).unwrap();
    let got = model.valid().named_parameters();
    let want = after.named_parameters();
    assert_eq!(got.len(), want.len());
    let before = load_hf_gpt2(&fixtures().join("gpt2-tiny"), device)
        .unwrap()
        .0
        .named_parameters();
    for (((name, shape, got), (want_name, want_shape, want)), (_, _, start)) in
        got.iter().zip(&want).zip(&before)
    {
        assert_eq!((name, shape), (want_name, want_shape));
        if name.ends_with("attn.key.bias") {
            // The key bias adds q·b to every score of a query, a constant the softmax
            // removes: its true gradient is 0, and what both frameworks compute is rounding
            // noise (about 1e-9), which Adam's g / (√v + ε) turns into steps of up to lr.
            // Equal noise cannot be asked for; bounded steps can.
            let moved = got
                .iter()
                .zip(start)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(moved <= 5.0 * 1e-2 * 1.01, "{name} moved {moved}");
            continue;
        }
        qkv_test_support::assert_rel_close(got, want, 5e-3, &format!("{name} after 5 steps"));
        // And the step itself (after - before) within 2% of its own size, so that the check
        // is not carried by the unchanged part of the weights.
        let step = |v: &[f32]| -> Vec<f32> { v.iter().zip(start).map(|(a, b)| a - b).collect() };
        qkv_test_support::assert_rel_close(
            &step(got),
            &step(want),
            2e-2,
            &format!("{name}: the 5 updates"),
        );
    }
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
