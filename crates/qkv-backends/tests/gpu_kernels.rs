//! The fused ops' GPU kernels (LayerNorm, the scaled causal softmax, exact and tanh GELU,
//! flash attention, dropout, the LM head's cross-entropy) on
//! wgpu, Mesa's software Vulkan driver in CI, against their explicit tensor-op forms on the
//! same device: values and every input's gradient. The shapes exercise what the kernels do
//! differently from the element-wise paths: rows longer than one cube (the units stride), rows
//! shorter than it, causal rows against more keys than queries, non-contiguous inputs, and
//! more rows than one launch dimension holds (65,535 cubes).
//!
//! The oracle of exact GELU is written here from `erf`: Burn's own `gelu` backward on the
//! CubeCL backend (its default) is the derivative of the tanh approximation, 9e-4 off the
//! exact one at these inputs, which the GPU kernel is not.
//!
//! Tolerance: 2e-5 absolute on values and 2e-5 of each gradient's largest magnitude, as the
//! CPU kernels' tests; a reduction summed in another order differs by a few ulps, a wrong
//! formula by far more. The routing is checked too: the kernels serve wgpu tensors with and
//! without autodiff, and not the CPU backends'.

use burn::prelude::*;
use qkv_backends::{Backend, count_launches, sync};
use qkv_tensor_ops::fused::{
    cross_entropy, cross_entropy_explicit, dropout, flash_attention, flash_attention_explicit,
    gelu, gelu_tanh, gpu_flash_serves, with_dropout_seeds,
};
use qkv_tensor_ops::fused::{
    gelu_tanh_explicit, has_gpu_kernels, layer_norm, layer_norm_explicit, scaled_softmax,
    scaled_softmax_explicit,
};
use qkv_test_support::{SeededRng, check_parity, loss_and_grad, random_tensor, values};

/// Holds every test of this binary to one at a time: the launch counts below are taken from a
/// process-wide observer, so a test running beside another would count its kernels too.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// This test's turn on the GPU (see [`SERIAL`]); a test that failed holding it does not
/// poison the others.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The wgpu device with autodiff, or a failure that says how to install a driver.
fn gpu() -> Device {
    Backend::Wgpu.check().unwrap_or_else(|e| panic!("{e}"));
    Backend::Wgpu.device().autodiff()
}

const TOL: f32 = 2e-5;

#[test]
fn kernels_serve_cubecl_f32_only() {
    let _serial = serial();
    let device = gpu();
    let x = random_tensor(&mut SeededRng::new(1), [2, 3], 1.0, &device);
    assert!(has_gpu_kernels(&x));
    assert!(has_gpu_kernels(&x.clone().inner()));
    assert!(!has_gpu_kernels(
        &x.clone().to_device(&qkv_test_support::flex())
    ));
    assert!(!has_gpu_kernels(&x.to_device(&qkv_test_support::ndarray())));
}

#[test]
fn layer_norm_matches_explicit_values_and_gradients() {
    let _serial = serial();
    // 300 > the cube's 128 units; 37 < it; 70,000 rows need a second launch dimension. The
    // offset mean tests the two-pass variance, except on rows of 3, where it would make the
    // result ill-conditioned (a spread of 0.01 around 5 loses digits in any summation order).
    for (rows, d, offset) in [
        (6, 300, 5.0),
        (50, 37, 5.0),
        (70_000, 3, 0.0),
        (4, 128, 5.0),
    ] {
        let device = gpu();
        let mut rng = SeededRng::new(d as u64);
        let x = random_tensor(&mut rng, [2, rows / 2, d], 3.0, &device).add_scalar(offset);
        let gamma = random_tensor(&mut rng, [1, 1, d], 1.0, &device).add_scalar(1.0);
        let beta = random_tensor(&mut rng, [1, 1, d], 1.0, &device);
        let flat = |t: Tensor<3>| t.reshape([d]);
        check_parity(
            &format!("layer_norm {rows}x{d}"),
            [x, gamma, beta],
            |[x, g, b]| layer_norm(x, flat(g), Some(flat(b)), 1e-5),
            |[x, g, b]| layer_norm_explicit(x, flat(g), Some(flat(b)), 1e-5),
            TOL,
        );
    }
}

#[test]
fn scaled_softmax_matches_explicit_values_and_gradients() {
    let _serial = serial();
    // Square, fewer queries than keys (a cached prefix), rows longer than a cube, and plain.
    for (seq_q, seq_k, causal) in [(7, 7, true), (5, 9, true), (3, 300, true), (5, 200, false)] {
        let device = gpu();
        let mut rng = SeededRng::new((seq_q * 1000 + seq_k) as u64);
        let scores = random_tensor(&mut rng, [2, 3, seq_q, seq_k], 4.0, &device);
        let what = format!("scaled_softmax {seq_q}x{seq_k} causal={causal}");
        check_parity(
            &what,
            [scores],
            |[s]| scaled_softmax(s, 0.35, causal),
            |[s]| scaled_softmax_explicit(s, 0.35, causal),
            TOL,
        );
    }
    // A transposed (non-contiguous) input.
    let device = gpu();
    let scores = random_tensor(&mut SeededRng::new(4), [2, 3, 6, 6], 4.0, &device);
    check_parity(
        "scaled_softmax of a transposed view",
        [scores],
        |[s]| scaled_softmax(s.swap_dims(2, 3), 0.5, true),
        |[s]| scaled_softmax_explicit(s.swap_dims(2, 3), 0.5, true),
        TOL,
    );
}

/// `x/2 · (1 + erf(x/√2))` in tensor ops, differentiated by autodiff through `erf`.
fn exact_gelu([x]: [Tensor<3>; 1]) -> Tensor<3> {
    let phi = x
        .clone()
        .div_scalar(std::f64::consts::SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    x * phi
}

#[test]
fn gelus_match_explicit_values_and_gradients() {
    let _serial = serial();
    let device = gpu();
    let x = random_tensor(&mut SeededRng::new(8), [3, 5, 67], 4.0, &device);
    check_parity("gelu", [x.clone()], |[x]| gelu(x), exact_gelu, TOL);
    check_parity(
        "gelu_tanh",
        [x.clone()],
        |[x]| gelu_tanh(x),
        |[x]| gelu_tanh_explicit(x),
        TOL,
    );
    check_parity(
        "gelu of a transposed view",
        [x],
        |[x]| gelu(x.swap_dims(0, 2)),
        |[x]| exact_gelu([x.swap_dims(0, 2)]),
        TOL,
    );
}

/// Flash attention on the GPU against its explicit form (probabilities materialised, dropout
/// on them, product with `v`) on the same device: output and the gradients of `q`, `k` and
/// `v`, causal and not, fewer queries than keys, head views of a `[batch, seq, n_heads,
/// d_head]` projection, and with dropout (the same seed drops the same probabilities on both
/// paths).
#[test]
fn flash_attention_matches_explicit_values_and_gradients() {
    let _serial = serial();
    let device = gpu();
    let cases = [
        // (batch, n_heads, seq_q, seq_k, d_head, causal, dropout)
        (2, 3, 12, 12, 8, true, 0.0),
        (1, 2, 5, 9, 16, true, 0.0),
        (2, 2, 7, 11, 4, false, 0.0),
        (1, 2, 70, 70, 64, true, 0.0),
        (2, 3, 12, 12, 8, true, 0.2),
    ];
    for (batch, heads, seq_q, seq_k, d, causal, drop) in cases {
        let mut rng = SeededRng::new((seq_q * 100 + d) as u64);
        let q = random_tensor(&mut rng, [batch, heads, seq_q, d], 1.0, &device);
        let k = random_tensor(&mut rng, [batch, heads, seq_k, d], 1.0, &device);
        let v = random_tensor(&mut rng, [batch, heads, seq_k, d], 1.0, &device);
        assert!(gpu_flash_serves(&q, &k, false) && !gpu_flash_serves(&q, &k, true));
        let what = format!("flash {batch}x{heads}x{seq_q}x{seq_k}x{d} causal={causal} p={drop}");
        check_parity(
            &what,
            [q, k, v],
            |[q, k, v]| {
                with_dropout_seeds(3, || flash_attention(q, k, v, None, causal, None, drop))
            },
            |[q, k, v]| {
                with_dropout_seeds(3, || {
                    flash_attention_explicit(q, k, v, None, causal, None, drop)
                })
            },
            1e-4,
        );
    }
    // Head views: [batch, seq, n_heads, d_head] transposed, as the attention layer passes them.
    let mut rng = SeededRng::new(31);
    let x = random_tensor(&mut rng, [2, 10, 3, 8], 1.0, &device);
    let heads = |t: Tensor<4>| t.swap_dims(1, 2);
    check_parity(
        "flash on head views",
        [x.clone(), x.clone().mul_scalar(0.5), x.add_scalar(0.1)],
        |[q, k, v]| flash_attention(heads(q), heads(k), heads(v), None, true, None, 0.0),
        |[q, k, v]| flash_attention_explicit(heads(q), heads(k), heads(v), None, true, None, 0.0),
        1e-4,
    );
    // Three layouts at once: a head view, a contiguous tensor, and one whose rows are not
    // contiguous (the kernels copy only that one).
    let mixed = |[q, k, v]: [Tensor<4>; 3]| [heads(q), k, v.swap_dims(2, 3)];
    let x = random_tensor(&mut rng, [2, 10, 3, 8], 1.0, &device);
    let y = random_tensor(&mut rng, [2, 3, 10, 8], 1.0, &device);
    let z = random_tensor(&mut rng, [2, 3, 8, 10], 1.0, &device);
    check_parity(
        "flash on mixed layouts",
        [x, y, z],
        |t| {
            let [q, k, v] = mixed(t);
            flash_attention(q, k, v, None, true, None, 0.0)
        },
        |t| {
            let [q, k, v] = mixed(t);
            flash_attention_explicit(q, k, v, None, true, None, 0.0)
        },
        1e-4,
    );
}

/// Dropout on the GPU drops exactly the elements Flex drops for the same seed (the same
/// counter-based hash), forward and backward, and keeps about `1 - prob` of them.
#[test]
fn cross_entropy_matches_explicit_values_and_gradients() {
    let _serial = serial();
    // A vocabulary shorter than a cube and one longer (the units stride); ignored rows; label
    // smoothing; an incoming gradient other than 1.
    for (rows, vocab, ignore, smoothing, weight) in [
        (24, 65, Some(-100), 0.0, 1.0),
        (9, 1000, None, 0.1, 0.7),
        (16, 300, Some(-1), 0.0, -2.0),
    ] {
        let device = gpu();
        let data = SeededRng::new((rows * vocab) as u64).vec(rows * vocab, 6.0);
        let mut ids: Vec<i64> = (0..rows).map(|r| ((r * 7919 + 3) % vocab) as i64).collect();
        if let Some(ignore) = ignore {
            ids[1] = ignore;
        }
        let logits =
            || Tensor::<2>::from_data(TensorData::new(data.clone(), [rows, vocab]), &device);
        let what = format!("cross_entropy {rows}x{vocab} ignore={ignore:?} smoothing={smoothing}");
        let ((got, got_grad), launches) = count_launches(|| {
            let fused = |l, t| cross_entropy(l, t, ignore, smoothing);
            let result = loss_and_grad(logits(), &ids, weight, fused);
            sync(&device);
            result
        });
        let rows_kernel = launches
            .by_kernel
            .iter()
            .filter(|(name, _)| name.contains("cross_entropy_kernel"))
            .map(|(_, n)| n)
            .sum::<usize>();
        assert_eq!(
            rows_kernel, 1,
            "{what}: the row kernel ran {rows_kernel} times"
        );
        let explicit = |l, t| cross_entropy_explicit(l, t, ignore, smoothing);
        let (want, want_grad) = loss_and_grad(logits(), &ids, weight, explicit);
        assert!(
            (got - want).abs() <= TOL * want.abs().max(1.0),
            "{what}: loss {got} against {want}"
        );
        let scale = want_grad.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        assert!(scale > 0.0, "{what}: the explicit gradient is all zeros");
        qkv_test_support::assert_close(&got_grad, &want_grad, TOL * scale, &what);
    }
}

/// Under a host seed stream, as the trainer and the benchmark install on a GPU, dropout draws
/// no random numbers on the device (a kernel and a wait for its result each time): only the
/// dropout kernel runs.
#[test]
fn dropout_under_a_host_seed_stream_launches_only_its_kernel() {
    let _serial = serial();
    let device = gpu().inner();
    let x = random_tensor(&mut SeededRng::new(4), [8, 64], 1.0, &device);
    sync(&device);
    let launched = |stream: bool| {
        let ((), launches) = count_launches(|| {
            let y = if stream {
                with_dropout_seeds(5, || dropout(x.clone(), 0.2))
            } else {
                dropout(x.clone(), 0.2)
            };
            let _ = values(y);
            sync(&device);
        });
        launches
    };
    let (drawn, streamed) = (launched(false), launched(true));
    let dropout_kernels = |l: &qkv_backends::LaunchCounts| {
        l.by_kernel
            .iter()
            .filter(|(name, _)| name.contains("dropout"))
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    assert_eq!(
        dropout_kernels(&streamed),
        1,
        "launched: {:?}",
        streamed.by_kernel
    );
    assert_eq!(
        streamed.total(),
        1,
        "a seed from the host stream launched more than the dropout kernel: {:?}",
        streamed.by_kernel
    );
    assert!(
        drawn.total() > streamed.total(),
        "a seed drawn on the device launched no kernel of its own: {:?}",
        drawn.by_kernel
    );
}

#[test]
fn dropout_matches_flex_mask_for_the_same_seed() {
    let _serial = serial();
    let run = |device: &Device| {
        let x = random_tensor(&mut SeededRng::new(6), [4, 33, 65], 1.0, device);
        output_and_gradient(x, |x| with_dropout_seeds(77, || dropout(x, 0.3)))
    };
    let (gpu_out, gpu_grad) = run(&gpu());
    let (flex_out, flex_grad) = run(&qkv_test_support::flex().autodiff());
    qkv_test_support::assert_close(&gpu_out, &flex_out, 1e-6, "dropout values");
    qkv_test_support::assert_close(&gpu_grad, &flex_grad, 1e-6, "dropout gradient");
    let kept = gpu_out.iter().filter(|v| **v != 0.0).count() as f64 / gpu_out.len() as f64;
    assert!(
        (kept - 0.7).abs() < 0.02,
        "kept {kept} of the elements, expected 0.7"
    );
}

/// `op`'s output values and the gradient of `x` under loss = Σ output ∘ weights.
fn output_and_gradient(x: Tensor<3>, op: impl Fn(Tensor<3>) -> Tensor<3>) -> (Vec<f32>, Vec<f32>) {
    let (out, mut grads) = qkv_test_support::forward_backward([x], |[x]| op(x), 5);
    (out, grads.remove(0))
}

/// The fused LayerNorm launches fewer kernels, forward and backward, than its explicit form:
/// the point of the kernels on a GPU, where each launch costs microseconds.
#[test]
fn fused_layer_norm_launches_fewer_kernels_than_explicit() {
    let _serial = serial();
    let device = gpu();
    let run = |fused: bool| {
        let mut rng = SeededRng::new(2);
        let x = random_tensor(&mut rng, [4, 16, 64], 1.0, &device).require_grad();
        let gamma = random_tensor(&mut rng, [64], 1.0, &device).require_grad();
        let beta = random_tensor(&mut rng, [64], 1.0, &device).require_grad();
        sync(&device);
        let ((), launches) = count_launches(|| {
            let y = if fused {
                layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-5)
            } else {
                layer_norm_explicit(x.clone(), gamma.clone(), Some(beta.clone()), 1e-5)
            };
            let grads = (y * x.clone()).sum().backward();
            let _ = values(x.grad(&grads).expect("tracked"));
            sync(&device);
        });
        launches.total()
    };
    // Warm both paths up first: the first runs also launch autotune's candidates.
    for _ in 0..3 {
        let (_, _) = (run(true), run(false));
    }
    let (fused, explicit) = (run(true), run(false));
    assert!(fused > 0, "the fused path launched no kernel at all");
    assert!(
        fused < explicit,
        "fused LayerNorm launched {fused} kernels, the explicit one {explicit}"
    );
}
