//! Generation: the KV cache changes nothing but speed; prompts, batches, streaming, stops.

use burn::prelude::*;
use qkv_test_support::{assert_close, test_on_cpu_backends};

use crate::{GenerationConfig, Gpt, GptConfig, PositionalEncoding, Sampling};

fn model(positional: PositionalEncoding, device: &Device) -> Gpt {
    device.seed(3);
    // Large random weights make the next-token choice sensitive to any error.
    let config = GptConfig::new(37, 12, 2, 3, 24)
        .with_positional(positional)
        .with_tie_embeddings(false);
    let mut model = config.init(device);
    model.token_embedding.weight = model
        .token_embedding
        .weight
        .clone()
        .map(|w| w.mul_scalar(50.0));
    let head = model.lm_head.as_mut().expect("untied head");
    head.weight = head.weight.clone().map(|w| w.mul_scalar(100.0));
    for block in &mut model.blocks {
        for linear in [&mut block.attn.query, &mut block.attn.key] {
            linear.weight = linear.weight.clone().map(|w| w.mul_scalar(20.0));
        }
    }
    model
}

fn encodings() -> [PositionalEncoding; 3] {
    [
        PositionalEncoding::Learned,
        PositionalEncoding::Sinusoidal,
        PositionalEncoding::Rotary { base: 100.0 },
    ]
}

test_on_cpu_backends!(cache_equals_recompute, |device: &Device| {
    for positional in encodings() {
        let model = model(positional.clone(), device);
        // 3 + 25 tokens: the context fills the block (12) and slides.
        let prompts = vec![vec![1, 2, 3], vec![4, 5, 6]];
        let run = |use_cache| {
            let config = GenerationConfig {
                use_cache,
                keep_logits: true,
                ..GenerationConfig::greedy(25)
            };
            model.generate(&prompts, &config, |_, _| {}).unwrap()
        };
        let (cached, uncached) = (run(true), run(false));
        assert_eq!(cached.tokens, uncached.tokens, "{positional:?}");
        for (a, b) in cached
            .logits
            .iter()
            .flatten()
            .zip(uncached.logits.iter().flatten())
        {
            assert_close(a, b, 1e-5, &format!("{positional:?} step logits"));
        }
        assert_eq!(cached.logits[0].len(), 25);
        // The tokens are not all the same, or the comparison would prove little.
        assert!(
            cached.tokens[0].iter().any(|&t| t != cached.tokens[0][0]),
            "{:?}",
            cached.tokens
        );
    }
});

test_on_cpu_backends!(batched_prompts_equal_single_ones, |device: &Device| {
    let model = model(PositionalEncoding::Learned, device);
    let prompts = vec![vec![1, 2, 3], vec![9, 8], vec![4, 5, 6], vec![7]];
    let config = GenerationConfig::greedy(6);
    let mut streamed = vec![Vec::new(); prompts.len()];
    let together = model
        .generate(&prompts, &config, |i, t| streamed[i].push(t))
        .unwrap();
    assert_eq!(
        streamed, together.tokens,
        "streaming hands over every token, in order"
    );
    for (i, prompt) in prompts.iter().enumerate() {
        let alone = model
            .generate(std::slice::from_ref(prompt), &config, |_, _| {})
            .unwrap();
        assert_eq!(alone.tokens[0], together.tokens[i], "prompt {i}");
    }
});

test_on_cpu_backends!(long_prompts_are_cropped_from_the_left, |device: &Device| {
    let model = model(PositionalEncoding::Learned, device);
    let long: Vec<u32> = (0..30).map(|i| (i * 7 % 37) as u32).collect();
    let tail = long[30 - 12..].to_vec();
    let config = GenerationConfig::greedy(5);
    let a = model.generate(&[long], &config, |_, _| {}).unwrap();
    let b = model.generate(&[tail], &config, |_, _| {}).unwrap();
    assert_eq!(a.tokens, b.tokens);
});

test_on_cpu_backends!(stop_tokens_and_seeds, |device: &Device| {
    let model = model(PositionalEncoding::Learned, device);
    let free = model
        .generate(&[vec![1, 2]], &GenerationConfig::greedy(8), |_, _| {})
        .unwrap();
    let stop = free.tokens[0][2];
    let first = free.tokens[0].iter().position(|&t| t == stop).unwrap();
    let config = GenerationConfig {
        stop_tokens: vec![stop],
        ..GenerationConfig::greedy(8)
    };
    let stopped = model.generate(&[vec![1, 2]], &config, |_, _| {}).unwrap();
    assert_eq!(
        stopped.tokens[0],
        free.tokens[0][..=first].to_vec(),
        "ends with the stop token"
    );

    let sampled = |seed| {
        let sampling = Sampling::Random {
            temperature: 1.5,
            top_k: Some(10),
            top_p: Some(0.95),
            seed,
        };
        let config = GenerationConfig {
            sampling,
            ..GenerationConfig::greedy(30)
        };
        model
            .generate(&[vec![1, 2]], &config, |_, _| {})
            .unwrap()
            .tokens
    };
    assert_eq!(sampled(11), sampled(11));
    assert_ne!(sampled(11), sampled(12));
});

test_on_cpu_backends!(the_callback_stops_its_own_prompt, |device: &Device| {
    use std::ops::ControlFlow;
    let model = model(PositionalEncoding::Learned, device);
    let prompts = [vec![1, 2], vec![3, 4], vec![5, 6, 7]];
    let config = GenerationConfig::greedy(8);
    let free = model.generate(&prompts, &config, |_, _| {}).unwrap();
    // Prompt 1 stops after its third token; the others, batched with it, run on.
    let mut seen = [0usize; 3];
    let cut = model
        .generate_with(&prompts, &config, |prompt, _| {
            seen[prompt] += 1;
            if prompt == 1 && seen[prompt] == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(cut.tokens[1], free.tokens[1][..3].to_vec());
    assert_eq!(cut.tokens[0], free.tokens[0]);
    assert_eq!(cut.tokens[2], free.tokens[2]);
    assert_eq!(seen, [8, 3, 8]);
});

test_on_cpu_backends!(bad_prompts_are_errors, |device: &Device| {
    let model = model(PositionalEncoding::Learned, device);
    let config = GenerationConfig::greedy(3);
    let err = model
        .generate(&[vec![]], &config, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty"), "{err}");
    let err = model
        .generate(&[vec![1, 99]], &config, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("99") && err.contains("vocab_size 37"), "{err}");
    let sampling = Sampling::Random {
        temperature: -1.0,
        top_k: None,
        top_p: None,
        seed: 0,
    };
    let err = model
        .generate(
            &[vec![1]],
            &GenerationConfig { sampling, ..config },
            |_, _| {},
        )
        .unwrap_err();
    assert!(err.to_string().contains("temperature"), "{err}");
});

test_on_cpu_backends!(
    recorded_attention_matches_the_full_pass,
    |device: &Device| {
        let model = model(PositionalEncoding::Learned, device);
        let config = GenerationConfig {
            record_attention: true,
            ..GenerationConfig::greedy(4)
        };
        let out = model
            .generate(&[vec![3, 1, 4]], &config, |_, _| {})
            .unwrap();
        assert_eq!(out.attention[0].len(), 4, "one record per new token");
        // The record of the last new token is the last row of a full recorded pass over the
        // context that produced it.
        let mut context = vec![3i64, 1, 4];
        context.extend(out.tokens[0][..3].iter().map(|&t| t as i64));
        let n = context.len();
        let x = Tensor::<2, Int>::from_data(TensorData::new(context, [1, n]), device);
        let full = model.forward_detailed(x, None, true).unwrap();
        for (layer, probs) in full.attention.into_iter().enumerate() {
            let want = qkv_test_support::values(probs.slice(s![.., .., n - 1..n, ..]));
            assert_close(
                &out.attention[0][3][layer],
                &want,
                1e-5,
                &format!("layer {layer}"),
            );
        }
    }
);

test_on_cpu_backends!(
    forward_last_is_the_last_row_of_forward,
    |device: &Device| {
        let model = model(PositionalEncoding::Learned, device);
        let x = Tensor::<2, Int>::from_data([[5, 9, 2, 30, 7, 1], [3, 3, 8, 0, 11, 2]], device);
        let full = model.forward_detailed(x.clone(), None, false).unwrap();
        let last = model.forward_last(x, None, false).unwrap();
        assert_eq!(last.logits.dims(), [2, 1, 37]);
        let want = qkv_test_support::values(full.logits.slice(s![.., 5..6, ..]));
        assert_close(
            &qkv_test_support::values(last.logits),
            &want,
            1e-6,
            "last row",
        );
    }
);

test_on_cpu_backends!(recorder_does_not_change_the_output, |device: &Device| {
    let model = model(PositionalEncoding::Rotary { base: 100.0 }, device);
    let x = Tensor::<2, Int>::from_data([[5, 9, 2, 30, 7, 1]], device);
    let off = model.forward_detailed(x.clone(), None, false).unwrap();
    let on = model.forward_detailed(x, None, true).unwrap();
    assert!(off.attention.is_empty());
    assert_eq!(on.attention.len(), 2);
    let (a, b) = (
        qkv_test_support::values(off.logits),
        qkv_test_support::values(on.logits),
    );
    // Fused path off, explicit path on: the same function, to rounding.
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_close(
        &a,
        &b,
        1e-5 * scale.max(1.0),
        "logits with and without the recorder",
    );
    for probs in on.attention {
        let sums = qkv_test_support::values(probs.sum_dim(3));
        assert_close(&sums, &vec![1.0; sums.len()], 1e-6, "rows sum to 1");
    }
});

test_on_cpu_backends!(
    the_plain_forward_is_the_detailed_one_without_cache_or_recording,
    |device: &Device| {
        for positional in [
            PositionalEncoding::Learned,
            PositionalEncoding::Rotary { base: 100.0 },
        ] {
            let model = model(positional, device);
            let x = Tensor::<2, Int>::from_data([[5, 9, 2, 30, 7, 1], [3, 3, 8, 0, 2, 4]], device);
            let plain = qkv_test_support::values(model.forward(x.clone()));
            let detailed =
                qkv_test_support::values(model.forward_detailed(x, None, false).unwrap().logits);
            // The same ops in the same order: equal bit for bit.
            assert_eq!(plain, detailed);
        }
    }
);
