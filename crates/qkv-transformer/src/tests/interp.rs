//! Hooks, the activation cache, the logit lens, patching and attribution, held against the
//! plain forward pass.

use burn::prelude::*;
use qkv_test_support::{SeededRng, max_abs_diff, test_on_cpu_backends, values};

use crate::interp::{
    HookPoint, Hooks, Patch, activation_patching, direct_logit_attribution, logit_lens,
    logit_lens_report, run_patched,
};
use crate::weights::{load_module_tensors, module_tensors};
use crate::{Gpt, GptConfig, PositionalEncoding};

const VOCAB: usize = 23;

/// Small models with large seeded weights (so that every part matters): learned positions
/// with biases, rotary without biases and with an untied head, sinusoidal.
fn models(device: &Device) -> Vec<Gpt> {
    let configs = [
        GptConfig::new(VOCAB, 12, 3, 2, 16),
        GptConfig::new(VOCAB, 12, 2, 4, 16)
            .with_positional(PositionalEncoding::Rotary { base: 10_000.0 })
            .with_bias(false)
            .with_tie_embeddings(false),
        GptConfig::new(VOCAB, 12, 2, 2, 16).with_positional(PositionalEncoding::Sinusoidal),
    ];
    let mut rng = SeededRng::new(41);
    configs
        .iter()
        .map(|config| {
            let model = config.init(device);
            let tensors = module_tensors(&model)
                .into_iter()
                .map(|(name, (shape, v))| (name, (shape, rng.vec(v.len(), 0.5))))
                .collect();
            load_module_tensors(model, tensors, std::path::Path::new("seeded")).unwrap()
        })
        .collect()
}

fn tokens(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(data, [1, ids.len()]), device)
}

fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
    values(t).iter().map(|x| x.to_bits()).collect()
}

/// `max |a − b| / max |b|`.
fn relative(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    max_abs_diff(a, b) / scale
}

const PROMPT: [u32; 9] = [3, 14, 1, 22, 7, 7, 0, 19, 5];

#[test]
fn cached_activations_equal_the_plain_forward_pass_bit_for_bit() {
    let device = qkv_test_support::flex();
    for model in models(&device) {
        let x = tokens(&PROMPT, &device);
        let n = model.n_layers();
        // Every point outside attention's internals: the plain code runs in every layer.
        let points: Vec<HookPoint> = HookPoint::all(n)
            .into_iter()
            .filter(|p| !p.is_per_head() && !matches!(p, HookPoint::MlpHidden(_)))
            .collect();
        let (logits, cache) = model.run_with_cache(x.clone(), points.clone()).unwrap();
        assert_eq!(cache.len(), points.len());
        assert_eq!(bits(logits.clone()), bits(model.forward(x.clone())));
        let mut stream = model.embed(x.clone(), 0);
        assert_eq!(
            bits(cache.per_position(HookPoint::Embed).unwrap()),
            bits(stream.clone())
        );
        for (l, block) in model.blocks.iter().enumerate() {
            let pre = cache.per_position(HookPoint::ResidPre(l)).unwrap();
            assert_eq!(bits(pre), bits(stream.clone()), "layer {l} resid_pre");
            let attn_in = block.ln_1.forward(stream.clone());
            let attn_out = block.attention(attn_in.clone());
            let mid = stream.clone() + attn_out.clone();
            let mlp_in = block.ln_2.forward(mid.clone());
            let mlp_out = block.feed_forward(mlp_in.clone());
            stream = block.forward(stream);
            for (point, want) in [
                (HookPoint::AttnIn(l), attn_in),
                (HookPoint::AttnOut(l), attn_out),
                (HookPoint::ResidMid(l), mid),
                (HookPoint::MlpIn(l), mlp_in),
                (HookPoint::MlpOut(l), mlp_out),
                (HookPoint::ResidPost(l), stream.clone()),
            ] {
                assert_eq!(
                    bits(cache.per_position(point).unwrap()),
                    bits(want),
                    "{point}"
                );
            }
        }
        let final_norm = cache.per_position(HookPoint::FinalNorm).unwrap();
        assert_eq!(bits(final_norm), bits(model.ln_f.forward(stream)));
        assert_eq!(
            bits(cache.per_position(HookPoint::Logits).unwrap()),
            bits(logits)
        );

        // With no hook at all, the hooked run is the plain pass.
        let plain = model.run_with_hooks(x.clone(), &mut Hooks::new()).unwrap();
        assert_eq!(bits(plain), bits(model.forward(x.clone())));
    }
}

test_on_cpu_backends!(
    attention_opened_step_by_step_matches_the_layer,
    |device: &Device| {
        for model in models(device) {
            let x = tokens(&PROMPT, device);
            let n = model.n_layers();
            let mut hooks = Hooks::new().record_all();
            let logits = model.run_with_hooks(x.clone(), &mut hooks).unwrap();
            let cache = hooks.take_cache();
            assert_eq!(cache.len(), HookPoint::all(n).len());
            let want = values(model.forward(x.clone()));
            assert!(relative(&values(logits), &want) < 1e-5);
            for l in 0..n {
                let inspected = model.inspect_layer(x.clone(), l).unwrap();
                for (point, want) in [
                    (HookPoint::Query(l), inspected.q),
                    (HookPoint::Key(l), inspected.k),
                    (HookPoint::Value(l), inspected.v),
                    (HookPoint::Pattern(l), inspected.probs.clone()),
                ] {
                    let got = values(cache.per_head(point).unwrap());
                    assert!(relative(&got, &values(want)) < 1e-5, "{point}");
                }
                // Scores: the inspected (unmasked) ones where a key is visible, -inf after.
                let scores = values(cache.per_head(HookPoint::Scores(l)).unwrap());
                let raw = values(inspected.scores);
                let seq = PROMPT.len();
                for (i, (s, r)) in scores.iter().zip(&raw).enumerate() {
                    let (q, k) = ((i / seq) % seq, i % seq);
                    if k > q {
                        assert_eq!(*s, f32::NEG_INFINITY);
                    } else {
                        assert!((s - r).abs() <= 1e-5 * r.abs().max(1.0), "{s} vs {r}");
                    }
                }
                // The MLP's neurons, widened four times.
                let hidden = cache.per_position(HookPoint::MlpHidden(l)).unwrap();
                assert_eq!(hidden.dims(), [1, seq, 64]);
            }
        }
    }
);

test_on_cpu_backends!(
    an_edit_replaces_an_activation_for_every_later_step,
    |device: &Device| {
        let model = models(device).remove(0);
        let x = tokens(&PROMPT, device);
        // Zeroing head 1 of layer 1 through its output equals ablating it in the weights.
        let dev = device.clone();
        let mut hooks = Hooks::new().edit_per_head(HookPoint::HeadOutput(1), move |z| {
            let [b, _, s, d] = z.dims();
            z.slice_assign(s![.., 1..2, .., ..], Tensor::zeros([b, 1, s, d], &dev))
        });
        let edited = values(model.run_with_hooks(x.clone(), &mut hooks).unwrap());
        let ablated = values(model.clone().ablate_head(1, 1).unwrap().forward(x.clone()));
        assert!(relative(&edited, &ablated) < 1e-5);
        let untouched = values(model.forward(x.clone()));
        assert!(
            relative(&edited, &untouched) > 1e-2,
            "the edit changed the logits"
        );

        // Two edits of one point apply in order; the cache holds the edited value.
        let mut hooks = Hooks::new()
            .record([HookPoint::ResidMid(0)])
            .edit_per_position(HookPoint::ResidMid(0), |r| r.mul_scalar(2.0))
            .edit_per_position(HookPoint::ResidMid(0), |r| r.add_scalar(1.0));
        model.run_with_hooks(x.clone(), &mut hooks).unwrap();
        let (_, plain) = model
            .run_with_cache(x.clone(), [HookPoint::ResidMid(0)])
            .unwrap();
        let want: Vec<f32> = values(plain.per_position(HookPoint::ResidMid(0)).unwrap())
            .iter()
            .map(|v| v * 2.0 + 1.0)
            .collect();
        let got = values(hooks.cache().per_position(HookPoint::ResidMid(0)).unwrap());
        assert!(relative(&got, &want) < 1e-6);
    }
);

#[test]
fn bad_hooks_are_named_errors() {
    let device = qkv_test_support::flex();
    let model = models(&device).remove(0);
    let x = || tokens(&PROMPT, &device);
    let error = |hooks: &mut Hooks| model.run_with_hooks(x(), hooks).unwrap_err().to_string();

    let message = error(&mut Hooks::new().record([HookPoint::Pattern(3)]));
    assert!(
        message.contains("blocks.3.attn.pattern") && message.contains("0..3"),
        "{message}"
    );
    let message = error(&mut Hooks::new().edit_per_position(HookPoint::Pattern(0), |t| t));
    assert!(message.contains("edit_per_head"), "{message}");
    let message = error(&mut Hooks::new().edit_per_head(HookPoint::AttnOut(0), |t| t));
    assert!(message.contains("edit_per_position"), "{message}");
    let message = error(
        &mut Hooks::new().edit_per_position(HookPoint::MlpOut(1), |t| t.slice(s![.., 0..2, ..])),
    );
    assert!(
        message.contains("blocks.1.mlp_out") && message.contains("[1, 9, 16]"),
        "{message}"
    );

    // Names round-trip, and a bad one is explained.
    for point in HookPoint::all(3) {
        assert_eq!(point.to_string().parse::<HookPoint>().unwrap(), point);
    }
    let message = "blocks.x.attn.pattern".parse::<HookPoint>().unwrap_err();
    assert!(message.contains("resid_pre"), "{message}");
    assert!("blocks.1.attn.nope".parse::<HookPoint>().is_err());
}

test_on_cpu_backends!(
    the_logit_lens_ends_at_the_model_s_logits,
    |device: &Device| {
        for model in models(device) {
            let x = tokens(&PROMPT, device);
            let stages = logit_lens(&model, x.clone()).unwrap();
            assert_eq!(stages.len(), model.n_layers() + 1);
            let last = stages.last().unwrap().clone();
            assert_eq!(bits(last), bits(model.forward(x.clone())));
            // The first stage reads the embeddings alone.
            let embed = model.unembed(model.embed(x.clone(), 0));
            assert_eq!(bits(stages[0].clone()), bits(embed));

            let targets: Vec<Option<u32>> =
                PROMPT[1..].iter().map(|&t| Some(t)).chain([None]).collect();
            let report = logit_lens_report(&model, &PROMPT, &targets, 3).unwrap();
            assert_eq!(report.stages.len(), model.n_layers() + 1);
            let logits = values(model.forward(x.clone()));
            for p in 0..PROMPT.len() {
                let row = &logits[p * VOCAB..(p + 1) * VOCAB];
                let top = &report.top[model.n_layers()][p];
                let best = (0..VOCAB).fold(0, |m, j| if row[j] > row[m] { j } else { m });
                assert_eq!(top[0].id as usize, best);
                assert!(top[0].prob >= top[1].prob && top[1].prob >= top[2].prob);
                match report.target[model.n_layers()][p] {
                    Some((rank, _)) => {
                        let t = targets[p].unwrap() as usize;
                        let above = row.iter().filter(|&&v| v > row[t]).count();
                        assert_eq!(rank, above);
                    }
                    None => assert_eq!(p, PROMPT.len() - 1),
                }
            }
        }
    }
);

test_on_cpu_backends!(
    patching_a_run_into_itself_changes_nothing_and_patching_everything_restores_it,
    |device: &Device| {
        for model in models(device) {
            let n = model.n_layers();
            let clean = tokens(&PROMPT, device);
            let mut corrupted_ids = PROMPT;
            corrupted_ids[2] = 9;
            corrupted_ids[6] = 11;
            let corrupted = tokens(&corrupted_ids, device);
            let record = |x: Tensor<2, Int>| {
                let mut hooks = Hooks::new().explicit_attention().record_all();
                let logits = model.run_with_hooks(x, &mut hooks).unwrap();
                (logits, hooks.take_cache())
            };
            let (clean_logits, clean_cache) = record(clean.clone());
            let (corrupted_logits, _) = record(corrupted.clone());
            let mut patches = vec![Patch::ResidPre {
                layer: 0,
                position: None,
            }];
            for layer in 0..n {
                patches.extend([
                    Patch::Head { layer, head: 1 },
                    Patch::ResidPre {
                        layer,
                        position: Some(4),
                    },
                    Patch::AttnOut(layer),
                    Patch::MlpOut(layer),
                ]);
            }
            for &patch in &patches {
                let same = run_patched(&model, clean.clone(), &clean_cache, patch).unwrap();
                assert_eq!(
                    bits(same),
                    bits(clean_logits.clone()),
                    "{patch:?} into itself"
                );
            }
            // Everything: the stream entering the first block, at every position.
            let all = Patch::ResidPre {
                layer: 0,
                position: None,
            };
            let restored = run_patched(&model, corrupted.clone(), &clean_cache, all).unwrap();
            assert_eq!(bits(restored), bits(clean_logits.clone()));
            // The last MLP's output alone moves the logits, but not all the way back.
            let one = run_patched(
                &model,
                corrupted.clone(),
                &clean_cache,
                Patch::MlpOut(n - 1),
            )
            .unwrap();
            assert_ne!(bits(one.clone()), bits(corrupted_logits.clone()));
            assert_ne!(bits(one), bits(clean_logits.clone()));

            // A cache from another prompt length is refused.
            let short = tokens(&PROMPT[..5], device);
            let message = run_patched(&model, short, &clean_cache, Patch::AttnOut(0))
                .unwrap_err()
                .to_string();
            assert!(message.contains("same length"), "{message}");
        }
    }
);

#[test]
fn activation_patching_measures_the_restored_fraction() {
    let device = qkv_test_support::flex();
    let model = models(&device).remove(0);
    let mut corrupted = PROMPT;
    corrupted[3] = 2;
    // The pair of tokens whose logit difference the corruption moves most.
    let diff = |ids: &[u32]| values(model.forward(tokens(ids, &device)));
    let (a, b) = (diff(&PROMPT), diff(&corrupted));
    let last = (PROMPT.len() - 1) * VOCAB;
    let change: Vec<f32> = (0..VOCAB).map(|j| a[last + j] - b[last + j]).collect();
    let answer = (0..VOCAB).fold(0, |m, j| if change[j] > change[m] { j } else { m }) as u32;
    let wrong = (0..VOCAB).fold(0, |m, j| if change[j] < change[m] { j } else { m }) as u32;
    let result = activation_patching(&model, &PROMPT, &corrupted, answer, wrong).unwrap();
    let n = model.n_layers();
    assert_eq!(result.heads.len(), n);
    assert_eq!(result.resid_pre[0].len(), PROMPT.len());
    // Patching the corrupted position's stream entering block 0 restores everything; any
    // other position there nothing (the embeddings of equal tokens are equal).
    assert!(
        (result.resid_pre[0][3] - 1.0).abs() < 1e-4,
        "{:?}",
        result.resid_pre[0]
    );
    for (p, &r) in result.resid_pre[0]
        .iter()
        .enumerate()
        .filter(|(p, _)| *p != 3)
    {
        assert!(r.abs() < 1e-4, "position {p}: {r}");
    }
    // Before the corrupted position the two runs are identical in every layer (attention is
    // causal), so patching the stream there restores exactly nothing.
    for (l, row) in result.resid_pre.iter().enumerate() {
        assert!(row[..3].iter().all(|&r| r == 0.0), "layer {l}: {row:?}");
    }
    let message = activation_patching(&model, &PROMPT, &PROMPT[..4], answer, wrong)
        .unwrap_err()
        .to_string();
    assert!(message.contains("same length"), "{message}");
    let message = activation_patching(&model, &PROMPT, &corrupted, answer, answer)
        .unwrap_err()
        .to_string();
    assert!(message.contains("same"), "{message}");
    let message = activation_patching(&model, &PROMPT, &PROMPT, answer, wrong)
        .unwrap_err()
        .to_string();
    assert!(message.contains("nothing to restore"), "{message}");
    let message = activation_patching(&model, &PROMPT, &corrupted, 99, wrong)
        .unwrap_err()
        .to_string();
    assert!(message.contains("vocabulary"), "{message}");
}

test_on_cpu_backends!(
    attributions_add_up_to_the_logit_and_each_head_s_is_its_own,
    |device: &Device| {
        for model in models(device) {
            let position = 6;
            let token = 13;
            let attribution = direct_logit_attribution(&model, &PROMPT, position, token).unwrap();
            let logits = values(model.forward(tokens(&PROMPT, device)));
            let logit = logits[position * VOCAB + token as usize];
            assert!((attribution.logit - logit).abs() <= 1e-5 * logit.abs().max(1.0));
            let parts: f32 = attribution
                .heads
                .iter()
                .flatten()
                .map(|c| c.abs())
                .sum::<f32>()
                + attribution.mlps.iter().map(|c| c.abs()).sum::<f32>()
                + attribution.embed.abs();
            assert!(
                (attribution.total() - logit).abs() <= 1e-4 * parts,
                "parts add up to {} for a logit of {logit}",
                attribution.total()
            );

            // Each head's share, independently: keep only that head's output in its layer
            // and read what the layer then adds to the stream (less the output bias).
            let x = tokens(&PROMPT, device);
            let (_, cache) = model
                .run_with_cache(x.clone(), [HookPoint::ResidPost(model.n_layers() - 1)])
                .unwrap();
            let stream = values(
                cache
                    .per_position(HookPoint::ResidPost(model.n_layers() - 1))
                    .unwrap(),
            );
            let d = 16;
            let row = &stream[position * d..(position + 1) * d];
            let mean = row.iter().sum::<f32>() / d as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let sigma = (var + model.ln_f.epsilon as f32).sqrt();
            let gamma = values(model.ln_f.weight.val());
            let w_u = values(model.unembedding());
            let u: Vec<f32> = (0..d)
                .map(|i| gamma[i] * w_u[i * VOCAB + token as usize])
                .collect();
            let read = |c: &[f32]| {
                let m = c.iter().sum::<f32>() / d as f32;
                c.iter().zip(&u).map(|(x, u)| (x - m) * u).sum::<f32>() / sigma
            };
            for (layer, block) in model.blocks.iter().enumerate() {
                let n_heads = block.attn.n_heads;
                let bias = block.attn.output.bias.as_ref().map(|b| values(b.val()));
                for head in 0..n_heads {
                    let dev = device.clone();
                    let mut hooks = Hooks::new()
                        .record([HookPoint::AttnOut(layer)])
                        .edit_per_head(HookPoint::HeadOutput(layer), move |z| {
                            let keep = z.clone().slice(s![.., head..head + 1, .., ..]);
                            Tensor::zeros(z.dims(), &dev)
                                .slice_assign(s![.., head..head + 1, .., ..], keep)
                        });
                    model.run_with_hooks(x.clone(), &mut hooks).unwrap();
                    let out = values(
                        hooks
                            .cache()
                            .per_position(HookPoint::AttnOut(layer))
                            .unwrap(),
                    );
                    let mut written = out[position * d..(position + 1) * d].to_vec();
                    if let Some(bias) = &bias {
                        written.iter_mut().zip(bias).for_each(|(w, b)| *w -= b);
                    }
                    let want = read(&written);
                    let got = attribution.heads[layer][head];
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1e-2),
                        "layer {layer} head {head}: {got} vs {want}"
                    );
                }
            }
        }
    }
);
