//! Parity of every fused op with its explicit path: values and gradients, on Flex with and
//! without autodiff (the kernels) and on NdArray (which takes the explicit path itself).

use super::*;
use qkv_test_support::{SeededRng, assert_close, check_parity, random_tensor, values};

/// Flex with autodiff, the device training runs on.
fn flex_autodiff() -> Device {
    qkv_test_support::flex().autodiff()
}

#[test]
fn kernels_serve_flex_only() {
    assert!(has_fused_kernels(&flex_autodiff(), DType::F32));
    assert!(has_fused_kernels(&qkv_test_support::flex(), DType::F32));
    assert!(!has_fused_kernels(&qkv_test_support::ndarray(), DType::F32));
    assert!(!has_fused_kernels(&qkv_test_support::flex(), DType::F64));
}

#[test]
fn layer_norm_matches_explicit_values_and_gradients() {
    // d = 37 exercises the lane remainder; the offset mean tests the two-pass variance.
    for (rows, d) in [(6, 37), (50, 128), (3, 8)] {
        let device = flex_autodiff();
        let mut rng = SeededRng::new(d as u64);
        let x = random_tensor(&mut rng, [2, rows, d], 3.0, &device).add_scalar(5.0);
        let gamma = random_tensor(&mut rng, [1, 1, d], 1.0, &device).add_scalar(1.0);
        let beta = random_tensor(&mut rng, [1, 1, d], 1.0, &device);
        let eps = 1e-5;
        let flat = |t: Tensor<3>| t.reshape([d]);
        check_parity(
            &format!("layer_norm {rows}x{d}"),
            [x, gamma, beta],
            |[x, g, b]| layer_norm(x, flat(g), Some(flat(b)), eps),
            |[x, g, b]| layer_norm_explicit(x, flat(g), Some(flat(b)), eps),
            2e-5,
        );
    }
}

#[test]
fn layer_norm_without_beta_and_off_flex() {
    for device in [qkv_test_support::flex(), qkv_test_support::ndarray()] {
        let mut rng = SeededRng::new(3);
        let x = random_tensor(&mut rng, [5, 16], 2.0, &device);
        let gamma = random_tensor(&mut rng, [16], 1.0, &device);
        let got = values(layer_norm(x.clone(), gamma.clone(), None, 1e-5));
        let want = values(burn::tensor::module::layer_norm(x, gamma, None, 1e-5));
        assert_close(&got, &want, 2e-5, "layer_norm without beta vs Burn's op");
    }
}

#[test]
fn scaled_softmax_matches_explicit_values_and_gradients() {
    // Square causal, decode-style (fewer queries than keys), odd lengths, and no mask.
    for (seq_q, seq_k, causal) in [(9, 9, true), (3, 11, true), (5, 7, false), (64, 64, true)] {
        let device = flex_autodiff();
        let mut rng = SeededRng::new((seq_q * 100 + seq_k) as u64);
        let scores = random_tensor(&mut rng, [2, 3, seq_q, seq_k], 4.0, &device);
        let scale = 0.35;
        check_parity(
            &format!("scaled_softmax {seq_q}x{seq_k} causal={causal}"),
            [scores],
            |[s]| scaled_softmax(s, scale, causal),
            |[s]| scaled_softmax_explicit(s, scale, causal),
            2e-6,
        );
    }
}

#[test]
fn scaled_softmax_hides_future_keys_exactly_and_rows_sum_to_one() {
    let device = qkv_test_support::flex();
    let (seq_q, seq_k) = (4, 6);
    let scores = random_tensor(&mut SeededRng::new(1), [1, 1, seq_q, seq_k], 50.0, &device);
    let p = values(scaled_softmax(scores, 1.0, true));
    for i in 0..seq_q {
        let row = &p[i * seq_k..(i + 1) * seq_k];
        let visible = i + 1 + seq_k - seq_q;
        assert!(row[visible..].iter().all(|&x| x == 0.0), "row {i}: {row:?}");
        let total: f32 = row.iter().sum();
        assert!((total - 1.0).abs() < 1e-6, "row {i} sums to {total}");
    }
}

#[test]
fn scaled_softmax_off_flex_is_the_explicit_path() {
    let device = qkv_test_support::ndarray();
    let scores = random_tensor(&mut SeededRng::new(2), [2, 2, 5, 5], 3.0, &device);
    let got = values(scaled_softmax(scores.clone(), 0.5, true));
    let want = values(scaled_softmax_explicit(scores, 0.5, true));
    assert_eq!(got, want);
}

#[test]
fn gelu_matches_explicit_values_and_gradients() {
    let device = flex_autodiff();
    // Wide range: the tails of erf and the exp clamp both matter.
    let x = random_tensor(&mut SeededRng::new(5), [7, 301], 12.0, &device);
    check_parity(
        "gelu",
        [x],
        |[x]| gelu(x),
        |[x]| burn::tensor::activation::gelu(x),
        1e-6,
    );
}

/// GELU of a fresh product, which the op owns alone and so overwrites in place, against the
/// explicit path, for both variants: values and the gradient through the stored slope.
#[test]
fn gelu_over_an_owned_input_matches_explicit_values_and_gradients() {
    let device = flex_autodiff();
    let x = random_tensor(&mut SeededRng::new(7), [5, 333], 8.0, &device);
    check_parity(
        "gelu of an owned input",
        [x.clone()],
        |[x]| gelu(x.mul_scalar(1.5)),
        |[x]| burn::tensor::activation::gelu(x.mul_scalar(1.5)),
        1e-6,
    );
    check_parity(
        "gelu_tanh of an owned input",
        [x],
        |[x]| gelu_tanh(x.mul_scalar(1.5)),
        |[x]| gelu_tanh_explicit(x.mul_scalar(1.5)),
        2e-6,
    );
}

/// GELU writes over its input only when nothing else holds it: a tensor the caller keeps is
/// unchanged after a tracked GELU (both variants) and its backward pass.
#[test]
fn gelu_leaves_a_shared_input_unchanged() {
    let x = random_tensor(&mut SeededRng::new(8), [4, 100], 3.0, &flex_autodiff());
    let before = values(x.clone());
    let tracked = x.clone().require_grad();
    for y in [gelu(tracked.clone()), gelu_tanh(tracked.clone())] {
        let grads = y.sum().backward();
        assert!(tracked.grad(&grads).is_some(), "the input is tracked");
    }
    assert_eq!(values(x), before, "gelu changed an input it does not own");
    assert_eq!(values(tracked), before, "gelu changed a tracked input");
}

/// The one-pass kernel gives exactly what the separate forward and backward kernels give.
#[test]
fn gelu_and_slope_kernel_is_the_forward_and_backward_kernels() {
    let x: Vec<f32> = (0..40_001).map(|i| (i as f32 - 20_000.0) * 6e-4).collect();
    let ones = vec![1.0f32; x.len()];
    for tanh in [false, true] {
        let (mut want_y, mut want_slope) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let (mut got_y, mut got_slope) = (x.clone(), vec![0.0; x.len()]);
        if tanh {
            kernels::gelu_tanh_forward(&x, &mut want_y);
            kernels::gelu_tanh_backward(&x, &ones, &mut want_slope);
            kernels::gelu_tanh_and_slope(&mut got_y, &mut got_slope);
        } else {
            kernels::gelu_forward(&x, &mut want_y);
            kernels::gelu_backward(&x, &ones, &mut want_slope);
            kernels::gelu_and_slope(&mut got_y, &mut got_slope);
        }
        assert_eq!(got_y, want_y, "values, tanh {tanh}");
        assert_eq!(got_slope, want_slope, "slopes, tanh {tanh}");
        let mut dy: Vec<f32> = x.iter().map(|v| v.sin()).collect();
        let want: Vec<f32> = dy.iter().zip(&got_slope).map(|(d, s)| d * s).collect();
        kernels::mul_in_place(&mut dy, &got_slope);
        assert_eq!(dy, want, "dy · slope, tanh {tanh}");
    }
}

#[test]
fn gelu_tanh_matches_explicit_values_and_gradients() {
    let device = flex_autodiff();
    // Wide range: the tanh saturates on both sides, and the exp inside it clamps.
    let x = random_tensor(&mut SeededRng::new(6), [7, 301], 12.0, &device);
    check_parity(
        "gelu_tanh",
        [x],
        |[x]| gelu_tanh(x),
        |[x]| gelu_tanh_explicit(x),
        // Both sides round in f32 (libm's tanhf and powf on the explicit one, an exp-based
        // tanh here): 1.5e-6 of the largest gradient apart at most.
        2e-6,
    );
}

#[test]
fn dropout_zeroes_or_scales_and_its_gradient_uses_the_same_mask() {
    let device = flex_autodiff();
    let prob = 0.25;
    let x = random_tensor(&mut SeededRng::new(8), [64, 300], 1.0, &device)
        .add_scalar(2.0)
        .require_grad();
    let out = dropout(x.clone(), prob);
    let grads = out.clone().sum().backward();
    let (xs, outs) = (values(x.clone()), values(out));
    let grad = values(x.grad(&grads).expect("x is tracked"));
    let keep = 1.0 - prob as f32;
    let mut kept = 0;
    for ((&x, &o), &g) in xs.iter().zip(&outs).zip(&grad) {
        if o == 0.0 {
            assert_eq!(g, 0.0, "a dropped element passes no gradient");
        } else {
            kept += 1;
            assert!((o - x / keep).abs() < 1e-5, "kept {o} vs {x}/{keep}");
            assert!((g - 1.0 / keep).abs() < 1e-6, "gradient {g}");
        }
    }
    let rate = kept as f32 / xs.len() as f32;
    assert!((rate - keep).abs() < 0.01, "kept {rate}, expected {keep}");
}

#[test]
fn dropout_masks_follow_the_backend_seed() {
    let device = qkv_test_support::flex();
    let x = Tensor::<2>::ones([16, 64], &device);
    let _guard = crate::fused::tests::seed_lock();
    let run = |seed| {
        device.seed(seed);
        values(dropout(x.clone(), 0.5))
    };
    let (a, b, c) = (run(7), run(7), run(8));
    assert_eq!(a, b, "the same seed gives the same mask");
    assert_ne!(a, c, "another seed gives another mask");
    // Two calls in a row draw two seeds: their masks differ.
    device.seed(7);
    let (first, second) = (values(dropout(x.clone(), 0.5)), values(dropout(x, 0.5)));
    assert_ne!(first, second);
}

#[test]
fn a_threads_seed_stream_decides_its_masks_whatever_the_backend_generator_does() {
    let device = qkv_test_support::flex();
    let x = Tensor::<2>::ones([16, 64], &device);
    let masks = |stream: u64, backend_seed: u64| {
        let _guard = crate::fused::tests::seed_lock();
        device.seed(backend_seed);
        with_dropout_seeds(stream, || {
            let first = values(dropout(x.clone(), 0.5));
            (first, values(dropout(x.clone(), 0.5)))
        })
    };
    let (a1, a2) = masks(3, 7);
    assert_eq!(
        (a1.clone(), a2.clone()),
        masks(3, 8),
        "the backend seed plays no part"
    );
    assert_ne!(a1, a2, "two calls draw two seeds from the stream");
    assert_ne!(a1, masks(4, 7).0, "another stream gives other masks");
    // Threads with their own streams get their own masks whatever the interleaving, and the
    // backend's generator is used again once the call returns.
    let from_threads: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = [3u64, 4]
            .map(|stream| {
                let x = x.clone();
                scope.spawn(move || with_dropout_seeds(stream, || values(dropout(x, 0.5))))
            })
            .into_iter()
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(from_threads, vec![a1, masks(4, 7).0]);
    let _guard = seed_lock();
    device.seed(7);
    let outside = values(dropout(x.clone(), 0.5));
    device.seed(7);
    assert_eq!(
        outside,
        values(dropout(x, 0.5)),
        "outside, the backend seed decides"
    );
}

#[test]
fn dropout_off_flex_and_at_zero() {
    let x = Tensor::<1>::ones([1000], &qkv_test_support::ndarray());
    let out = values(dropout(x.clone(), 0.5));
    assert!(out.iter().all(|&v| v == 0.0 || v == 2.0));
    assert_eq!(values(dropout(x.clone(), 0.0)), values(x));
}

/// Flex's generator is process-global: tests that seed it take turns.
fn seed_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `[batch, seq_k]` key mask: about one key in five hidden at random, the first two keys
/// hidden in every sequence (so the first causal queries see no key at all), and, when
/// `one_blind`, every key of the last sequence hidden.
fn key_mask(
    batch: usize,
    seq_k: usize,
    seed: u64,
    one_blind: bool,
    device: &Device,
) -> Tensor<2, Bool> {
    let mut rng = SeededRng::new(seed);
    let hidden: Vec<bool> = (0..batch * seq_k)
        .map(|i| {
            let (b, j) = (i / seq_k, i % seq_k);
            let draw = rng.below(5) == 0;
            j < 2 || draw || (one_blind && b == batch - 1)
        })
        .collect();
    Tensor::from_data(TensorData::new(hidden, [batch, seq_k]), device)
}

/// The flash kernel against the explicit path, values and the gradients of q, k and v, on
/// inputs given as transposed `[batch, seq, n_heads, d_head]` views (heads read in place):
/// partial blocks and tiles (70, 130 positions), one- and odd-width heads, more keys than
/// queries, non-causal attention, and key masks that leave some queries no key at all.
#[test]
fn flash_attention_matches_explicit_values_and_gradients() {
    // (batch, n_heads, seq_q, seq_k, d_head, causal, masked)
    let cases = [
        (2, 3, 5, 5, 7, true, false),
        (1, 2, 70, 70, 16, true, false),
        (2, 2, 130, 130, 33, true, true),
        (2, 1, 9, 150, 8, true, true),
        (3, 2, 40, 65, 12, false, true),
        (1, 4, 64, 64, 1, false, false),
        (2, 2, 100, 100, 64, true, false),
    ];
    for (batch, heads, seq_q, seq_k, d, causal, masked) in cases {
        let what =
            format!("flash {batch}x{heads}x{seq_q}x{seq_k}x{d} causal={causal} masked={masked}");
        let device = flex_autodiff();
        let mut rng = SeededRng::new((seq_q * 31 + d) as u64);
        let q = random_tensor(&mut rng, [batch, seq_q, heads, d], 2.0, &device);
        let k = random_tensor(&mut rng, [batch, seq_k, heads, d], 2.0, &device);
        let v = random_tensor(&mut rng, [batch, seq_k, heads, d], 1.0, &device);
        let mask = masked.then(|| key_mask(batch, seq_k, seq_k as u64, !causal, &device));
        let run = |flash: bool| {
            let mask = mask.clone();
            move |[q, k, v]: [Tensor<4>; 3]| {
                let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
                let out = if flash {
                    flash_attention(q, k, v, mask.clone(), causal, None, 0.0)
                } else {
                    flash_attention_explicit(q, k, v, mask.clone(), causal, None, 0.0)
                };
                out.swap_dims(1, 2)
            }
        };
        check_parity(&what, [q, k, v], run(true), run(false), 2e-5);
    }
}

/// Without autodiff (inference) the kernel gives the same values, and a query that sees no
/// key gets a zero row; on NdArray the function is the explicit path. Both are checked
/// against the loop-by-loop reference.
#[test]
fn flash_attention_matches_the_reference_on_both_backends() {
    let (batch, heads, seq, d) = (2, 2, 67, 9);
    for device in [qkv_test_support::flex(), qkv_test_support::ndarray()] {
        let mut rng = SeededRng::new(5);
        let q = random_tensor(&mut rng, [batch, heads, seq, d], 2.0, &device);
        let k = random_tensor(&mut rng, [batch, heads, seq, d], 2.0, &device);
        let v = random_tensor(&mut rng, [batch, heads, seq, d], 1.0, &device);
        let mask = key_mask(batch, seq, 8, false, &device);
        let hidden: Vec<bool> = mask.clone().into_data().iter::<bool>().collect();
        let out = values(flash_attention(
            q.clone(),
            k.clone(),
            v.clone(),
            Some(mask),
            true,
            None,
            0.0,
        ));
        let (qv, kv, vv) = (values(q), values(k), values(v));
        let scale = 1.0 / (d as f32).sqrt();
        let mut want = vec![0.0f32; out.len()];
        for b in 0..batch {
            for h in 0..heads {
                let head = |x: &[f32]| x[(b * heads + h) * seq * d..][..seq * d].to_vec();
                let (qh, kh, vh) = (head(&qv), head(&kv), head(&vv));
                for i in 0..seq {
                    let seen: Vec<usize> = (0..=i).filter(|&j| !hidden[b * seq + j]).collect();
                    let scores: Vec<f32> = seen
                        .iter()
                        .map(|&j| {
                            (0..d).map(|t| qh[i * d + t] * kh[j * d + t]).sum::<f32>() * scale
                        })
                        .collect();
                    let top = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                    let total: f32 = scores.iter().map(|s| (s - top).exp()).sum();
                    for t in 0..d {
                        want[((b * heads + h) * seq + i) * d + t] = seen
                            .iter()
                            .zip(&scores)
                            .map(|(&j, s)| (s - top).exp() / total * vh[j * d + t])
                            .sum();
                    }
                }
            }
        }
        // The first two keys are hidden, so query 0 and 1 see nothing: zero rows.
        assert!(
            out[..2 * d].iter().all(|&x| x == 0.0),
            "a blind query's row is zero"
        );
        assert_close(&out, &want, 2e-5, "flash attention against the reference");
    }
}

/// With dropout, the kernel drops exactly the entries that dropout on the materialised
/// probabilities drops when the backend is seeded alike (values and all three gradients),
/// and the dropout is real: the output differs from the dropout-free one.
#[test]
fn flash_attention_with_dropout_matches_explicit_dropout() {
    // Both paths draw their mask's seed from Flex's generator right after seeding it.
    let _guard = seed_lock();
    for (seq_q, seq_k, causal, masked) in [(70, 70, true, false), (40, 65, false, true)] {
        let device = flex_autodiff();
        let mut rng = SeededRng::new(seq_k as u64);
        let q = random_tensor(&mut rng, [2, seq_q, 3, 16], 2.0, &device);
        let k = random_tensor(&mut rng, [2, seq_k, 3, 16], 2.0, &device);
        let v = random_tensor(&mut rng, [2, seq_k, 3, 16], 1.0, &device);
        let mask = masked.then(|| key_mask(2, seq_k, 3, false, &device));
        let run = |flash: bool, prob: f64| {
            let (mask, device) = (mask.clone(), device.clone());
            move |[q, k, v]: [Tensor<4>; 3]| {
                let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
                device.seed(77);
                let out = if flash {
                    flash_attention(q, k, v, mask.clone(), causal, None, prob)
                } else {
                    flash_attention_explicit(q, k, v, mask.clone(), causal, None, prob)
                };
                out.swap_dims(1, 2)
            }
        };
        let what = format!("flash dropout {seq_q}x{seq_k} causal={causal} masked={masked}");
        let inputs = [q, k, v];
        check_parity(&what, inputs.clone(), run(true, 0.3), run(false, 0.3), 2e-5);
        let dropped = values(run(true, 0.3)(inputs.clone()));
        let kept = values(run(true, 0.0)(inputs));
        let diff = qkv_test_support::max_abs_diff(&dropped, &kept);
        assert!(diff > 0.1, "{what}: dropout changed nothing ({diff})");
    }
}

/// The one-pass AdamW update (Flex) and its explicit form (both backends) against the
/// formula evaluated in `f64`, over 40,000 elements (several rayon chunks) with gradient
/// scaling and weight decay, from non-zero moments and from zero ones.
#[test]
fn adamw_update_matches_the_formula() {
    let n = 40_000;
    let step = adamw_kernel::example_step();
    let mut rng = SeededRng::new(21);
    let (p, g, m) = (rng.vec(n, 1.0), rng.vec(n, 0.1), rng.vec(n, 0.01));
    let v: Vec<f32> = rng.vec(n, 1e-3).iter().map(|x| x.abs()).collect();
    for zero_moments in [false, true] {
        let (m, v) = if zero_moments {
            (vec![0.0; n], vec![0.0; n])
        } else {
            (m.clone(), v.clone())
        };
        let s = step;
        let (mut want_p, mut want_m, mut want_v) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for i in 0..n {
            let gi = g[i] as f64 * s.grad_scale as f64;
            let mi = s.beta1 as f64 * m[i] as f64 + (1.0 - s.beta1 as f64) * gi;
            let vi = s.beta2 as f64 * v[i] as f64 + (1.0 - s.beta2 as f64) * gi * gi;
            let update = mi / (vi.sqrt() / s.bias2_sqrt as f64 + s.eps as f64);
            want_p[i] = (p[i] as f64 * s.decay_factor as f64 - s.step_size as f64 * update) as f32;
            want_m[i] = mi as f32;
            want_v[i] = vi as f32;
        }
        for device in [qkv_test_support::flex(), qkv_test_support::ndarray()] {
            let t = |x: &[f32]| Tensor::<1>::from_data(TensorData::new(x.to_vec(), [n]), &device);
            for fused in [true, false] {
                let run = if fused {
                    adamw_update
                } else {
                    adamw_update_explicit
                };
                let (np, nm, nv) = run(t(&p), t(&g), t(&m), t(&v), step);
                let what = format!("adamw fused={fused} zero moments={zero_moments}");
                // p moves by about step_size per element: 1e-7 absolute is 0.04% of a step.
                assert_close(&values(np), &want_p, 1e-7 + 1e-6, &format!("{what}: p"));
                assert_close(&values(nm), &want_m, 1e-8, &format!("{what}: m"));
                assert_close(&values(nv), &want_v, 1e-9, &format!("{what}: v"));
            }
        }
    }
}

#[test]
fn bias_gelu_matches_an_add_and_an_explicit_gelu_values_and_gradients() {
    // d = 37 leaves a lane remainder; the wide range reaches both tails.
    for (rows, d, tanh_approx) in [(9, 37, false), (9, 37, true), (64, 256, false)] {
        let device = flex_autodiff();
        let mut rng = SeededRng::new((rows * d) as u64);
        let h = random_tensor(&mut rng, [rows, d], 6.0, &device);
        let bias = random_tensor(&mut rng, [1, d], 2.0, &device);
        let flat = |b: Tensor<2>| b.reshape([d]);
        check_parity(
            &format!("bias_gelu {rows}x{d} tanh={tanh_approx}"),
            [h, bias],
            |[h, b]| bias_gelu(h, flat(b), tanh_approx),
            |[h, b]| {
                let z = h + b;
                if tanh_approx {
                    gelu_tanh_explicit(z)
                } else {
                    burn::tensor::activation::gelu(z)
                }
            },
            2e-6,
        );
    }
}

#[test]
fn bias_gelu_off_flex_is_the_add_and_gelu() {
    let device = qkv_test_support::ndarray();
    let mut rng = SeededRng::new(12);
    let h = random_tensor(&mut rng, [4, 10], 3.0, &device);
    let bias = random_tensor(&mut rng, [10], 1.0, &device);
    let got = values(bias_gelu(h.clone(), bias.clone(), true));
    let want = values(gelu_tanh_explicit(h + bias.unsqueeze::<2>()));
    assert_eq!(got, want);
}

/// The parity tests of every CPU kernel again at each SIMD level this CPU has (the widest,
/// AVX2 on an AVX-512 CPU, and scalar; see [`crate::simd`]), so that the code a narrower CPU
/// would run is checked on this one too: the tile products' and transposes' blocks depend on
/// the vector width, and the row kernels' loops are compiled once per level.
#[test]
fn every_kernel_matches_its_reference_at_every_simd_level() {
    use super::{adamw_kernel, loss, matmul, residual};
    crate::simd::at_each_level(|_| {
        layer_norm_matches_explicit_values_and_gradients();
        residual::tests::add_layer_norm_matches_an_add_and_an_explicit_layer_norm_values_and_gradients();
        residual::tests::add_layer_norm_with_an_untracked_branch_and_no_beta();
        scaled_softmax_matches_explicit_values_and_gradients();
        scaled_softmax_hides_future_keys_exactly_and_rows_sum_to_one();
        gelu_matches_explicit_values_and_gradients();
        gelu_tanh_matches_explicit_values_and_gradients();
        bias_gelu_matches_an_add_and_an_explicit_gelu_values_and_gradients();
        dropout_zeroes_or_scales_and_its_gradient_uses_the_same_mask();
        flash_attention_matches_explicit_values_and_gradients();
        flash_attention_matches_the_reference_on_both_backends();
        flash_attention_with_dropout_matches_explicit_dropout();
        loss::tests::cross_entropy_matches_explicit_and_reference_values_and_gradients();
        adamw_update_matches_the_formula();
        adamw_kernel::tests::in_place_equals_out_of_place();
        matmul::tests::linear_matches_burns_linear_values_and_gradients();
    });
}
