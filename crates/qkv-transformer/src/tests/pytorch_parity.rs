//! Parity with PyTorch / Hugging Face GPT-2 on the committed fixtures: logits, loss, every
//! gradient, and greedy generation. Tolerances: logits and loss 1e-4, gradients 1e-3
//! absolute and 1e-3 relative to each tensor's largest value.

use burn::prelude::*;
use qkv_test_support::{assert_close, assert_rel_close, test_on_cpu_backends, values};

/// Gradients agree with PyTorch's within this fraction of each tensor's largest value, so a
/// 10% error in any one parameter's gradient (the smallest LayerNorm's included) fails.
const REL: f32 = 1e-3;

use super::{fixtures, reference_json};
use crate::gpt2::load_hf_gpt2;
use crate::weights::read_safetensors;
use crate::{GenerationConfig, Gpt, cross_entropy};

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|t| t.as_i64().unwrap()))
        .collect()
}

fn batch(device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let json = reference_json();
    let x = Tensor::from_data(TensorData::new(ints(&json["input_ids"]), [3, 16]), device);
    let y = Tensor::from_data(TensorData::new(ints(&json["targets"]), [3, 16]), device);
    (x, y)
}

fn load(device: &Device) -> Gpt {
    load_hf_gpt2(&fixtures().join("gpt2-tiny"), device)
        .expect("fixture loads")
        .0
}

test_on_cpu_backends!(logits_and_loss_match_pytorch, |device: &Device| {
    let model = load(device);
    let path = fixtures().join("gpt2-tiny-reference.safetensors");
    let reference = read_safetensors(&std::fs::read(&path).unwrap(), &path).unwrap();
    let (x, y) = batch(device);
    let logits = model.forward(x);
    assert_close(
        &values(logits.clone()),
        &reference["logits"].1,
        1e-4,
        "logits vs PyTorch",
    );
    let loss = values(cross_entropy(logits, y, Some(-100)))[0];
    let want = reference_json()["loss"].as_f64().unwrap() as f32;
    assert!((loss - want).abs() < 1e-4, "loss {loss} vs PyTorch {want}");
});

test_on_cpu_backends!(every_gradient_matches_pytorch, |device: &Device| {
    let ad = device.clone().autodiff();
    let model = load(&ad);
    let path = fixtures().join("gpt2-tiny-reference.safetensors");
    let reference = read_safetensors(&std::fs::read(&path).unwrap(), &path).unwrap();
    let (x, y) = batch(&ad);
    let grads = cross_entropy(model.forward(x), y, Some(-100)).backward();
    let grad = |t: Tensor<2>| values(t.grad(&grads).expect("parameter has a gradient"));
    let grad1 = |t: Tensor<1>| values(t.grad(&grads).expect("parameter has a gradient"));
    let want = |name: &str| &reference[&format!("grad.transformer.{name}")].1;
    let mut checked = 0;
    let mut check = |got: Vec<f32>, name: &str| {
        assert_close(&got, want(name), 1e-3, &format!("gradient of {name}"));
        assert_rel_close(&got, want(name), REL, &format!("gradient of {name}"));
        checked += 1;
    };
    check(grad(model.token_embedding.weight.val()), "wte.weight");
    check(
        grad(model.position_embedding.as_ref().unwrap().weight.val()),
        "wpe.weight",
    );
    check(grad1(model.ln_f.weight.val()), "ln_f.weight");
    check(grad1(model.ln_f.bias.as_ref().unwrap().val()), "ln_f.bias");
    for (i, block) in model.blocks.iter().enumerate() {
        let h = format!("h.{i}");
        check(grad1(block.ln_1.weight.val()), &format!("{h}.ln_1.weight"));
        check(
            grad1(block.ln_1.bias.as_ref().unwrap().val()),
            &format!("{h}.ln_1.bias"),
        );
        check(grad1(block.ln_2.weight.val()), &format!("{h}.ln_2.weight"));
        check(
            grad1(block.ln_2.bias.as_ref().unwrap().val()),
            &format!("{h}.ln_2.bias"),
        );
        // HF fuses q, k, v into c_attn: [d, 3d] columns, [3d] bias.
        let attn = &block.attn;
        let fused_w = Tensor::cat(
            vec![
                attn.query.weight.val().grad(&grads).unwrap(),
                attn.key.weight.val().grad(&grads).unwrap(),
                attn.value.weight.val().grad(&grads).unwrap(),
            ],
            1,
        );
        check(values(fused_w), &format!("{h}.attn.c_attn.weight"));
        let bias = |l: &burn::nn::Linear| l.bias.as_ref().unwrap().val().grad(&grads).unwrap();
        let fused_b = Tensor::cat(
            vec![bias(&attn.query), bias(&attn.key), bias(&attn.value)],
            0,
        );
        check(values(fused_b), &format!("{h}.attn.c_attn.bias"));
        check(
            grad(attn.output.weight.val()),
            &format!("{h}.attn.c_proj.weight"),
        );
        check(values(bias(&attn.output)), &format!("{h}.attn.c_proj.bias"));
        check(
            grad(block.mlp.fc.weight.val()),
            &format!("{h}.mlp.c_fc.weight"),
        );
        check(values(bias(&block.mlp.fc)), &format!("{h}.mlp.c_fc.bias"));
        check(
            grad(block.mlp.proj.weight.val()),
            &format!("{h}.mlp.c_proj.weight"),
        );
        check(
            values(bias(&block.mlp.proj)),
            &format!("{h}.mlp.c_proj.bias"),
        );
    }
    // Every gradient PyTorch wrote was compared.
    let total = reference.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(checked, total);
});

test_on_cpu_backends!(greedy_generation_matches_pytorch, |device: &Device| {
    let model = load(device);
    let json = reference_json();
    let prompt: Vec<u32> = json["greedy_prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<u32> = json["greedy_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    for use_cache in [true, false] {
        let config = GenerationConfig {
            use_cache,
            ..GenerationConfig::greedy(20)
        };
        let got = model
            .generate(std::slice::from_ref(&prompt), &config, |_, _| {})
            .unwrap();
        assert_eq!(
            got.tokens[0], want,
            "cache {use_cache}: 20 greedy tokens, crossing the block size"
        );
    }
});
