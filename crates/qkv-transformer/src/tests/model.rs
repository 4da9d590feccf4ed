//! The model itself: size, configuration errors, loss, and no peeking at the future.

use burn::prelude::*;
use qkv_test_support::{SeededRng, assert_close, random_tensor, test_on_cpu_backends, values};

use super::reference_json;
use crate::{GptConfig, ModelError, PositionalEncoding, cross_entropy, reference_cross_entropy};

test_on_cpu_backends!(shakespeare_char_size_matches_pytorch, |device: &Device| {
    let json = reference_json();
    let vocab = json["shakespeare_char_vocab"].as_u64().unwrap() as usize;
    let model = GptConfig::shakespeare_char(vocab).init(device);
    assert_eq!(
        model.parameter_count() as u64,
        json["shakespeare_char_parameters"].as_u64().unwrap()
    );
});

#[test]
fn bad_configs_are_named() {
    let device = qkv_test_support::flex();
    for (config, needle) in [
        (
            GptConfig::new(10, 8, 2, 3, 16),
            "n_heads (3) must divide d_model (16)",
        ),
        (GptConfig::new(0, 8, 2, 2, 16), "vocab_size"),
        (GptConfig::new(10, 0, 2, 2, 16), "block_size"),
        (GptConfig::new(10, 8, 2, 2, 16).with_dropout(1.5), "dropout"),
        (
            GptConfig::new(10, 8, 2, 2, 18)
                .with_positional(PositionalEncoding::Rotary { base: 1e4 }),
            "even d_head",
        ),
    ] {
        let err = config.try_init(&device).unwrap_err();
        assert!(matches!(err, ModelError::InvalidConfig(_)));
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    }
}

test_on_cpu_backends!(too_long_and_empty_inputs_are_errors, |device: &Device| {
    let model = GptConfig::new(10, 4, 1, 2, 8).init(device);
    let err = model
        .forward_detailed(Tensor::<2, Int>::zeros([1, 5], device), None, false)
        .unwrap_err();
    assert!(
        err.to_string().contains("longer than the block size 4"),
        "{err}"
    );
    let err = model
        .forward_detailed(Tensor::<2, Int>::zeros([0, 3], device), None, false)
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
});

test_on_cpu_backends!(
    loss_matches_reference_with_ignored_targets,
    |device: &Device| {
        let mut rng = SeededRng::new(71);
        let logits = random_tensor(&mut rng, [3, 7, 13], 3.0, device);
        let targets: Vec<i64> = (0..21)
            .map(|i| {
                if i % 5 == 2 {
                    -100
                } else {
                    rng.below(13) as i64
                }
            })
            .collect();
        let y = Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [3, 7]), device);
        let got = values(cross_entropy(logits.clone(), y.clone(), Some(-100)))[0];
        let want = reference_cross_entropy(&values(logits.clone()), &targets, 13, Some(-100));
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        let all_ignored = Tensor::<2, Int>::full([3, 7], -100, device);
        assert_eq!(
            values(cross_entropy(logits, all_ignored, Some(-100)))[0],
            0.0
        );
    }
);

test_on_cpu_backends!(logits_never_see_the_future, |device: &Device| {
    for positional in [
        PositionalEncoding::Learned,
        PositionalEncoding::Sinusoidal,
        PositionalEncoding::Rotary { base: 1e4 },
    ] {
        device.seed(8);
        let model = GptConfig::new(23, 13, 2, 2, 16)
            .with_positional(positional)
            .init(device);
        let a: Vec<i64> = (0..13).map(|i| (i * 5 % 23) as i64).collect();
        let mut b = a.clone();
        for t in b.iter_mut().skip(6) {
            *t = (*t + 11) % 23;
        }
        let logits =
            |ids: Vec<i64>| model.forward(Tensor::from_data(TensorData::new(ids, [1, 13]), device));
        let (la, lb) = (logits(a), logits(b));
        let prefix = |l: Tensor<3>| values(l.slice(s![.., 0..6, ..]));
        assert_eq!(prefix(la.clone()), prefix(lb.clone()));
        assert!(values(la.slice(s![.., 6.., ..])) != values(lb.slice(s![.., 6.., ..])));
    }
});

test_on_cpu_backends!(tanh_gelu_is_gelu_new, |device: &Device| {
    let x = Tensor::<1>::from_data([-3.0, -0.5, 0.0, 0.7, 2.5], device);
    let got = values(crate::gelu_tanh(x));
    let want: Vec<f32> = [-3.0f64, -0.5, 0.0, 0.7, 2.5]
        .iter()
        .map(|&x| {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        })
        .map(|v| v as f32)
        .collect();
    assert_close(&got, &want, 1e-6, "gelu_new");
});

test_on_cpu_backends!(
    ablating_a_head_removes_exactly_its_contribution,
    |device: &Device| {
        device.seed(9);
        let model = GptConfig::new(17, 8, 2, 4, 16).init(device);
        let tokens = Tensor::<2, Int>::from_data([[1, 5, 7, 2, 9]], device);
        let ablated = model.clone().ablate_head(1, 2).unwrap();
        // Only rows 8..12 of layer 1's output projection change, to zero.
        let before = values(model.blocks[1].attn.output.weight.val());
        let after = values(ablated.blocks[1].attn.output.weight.val());
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            if (8..12).contains(&(i / 16)) {
                assert_eq!(*a, 0.0)
            } else {
                assert_eq!(a, b)
            }
        }
        // The head's own context times those rows is what disappears from the attention output.
        let seen = model.inspect_layer(tokens.clone(), 1).unwrap();
        let head_ctx = seen
            .probs
            .slice(s![.., 2..3, .., ..])
            .matmul(seen.v.slice(s![.., 2..3, .., ..])); // [1,1,5,4]
        let rows = model.blocks[1]
            .attn
            .output
            .weight
            .val()
            .slice(s![8..12, ..]);
        let contribution = values(head_ctx.reshape([5, 4]).matmul(rows));
        let kept = ablated.inspect_layer(tokens, 1).unwrap();
        let diff: Vec<f32> = values(seen.context)
            .iter()
            .zip(values(kept.context))
            .map(|(a, b)| a - b)
            .collect();
        assert_close(&diff, &contribution, 1e-5, "removed contribution");
        assert!(model.clone().ablate_head(2, 0).is_err() && model.ablate_head(0, 4).is_err());
    }
);
