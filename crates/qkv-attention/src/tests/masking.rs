//! Causal leak, padding, fully masked rows, and the two attention paths inside the layer.

use burn::prelude::*;
use burn::tensor::DType;
use qkv_tensor_ops::padding_mask_from_lengths;
use qkv_test_support::{SeededRng, assert_close, random_tensor, test_on_cpu_backends, values};

use super::seeded_layer;
use crate::{MhaInput, MultiHeadAttentionConfig};
use qkv_tensor_ops::AttentionPath;

test_on_cpu_backends!(causal_outputs_ignore_the_future, |device: &Device| {
    let config = MultiHeadAttentionConfig::new(20, 5).with_rotary_base(Some(10_000.0));
    let mha = seeded_layer(&config, 1, device);
    let mut rng = SeededRng::new(2);
    let (batch, seq) = (3, 13);
    let x = random_tensor(&mut rng, [batch, seq, 20], 1.0, device);
    for t in [0, 6, 11] {
        // Replace everything after position t with other values.
        let tail = random_tensor(&mut rng, [batch, seq - t - 1, 20], 5.0, device);
        let changed = x.clone().slice_assign(s![.., t + 1..seq, ..], tail);
        for return_probs in [false, true] {
            let run = |x: Tensor<3>| {
                let mut input = MhaInput::self_attn(x).causal();
                input.return_probs = return_probs;
                mha.forward(input)
            };
            let (a, b) = (run(x.clone()), run(changed.clone()));
            let prefix = |o: Tensor<3>| values(o.slice(s![.., 0..=t, ..]));
            // Not merely close: hidden keys get probability exactly 0, so nothing moves.
            assert_eq!(
                prefix(a.context),
                prefix(b.context),
                "t = {t}, probs {return_probs}"
            );
            if let Some(probs) = b.probs {
                let p = values(probs);
                for (at, prob) in p.iter().enumerate() {
                    let (i, j) = ((at / seq) % seq, at % seq);
                    if j > i {
                        assert_eq!(*prob, 0.0, "probability above the diagonal at ({i}, {j})");
                    }
                }
            }
        }
    }
});

test_on_cpu_backends!(probs_sum_to_one_and_paths_agree, |device: &Device| {
    let mha = seeded_layer(&MultiHeadAttentionConfig::new(20, 5), 3, device);
    let mut rng = SeededRng::new(4);
    let x = random_tensor(&mut rng, [3, 7, 20], 1.0, device);
    let pad = padding_mask_from_lengths(&[7, 4, 6], 7, device);
    let fused = mha.forward(
        MhaInput::self_attn(x.clone())
            .causal()
            .key_padding(pad.clone()),
    );
    let explicit = mha.forward(
        MhaInput::self_attn(x)
            .causal()
            .key_padding(pad)
            .return_probs(),
    );
    assert!(fused.probs.is_none());
    assert_close(
        &values(fused.context),
        &values(explicit.context),
        1e-5,
        "fused vs explicit",
    );
    let sums = values(explicit.probs.unwrap().sum_dim(3));
    assert_close(&sums, &vec![1.0; sums.len()], 1e-6, "row sums");
});

test_on_cpu_backends!(padded_keys_are_ignored, |device: &Device| {
    let mha = seeded_layer(&MultiHeadAttentionConfig::new(20, 5), 5, device);
    let mut rng = SeededRng::new(6);
    let real = random_tensor(&mut rng, [1, 5, 20], 1.0, device);
    let mut reference: Option<Vec<f32>> = None;
    for padded_len in [5, 8, 13] {
        // Same real tokens, followed by a different amount of junk padding.
        let junk = random_tensor(&mut rng, [1, padded_len - 5, 20], 3.0, device);
        let x = Tensor::cat(vec![real.clone(), junk], 1);
        let pad = padding_mask_from_lengths(&[5], padded_len, device);
        for causal in [false, true] {
            let mut input = MhaInput::self_attn(x.clone())
                .key_padding(pad.clone())
                .return_probs();
            input.causal = causal;
            let out = mha.forward(input);
            let probs = values(out.probs.unwrap());
            for (at, p) in probs.iter().enumerate() {
                if at % padded_len >= 5 {
                    assert_eq!(*p, 0.0, "padded key got probability {p}");
                }
            }
            if !causal {
                let got = values(out.context.slice(s![.., 0..5, ..]));
                match &reference {
                    None => reference = Some(got),
                    Some(want) => {
                        assert_close(&got, want, 1e-6, &format!("padded to {padded_len}"))
                    }
                }
            }
        }
    }
});

test_on_cpu_backends!(fully_masked_query_gives_output_bias, |device: &Device| {
    // Sequence 1 is all padding: its queries see no key. Documented behaviour: probabilities
    // all zero, per-head context zero, so the layer's output is exactly the output bias.
    let mha = seeded_layer(&MultiHeadAttentionConfig::new(20, 5), 7, device);
    let mut rng = SeededRng::new(8);
    let x = random_tensor(&mut rng, [2, 4, 20], 1.0, device);
    let pad = padding_mask_from_lengths(&[4, 0], 4, device);
    let bias = values(mha.output.bias.as_ref().unwrap().val());
    for return_probs in [false, true] {
        let mut input = MhaInput::self_attn(x.clone()).key_padding(pad.clone());
        input.return_probs = return_probs;
        let out = mha.forward(input);
        let ctx = values(out.context);
        assert!(ctx.iter().all(|v| v.is_finite()), "NaN or inf in {ctx:?}");
        for pos in 0..4 {
            let row = &ctx[(4 + pos) * 20..(5 + pos) * 20];
            assert_close(row, &bias, 1e-6, "fully masked row");
        }
        if let Some(p) = out.probs {
            assert!(
                values(p.slice(s![1..2, .., .., ..]))
                    .iter()
                    .all(|&v| v == 0.0)
            );
        }
    }
});

test_on_cpu_backends!(cross_attention_matches_reference, |device: &Device| {
    use qkv_tensor_ops::reference::{AttentionDims, reference_attention};
    let mha = seeded_layer(
        &MultiHeadAttentionConfig::new(20, 5).with_bias(false),
        9,
        device,
    );
    let mut rng = SeededRng::new(10);
    let query = random_tensor(&mut rng, [3, 7, 20], 1.0, device);
    let source = random_tensor(&mut rng, [3, 13, 20], 1.0, device);
    let pad = padding_mask_from_lengths(&[13, 9, 2], 13, device);
    let pad_host: Vec<bool> = pad.clone().into_data().try_into_vec_as().unwrap();
    let out = mha.forward(
        MhaInput::cross_attn(query.clone(), source.clone())
            .key_padding(pad)
            .return_probs(),
    );
    // The reference, by hand: project, split heads, slow attention, merge, project.
    let heads = |x: Tensor<3>, w: &burn::nn::Linear| {
        let [b, s, _] = x.dims();
        values(
            x.matmul(w.weight.val().unsqueeze())
                .reshape([b, s, 5, 4])
                .swap_dims(1, 2),
        )
    };
    let dims = AttentionDims {
        batch: 3,
        n_heads: 5,
        seq_q: 7,
        seq_k: 13,
        d_head: 4,
    };
    let (ctx, probs) = reference_attention(
        &heads(query, &mha.query),
        &heads(source.clone(), &mha.key),
        &heads(source, &mha.value),
        dims,
        false,
        Some(&pad_host),
    );
    let merged = Tensor::<4>::from_data(TensorData::new(ctx, [3, 5, 7, 4]), device)
        .swap_dims(1, 2)
        .reshape([3, 7, 20]);
    let want = values(merged.matmul(mha.output.weight.val().unsqueeze()));
    assert_close(&values(out.context), &want, 1e-5, "cross-attention context");
    assert_close(
        &values(out.probs.unwrap()),
        &probs,
        1e-6,
        "cross-attention probs",
    );
});

test_on_cpu_backends!(dropout_only_in_training, |device: &Device| {
    let config = MultiHeadAttentionConfig::new(20, 5).with_dropout(0.5);
    let plain = seeded_layer(&MultiHeadAttentionConfig::new(20, 5), 11, device);
    let train_device = device.clone().autodiff();
    let training = seeded_layer(&config, 11, &train_device);
    let mut rng = SeededRng::new(12);
    let x = random_tensor(&mut rng, [2, 6, 20], 1.0, device);
    let want = values(
        plain
            .forward(MhaInput::self_attn(x.clone()).causal())
            .context,
    );
    // valid() turns dropout off: same result as a layer without dropout.
    let eval = training.valid();
    let got = values(
        eval.forward(MhaInput::self_attn(x.clone()).causal())
            .context,
    );
    assert_close(&got, &want, 1e-5, "valid() output");
    // In training mode, dropout changes the output, but the returned probabilities are the
    // ones before dropout and still sum to 1.
    let x_train = Tensor::<3>::from_data(x.into_data(), &train_device);
    let out = training.forward(MhaInput::self_attn(x_train).causal().return_probs());
    assert!(
        burn::tensor::Tensor::<3>::from_data(out.context.into_data(), device)
            .sub(Tensor::from_data(TensorData::new(want, [2, 6, 20]), device))
            .abs()
            .max()
            .into_scalar::<f32>()
            > 1e-3
    );
    let sums = values(out.probs.unwrap().sum_dim(3));
    assert_close(&sums, &vec![1.0; sums.len()], 1e-6, "pre-dropout probs");
});

test_on_cpu_backends!(
    inspection_matches_forward_and_its_parts,
    |device: &Device| {
        let mha = seeded_layer(
            &MultiHeadAttentionConfig::new(20, 5).with_rotary_base(Some(100.0)),
            13,
            device,
        );
        let mut rng = SeededRng::new(14);
        let x = random_tensor(&mut rng, [2, 7, 20], 1.0, device);
        let seen = mha
            .inspect(MhaInput::self_attn(x.clone()).causal())
            .unwrap();
        let out = mha.forward(MhaInput::self_attn(x).causal().return_probs());
        assert_close(
            &values(seen.context),
            &values(out.context),
            1e-5,
            "inspect vs forward",
        );
        assert_close(
            &values(seen.probs.clone()),
            &values(out.probs.unwrap()),
            1e-6,
            "probs",
        );
        // The probabilities are the masked softmax of the scores it reports.
        let mask = qkv_tensor_ops::causal_mask(7, 7, device).reshape([1, 1, 7, 7]);
        let again = qkv_tensor_ops::masked_softmax(seen.scores, Some(mask));
        assert_close(
            &values(again),
            &values(seen.probs),
            1e-6,
            "softmax of scores",
        );
        assert_eq!(seen.q.dims(), [2, 5, 7, 4]);
    }
);

test_on_cpu_backends!(each_device_takes_its_measured_route, |device: &Device| {
    let flex = qkv_tensor_ops::fused::has_fused_kernels(device, DType::F32);
    let q = |seq: usize, device: &Device| Tensor::<4>::zeros([1, 2, seq, 4], device);
    let (plain, training) = (device.clone(), device.clone().autodiff());
    let flash_or = |fallback| if flex { AttentionPath::Flash } else { fallback };
    // The flash kernel on Flex whenever there is more than one query.
    for seq in [2, 64, 600] {
        assert_eq!(
            AttentionPath::choose(&q(seq, &plain), false),
            flash_or(AttentionPath::Fused)
        );
        assert_eq!(
            AttentionPath::choose(&q(seq, &training), false),
            flash_or(AttentionPath::Explicit)
        );
    }
    // A single query (a decoding step) goes through Burn's op, or the explicit route under
    // autodiff.
    assert_eq!(
        AttentionPath::choose(&q(1, &plain), false),
        AttentionPath::Fused
    );
    assert_eq!(
        AttentionPath::choose(&q(1, &training), false),
        AttentionPath::Explicit
    );
    // Asking for the probabilities always materialises them.
    for device in [&plain, &training] {
        assert_eq!(
            AttentionPath::choose(&q(600, device), true),
            AttentionPath::Explicit
        );
    }
});

test_on_cpu_backends!(fast_route_matches_the_explicit_one, |device: &Device| {
    // 530 positions: partial blocks and tiles of the flash kernel (Flex, training and
    // inference). Returning the probabilities forces the explicit route.
    let mha = seeded_layer(&MultiHeadAttentionConfig::new(16, 2), 6, device);
    let mut rng = SeededRng::new(8);
    let x = random_tensor(&mut rng, [2, 530, 16], 1.0, device);
    let pad = padding_mask_from_lengths(&[530, 500], 530, device);
    for padded in [false, true] {
        let input = |x: Tensor<3>| {
            let input = MhaInput::self_attn(x).causal();
            if padded {
                input.key_padding(pad.clone())
            } else {
                input
            }
        };
        let blocked = values(mha.forward(input(x.clone())).context);
        let explicit = values(mha.forward(input(x.clone()).return_probs()).context);
        assert_close(
            &blocked,
            &explicit,
            1e-5,
            &format!("inference, padded {padded}"),
        );
    }
    // Gradients to the input through both routes, on the training device.
    let train = device.clone().autodiff();
    let mha = seeded_layer(&MultiHeadAttentionConfig::new(16, 2), 6, &train);
    let weights = random_tensor(&mut rng, [2, 530, 16], 1.0, &train);
    let run = |probs: bool| {
        let x = Tensor::<3>::from_data(x.to_data(), &train).require_grad();
        let mut input = MhaInput::self_attn(x.clone()).causal();
        input.return_probs = probs;
        let out = mha.forward(input).context;
        let grads = (out.clone() * weights.clone()).sum().backward();
        (values(out), values(x.grad(&grads).expect("input gradient")))
    };
    let ((bv, bg), (ev, eg)) = (run(false), run(true));
    assert_close(&bv, &ev, 1e-5, "training values");
    assert_close(&bg, &eg, 1e-5, "input gradient");
});

// The two tests below are Flex-only: elsewhere both routes are the explicit one, so the
// comparison could not fail.

#[test]
fn flash_route_matches_the_explicit_one_for_padded_cross_attention() {
    // Cross-attention (not causal) over a padded source of 70 positions: the flash kernel
    // with a key mask, against the explicit route, values and both inputs' gradients.
    let train = qkv_test_support::flex().autodiff();
    let mha = seeded_layer(&MultiHeadAttentionConfig::new(24, 3), 4, &train);
    let mut rng = SeededRng::new(12);
    let query = random_tensor(&mut rng, [2, 9, 24], 1.0, &train);
    let source = random_tensor(&mut rng, [2, 70, 24], 1.0, &train);
    let weights = random_tensor(&mut rng, [2, 9, 24], 1.0, &train);
    let pad = padding_mask_from_lengths(&[70, 33], 70, &train);
    let run = |probs: bool| {
        let (query, source) = (query.clone().require_grad(), source.clone().require_grad());
        let mut input =
            MhaInput::cross_attn(query.clone(), source.clone()).key_padding(pad.clone());
        input.return_probs = probs;
        assert_eq!(
            AttentionPath::choose(&Tensor::<4>::zeros([2, 3, 9, 8], &train), probs),
            if probs {
                AttentionPath::Explicit
            } else {
                AttentionPath::Flash
            }
        );
        let out = mha.forward(input).context;
        let grads = (out.clone() * weights.clone()).sum().backward();
        let grad = |t: &Tensor<3>| values(t.grad(&grads).expect("tracked input"));
        (values(out), grad(&query), grad(&source))
    };
    let (fast, explicit) = (run(false), run(true));
    assert_close(&fast.0, &explicit.0, 1e-5, "values");
    assert_close(&fast.1, &explicit.1, 1e-5, "query gradient");
    assert_close(&fast.2, &explicit.2, 1e-5, "source gradient");
}

#[test]
fn flash_route_drops_what_the_explicit_route_drops() {
    // Seeded alike, the flash kernel's dropout and dropout on the materialised
    // probabilities drop the same entries; and dropout is really on.
    let train = qkv_test_support::flex().autodiff();
    let training = seeded_layer(
        &MultiHeadAttentionConfig::new(20, 5).with_dropout(0.5),
        11,
        &train,
    );
    let mut rng = SeededRng::new(13);
    let x = random_tensor(&mut rng, [2, 70, 20], 1.0, &train);
    let run = |probs: bool| {
        train.seed(5);
        let mut input = MhaInput::self_attn(x.clone()).causal();
        input.return_probs = probs;
        values(training.forward(input).context)
    };
    let (fast, explicit) = (run(false), run(true));
    assert_close(&fast, &explicit, 1e-5, "dropout: flash route vs explicit");
    let off = values(
        training
            .valid()
            .forward(MhaInput::self_attn(x.clone().inner()).causal())
            .context,
    );
    assert!(
        qkv_test_support::max_abs_diff(&fast, &off) > 1e-3,
        "dropout changed nothing"
    );
}
