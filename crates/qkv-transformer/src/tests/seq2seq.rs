//! The encoder–decoder: padding changes nothing, beam width 1 is greedy, the cache changes
//! nothing, label smoothing matches its reference, weights round-trip, bad input is named.

use std::path::Path;

use burn::prelude::*;
use qkv_test_support::{SeededRng, assert_close, test_on_cpu_backends, values};

use crate::weights::{load_module_tensors, module_tensors};
use crate::{
    DecodeConfig, DecoderCache, ModelError, PositionalEncoding, Seq2Seq, Seq2SeqConfig,
    reference_smoothed_cross_entropy, smoothed_cross_entropy,
};

const PAD: u32 = 0;
const BOS: u32 = 1;
const EOS: u32 = 2;
const VOCAB: usize = 19;

/// A small model with large seeded weights, so that every choice is sharp and any error in
/// masking or caching shows up.
fn model(positional: PositionalEncoding, device: &Device) -> Seq2Seq {
    let config = Seq2SeqConfig::new(VOCAB, VOCAB, 12, 9)
        .with_d_model(24)
        .with_n_heads(3)
        .with_positional(positional);
    let model = config.init(device);
    let mut rng = SeededRng::new(17);
    let tensors = module_tensors(&model)
        .into_iter()
        .map(|(name, (shape, values))| {
            // LayerNorm scales (initialised to ones) are kept; everything else is drawn.
            let vals = if shape.len() == 1 && values.iter().all(|&v| v == 1.0) {
                values
            } else {
                rng.vec(values.len(), 0.6)
            };
            (name, (shape, vals))
        })
        .collect();
    load_module_tensors(model, tensors, Path::new("seeded")).unwrap()
}

fn sources() -> Vec<Vec<u32>> {
    vec![
        vec![5, 9, EOS],
        vec![3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, EOS],
        vec![17, EOS],
        vec![6, 6, 7, 14, 3, EOS],
    ]
}

fn ids(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let len = rows.iter().map(Vec::len).max().unwrap();
    let mut flat = vec![PAD as i64; rows.len() * len];
    for (b, r) in rows.iter().enumerate() {
        for (i, &t) in r.iter().enumerate() {
            flat[b * len + i] = t as i64;
        }
    }
    Tensor::from_data(TensorData::new(flat, [rows.len(), len]), device)
}

fn encodings() -> [PositionalEncoding; 3] {
    [
        PositionalEncoding::Learned,
        PositionalEncoding::Sinusoidal,
        PositionalEncoding::Rotary { base: 10_000.0 },
    ]
}

test_on_cpu_backends!(
    padding_and_batch_neighbours_change_nothing,
    |device: &Device| {
        for positional in encodings() {
            let m = model(positional.clone(), device);
            let all = sources();
            let target = vec![BOS, 4, 7, 9];
            // Teacher-forced logits of each sentence alone...
            let alone: Vec<Vec<f32>> = all
                .iter()
                .map(|s| {
                    values(
                        m.forward(
                            ids(std::slice::from_ref(s), device),
                            ids(std::slice::from_ref(&target), device),
                        )
                        .unwrap(),
                    )
                })
                .collect();
            // ...equal its logits in a padded batch, whatever the neighbours.
            for order in [vec![0, 1, 2, 3], vec![2, 0], vec![3, 1, 0]] {
                let batch: Vec<Vec<u32>> = order.iter().map(|&i| all[i].clone()).collect();
                let tgt = vec![target.clone(); batch.len()];
                let logits = values(m.forward(ids(&batch, device), ids(&tgt, device)).unwrap());
                let per = logits.len() / batch.len();
                for (row, &i) in order.iter().enumerate() {
                    assert_close(
                        &logits[row * per..(row + 1) * per],
                        &alone[i],
                        1e-5,
                        &format!("{positional:?}: sentence {i} in batch {order:?}"),
                    );
                }
            }
            // Greedy decoding of the batch equals decoding each alone.
            let config = DecodeConfig::greedy(8, BOS, EOS);
            let batched = m.translate(&all, &config, device).unwrap();
            for (i, s) in all.iter().enumerate() {
                let single = m
                    .translate(std::slice::from_ref(s), &config, device)
                    .unwrap()
                    .remove(0);
                assert_eq!(
                    batched[i].tokens, single.tokens,
                    "{positional:?}: sentence {i}"
                );
                assert!((batched[i].log_prob - single.log_prob).abs() < 1e-4);
            }
        }
    }
);

test_on_cpu_backends!(beam_width_one_is_greedy, |device: &Device| {
    let m = model(PositionalEncoding::Learned, device);
    let config = DecodeConfig::greedy(8, BOS, EOS);
    let greedy = m.translate(&sources(), &config, device).unwrap();
    for (s, g) in sources().iter().zip(&greedy) {
        let beam = m.beam_search(s, &config, device).unwrap();
        assert_eq!(beam.tokens, g.tokens);
        assert_eq!(beam.finished, g.finished);
        assert!(
            (beam.log_prob - g.log_prob).abs() < 1e-4,
            "{} vs {}",
            beam.log_prob,
            g.log_prob
        );
    }
    // Wider beams never find a worse sequence than greedy under log p (no length penalty)
    // on these sentences, and every result is a real sequence of the vocabulary.
    let wide = DecodeConfig {
        beam_width: 4,
        ..config.clone()
    };
    let mut compared = 0;
    for (s, g) in sources().iter().zip(&greedy) {
        let b = m.beam_search(s, &wide, device).unwrap();
        assert!(b.tokens.iter().all(|&t| (t as usize) < VOCAB && t != EOS));
        if g.finished && b.finished {
            assert!(
                b.log_prob >= g.log_prob - 1e-4,
                "beam {} < greedy {}",
                b.log_prob,
                g.log_prob
            );
            compared += 1;
        }
    }
    // With these weights most sentences run to the length limit; at least one must finish
    // under both, or the comparison above checked nothing.
    assert!(compared >= 1, "no sentence finished under both decoders");
});

test_on_cpu_backends!(cached_decoding_equals_recomputing, |device: &Device| {
    for positional in encodings() {
        let m = model(positional.clone(), device);
        // Step by step through the cache == one teacher-forced pass.
        let src = ids(&[sources()[1].clone(), sources()[3].clone()], device);
        let encoded = m.encode(src).unwrap();
        let target = [BOS, 4, 7, 9, 11, 5];
        let full = values(
            m.decode(
                ids(&[target.to_vec(), target.to_vec()], device),
                &encoded,
                None,
                false,
            )
            .unwrap()
            .0,
        );
        let mut cache = DecoderCache::default();
        let mut stepped = Vec::new();
        for &t in &target {
            let step = ids(&[vec![t], vec![t]], device);
            stepped.push(values(
                m.decode(step, &encoded, Some(&mut cache), false).unwrap().0,
            ));
        }
        assert_eq!(cache.len(), target.len());
        let per_step = VOCAB;
        for (i, step) in stepped.iter().enumerate() {
            for b in 0..2 {
                let at = (b * target.len() + i) * per_step;
                assert_close(
                    &step[b * per_step..(b + 1) * per_step],
                    &full[at..at + per_step],
                    1e-5,
                    &format!("{positional:?} step {i} row {b}"),
                );
            }
        }
        // And whole decodes, greedy and beam, agree with and without the cache.
        for width in [1, 3] {
            let cached = DecodeConfig {
                beam_width: width,
                ..DecodeConfig::greedy(8, BOS, EOS)
            };
            let uncached = DecodeConfig {
                use_cache: false,
                ..cached.clone()
            };
            let a = m.translate(&sources(), &cached, device).unwrap();
            let b = m.translate(&sources(), &uncached, device).unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.tokens, y.tokens, "{positional:?} width {width}");
                assert!((x.log_prob - y.log_prob).abs() < 1e-4);
            }
        }
    }
});

test_on_cpu_backends!(label_smoothing_matches_its_reference, |device: &Device| {
    let mut rng = SeededRng::new(2);
    let logits_v = rng.vec(2 * 3 * 7, 3.0);
    let targets_v: Vec<i64> = vec![1, 0, 6, 3, 0, 2];
    let logits = Tensor::<3>::from_data(TensorData::new(logits_v.clone(), [2, 3, 7]), device);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets_v.clone(), [2, 3]), device);
    for smoothing in [0.0, 0.1, 0.5] {
        let got = smoothed_cross_entropy(logits.clone(), targets.clone(), Some(0), smoothing)
            .into_scalar::<f32>() as f64;
        let want = reference_smoothed_cross_entropy(&logits_v, &targets_v, 7, Some(0), smoothing);
        assert!((got - want).abs() < 1e-5, "ε {smoothing}: {got} vs {want}");
    }
});

test_on_cpu_backends!(
    weights_round_trip_and_mismatches_are_named,
    |device: &Device| {
        let m = model(PositionalEncoding::Learned, device);
        let tensors = module_tensors(&m);
        assert!(tensors.contains_key("decoder.0.cross_attn.query.weight"));
        let fresh = Seq2SeqConfig::new(VOCAB, VOCAB, 12, 9)
            .with_d_model(24)
            .with_n_heads(3)
            .init(device);
        let loaded = load_module_tensors(fresh, tensors.clone(), Path::new("m")).unwrap();
        let src = ids(&sources(), device);
        let tgt = ids(&vec![vec![BOS, 3]; 4], device);
        assert_eq!(
            values(m.forward(src.clone(), tgt.clone()).unwrap()),
            values(loaded.forward(src, tgt).unwrap())
        );
        let wider = Seq2SeqConfig::new(VOCAB, VOCAB, 12, 9)
            .with_d_model(30)
            .with_n_heads(3)
            .init(device);
        let err = load_module_tensors(wider, tensors, Path::new("m.safetensors")).unwrap_err();
        assert!(err.to_string().contains("m.safetensors"), "{err}");
    }
);

test_on_cpu_backends!(bad_input_and_config_get_named_errors, |device: &Device| {
    let m = model(PositionalEncoding::Learned, device);
    let too_long = vec![vec![3; 13]];
    assert!(matches!(
        m.encode(ids(&too_long, device)),
        Err(ModelError::TooLong { len: 13, .. })
    ));
    let config = DecodeConfig::greedy(8, BOS, EOS);
    assert!(m.translate(&[vec![]], &config, device).is_err());
    let zero_beam = DecodeConfig {
        beam_width: 0,
        ..config
    };
    assert!(m.translate(&sources(), &zero_beam, device).is_err());
    assert!(
        m.translate(&[], &DecodeConfig::greedy(8, BOS, EOS), device)
            .unwrap()
            .is_empty()
    );
    // Cached positions count against the target length: 9 fit, the 10th is named.
    let one = m.encode(ids(&sources()[..1], device)).unwrap();
    let mut cache = DecoderCache::default();
    for _ in 0..9 {
        m.decode(ids(&[vec![BOS]], device), &one, Some(&mut cache), false)
            .unwrap();
    }
    assert!(matches!(
        m.decode(ids(&[vec![BOS]], device), &one, Some(&mut cache), false),
        Err(ModelError::TooLong {
            len: 10,
            block_size: 9
        })
    ));
    let encoded = m.encode(ids(&sources(), device)).unwrap();
    let err = m
        .decode(ids(&[vec![BOS]], device), &encoded, None, false)
        .unwrap_err();
    assert!(
        err.to_string().contains("1 targets for 4 encoded sources"),
        "{err}"
    );
    for (config, needle) in [
        (Seq2SeqConfig::new(10, 12, 5, 5), "share_embeddings"),
        (
            Seq2SeqConfig::new(10, 10, 5, 5).with_n_heads(5),
            "must divide",
        ),
        (Seq2SeqConfig::new(10, 10, 0, 5), "max_src_len"),
        (Seq2SeqConfig::new(10, 10, 5, 5).with_pad_id(10), "pad_id"),
    ] {
        let err = config.try_init(device).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
    // Separate embeddings are fine with different vocabularies.
    Seq2SeqConfig::new(10, 12, 5, 5)
        .with_share_embeddings(false)
        .try_init(device)
        .unwrap();
});

fn bits(t: Tensor<3>) -> Vec<u32> {
    values(t).iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_hooked_encoder_decoder_run_is_the_plain_pass() {
    use crate::interp::{Hooks, Seq2SeqPoint};
    let device = qkv_test_support::flex();
    for positional in encodings() {
        let m = model(positional.clone(), &device);
        let src = ids(&sources(), &device);
        let tgt = ids(&vec![vec![BOS, 4, 7, 9, 3]; sources().len()], &device);
        let plain = m.forward(src.clone(), tgt.clone()).unwrap();
        let none = m
            .run_with_hooks(src.clone(), tgt.clone(), &mut Hooks::new())
            .unwrap();
        assert_eq!(bits(none), bits(plain.clone()), "{positional:?}");
        // Every stream point, no pattern: the layers' own code runs, bit for bit.
        let streams: Vec<Seq2SeqPoint> = Seq2SeqPoint::all(2, 2)
            .into_iter()
            .filter(|p| !crate::interp::Point::is_per_head(*p))
            .collect();
        let (logits, cache) = m
            .run_with_cache(src.clone(), tgt.clone(), streams.clone())
            .unwrap();
        assert_eq!(cache.len(), streams.len());
        assert_eq!(bits(logits), bits(plain));
        let memory = m.encode(src.clone()).unwrap().memory;
        assert_eq!(
            bits(cache.per_position(Seq2SeqPoint::Memory).unwrap()),
            bits(memory)
        );
    }
}

test_on_cpu_backends!(
    encoder_decoder_and_cross_attention_patterns_are_recorded_apart,
    |device: &Device| {
        use crate::interp::{DecoderPoint, EncoderPoint, Hooks, Seq2SeqPoint};
        for positional in encodings() {
            let m = model(positional.clone(), device);
            let all = sources();
            let src = ids(&all, device);
            let tgt = ids(&vec![vec![BOS, 4, 7, 9, 3]; all.len()], device);
            let plain = values(m.forward(src.clone(), tgt.clone()).unwrap());
            let mut hooks = Hooks::new().record_all();
            let logits = m
                .run_with_hooks(src.clone(), tgt.clone(), &mut hooks)
                .unwrap();
            assert_close(&values(logits), &plain, 1e-5, &format!("{positional:?}"));
            let cache = hooks.take_cache();
            let encoded = m.encode(src.clone()).unwrap();
            let (_, cross) = m.decode(tgt.clone(), &encoded, None, true).unwrap();
            let src_len = all.iter().map(Vec::len).max().unwrap();
            for (l, cross) in cross.iter().enumerate() {
                let recorded = cache
                    .per_head(Seq2SeqPoint::Decoder(l, DecoderPoint::CrossPattern))
                    .unwrap();
                assert_close(
                    &values(recorded),
                    &values(cross.clone()),
                    1e-5,
                    &format!("{positional:?}: cross-attention of layer {l}"),
                );
                // Encoder self-attention: rows sum to 1, padding keys get exactly 0.
                let enc = values(
                    cache
                        .per_head(Seq2SeqPoint::Encoder(l, EncoderPoint::Pattern))
                        .unwrap(),
                );
                let heads = enc.len() / (all.len() * src_len * src_len);
                for (b, s) in all.iter().enumerate() {
                    for h in 0..heads {
                        for q in 0..src_len {
                            let row = &enc[((b * heads + h) * src_len + q) * src_len..][..src_len];
                            let sum: f32 = row.iter().sum();
                            assert!((sum - 1.0).abs() < 1e-5, "row sums to {sum}");
                            assert!(row[s.len()..].iter().all(|&w| w == 0.0));
                        }
                    }
                }
                // Decoder self-attention is causal.
                let dec = values(
                    cache
                        .per_head(Seq2SeqPoint::Decoder(l, DecoderPoint::SelfPattern))
                        .unwrap(),
                );
                let t = 5;
                for (i, w) in dec.iter().enumerate() {
                    let (q, k) = ((i / t) % t, i % t);
                    if k > q {
                        assert_eq!(*w, 0.0);
                    }
                }
            }
            // An edit: silencing the cross-attention of both layers leaves a decoder that
            // cannot see the source, so every sentence gets the same logits.
            let mut deaf = Hooks::new();
            for l in 0..2 {
                deaf = deaf
                    .edit_per_position(Seq2SeqPoint::Decoder(l, DecoderPoint::CrossAttnOut), |x| {
                        x.zeros_like()
                    });
            }
            let out = values(
                m.run_with_hooks(src.clone(), tgt.clone(), &mut deaf)
                    .unwrap(),
            );
            let per = out.len() / all.len();
            for b in 1..all.len() {
                assert_close(
                    &out[b * per..(b + 1) * per],
                    &out[..per],
                    1e-6,
                    "a decoder without cross-attention",
                );
            }
            // Bad points are named.
            let message = m
                .run_with_hooks(
                    src.clone(),
                    tgt.clone(),
                    &mut Hooks::new().record([Seq2SeqPoint::Encoder(5, EncoderPoint::Pattern)]),
                )
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("encoder.5.attn.pattern")
                    && message.contains("encoder has layers 0..2"),
                "{message}"
            );
        }
    }
);
