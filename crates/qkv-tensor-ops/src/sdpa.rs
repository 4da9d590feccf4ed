//! Scaled dot-product attention, `softmax(Q·Kᵀ/√d_head + mask)·V`, in three paths behind one
//! function and one choice ([`AttentionPath::choose`]): explicit (probabilities
//! materialised), flash (our kernel) and fused (Burn's attention op).

use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::mask::causal_mask;
use crate::softmax::masked_softmax;

/// How attention is computed: the one choice of path in qkv, made by
/// [`AttentionPath::choose`] and taken by [`scaled_dot_product_attention`] and the attention
/// layer. Every path computes the same function (the tests compare them); they differ in
/// speed and in what they can return.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AttentionPath {
    /// `probs = masked_softmax(Q·Kᵀ·scale)`, then `probs·V`, as separate tensor ops. Slower
    /// and holds the `[batch, n_heads, seq_q, seq_k]` probabilities in memory, but it can
    /// return them (for inspection) and lets a caller apply dropout to them.
    Explicit,
    /// One kernel with its own backward pass and dropout that never writes the
    /// probabilities out ([`crate::fused::flash_attention`]; on a backend without the
    /// kernels, its explicit form). It takes a key-padding mask, not a general one.
    Flash,
    /// Burn's `module::attention`, which a backend may run as one kernel that never
    /// materialises the probabilities (Flex: two-GEMM or tiled flash attention; CubeCL:
    /// flash kernels). On an autodiff device Burn 0.22 runs its unfused, differentiable
    /// fallback, so this path speeds up inference, not training. It has no dropout.
    #[default]
    Fused,
}

impl AttentionPath {
    /// The path for queries `q` (`[batch, n_heads, seq_q, d_head]`): explicit when the
    /// probabilities are asked for; on Flex, the flash kernel for every call with more than
    /// one query (training and inference, any mask, with or without dropout) and Burn's op
    /// for a single query (a decoding step with the cache, measured faster there); on a GPU
    /// with the GPU kernels, the flash kernels under autodiff (training: three kernels where
    /// the explicit path launches about fifteen; a masked call takes the explicit form
    /// inside [`crate::fused::flash_attention`]) and Burn's op otherwise; elsewhere,
    /// explicit under autodiff (Burn's op is a decomposed fallback there, and has no
    /// dropout) and Burn's op otherwise. Measurements in ARCHITECTURE.md, "Performance".
    pub fn choose(q: &Tensor<4>, return_probs: bool) -> Self {
        let device = q.device();
        let seq_q = q.dims()[2];
        // Half-precision attention computes in f32 on the f32 kernels (see
        // `fused::half_dtype`), so it takes the path f32 would.
        let dtype = crate::fused::compute_dtype(q.dtype());
        let flex = crate::fused::has_fused_kernels(&device, dtype);
        let gpu = crate::fused::gpu_kernels_take(&device, dtype, q.shape().num_elements());
        if return_probs {
            AttentionPath::Explicit
        } else if (flex && seq_q > 1) || (device.is_autodiff() && gpu) {
            AttentionPath::Flash
        } else if device.is_autodiff() {
            AttentionPath::Explicit
        } else {
            AttentionPath::Fused
        }
    }
}

/// Options for [`scaled_dot_product_attention`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SdpaOptions {
    /// Hide each query's future keys, aligned bottom-right (see [`causal_mask`]).
    pub causal: bool,
    /// Multiplier of `Q·Kᵀ`; `None` means `1/√d_head`.
    pub scale: Option<f64>,
    /// Explicit, flash or fused.
    pub path: AttentionPath,
}

/// What [`scaled_dot_product_attention`] returns.
#[derive(Debug, Clone)]
pub struct SdpaOutput {
    /// The attended values, `[batch, n_heads, seq_q, d_head]`.
    pub context: Tensor<4>,
    /// The attention probabilities `[batch, n_heads, seq_q, seq_k]`, present only on the
    /// explicit path. Hidden keys hold exactly 0; a fully hidden row is all zeros.
    pub probs: Option<Tensor<4>>,
}

/// The attention probabilities `masked_softmax(Q·Kᵀ·scale)` alone.
///
/// # Shapes
/// - `q`: `[batch, n_heads, seq_q, d_head]`
/// - `k`: `[batch, n_heads, seq_k, d_head]`
/// - `mask`: broadcastable to `[batch, n_heads, seq_q, seq_k]`, `true` = hidden
/// - returns `[batch, n_heads, seq_q, seq_k]`
pub fn attention_probs(
    q: Tensor<4>,
    k: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
    scale: Option<f64>,
) -> Tensor<4> {
    let [_, _, seq_q, d_head] = q.dims();
    let seq_k = k.dims()[2];
    let scale = scale.unwrap_or(1.0 / (d_head as f64).sqrt());
    // [batch, n_heads, seq_q, seq_k]
    let scores = q.matmul(k.transpose());
    let Some(mask) = mask else {
        // Scale, causal mask and softmax as one op (one kernel and its backward on Flex).
        return crate::fused::scaled_softmax(scores, scale, causal);
    };
    let scores = scores.mul_scalar(scale);
    let device = scores.device();
    let causal = causal.then(|| causal_mask(seq_q, seq_k, &device).reshape([1, 1, seq_q, seq_k]));
    let mask = match causal {
        None => Some(mask),
        Some(c) => {
            let shape = broadcast_shape(mask.dims(), c.dims());
            Some(mask.expand(shape).bool_or(c.expand(shape)))
        }
    };
    masked_softmax(scores, mask)
}

/// Scaled dot-product attention, `softmax(Q·Kᵀ/√d_head + mask)·V`, where the mask adds
/// `-inf` at hidden keys.
///
/// Every path computes the same function (tested to 1e-5 against
/// [`reference_attention`](crate::reference::reference_attention)), including a query with
/// every key hidden, whose context is the zero vector.
///
/// # Shapes
/// - `q`: `[batch, n_heads, seq_q, d_head]`
/// - `k`, `v`: `[batch, n_heads, seq_k, d_head]`
/// - `mask`: broadcastable to `[batch, n_heads, seq_q, seq_k]`, `true` = hidden
/// - context: `[batch, n_heads, seq_q, d_head]`; probs: `[batch, n_heads, seq_q, seq_k]`
pub fn scaled_dot_product_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    options: SdpaOptions,
) -> SdpaOutput {
    match options.path {
        AttentionPath::Explicit => {
            let probs = attention_probs(q, k, mask, options.causal, options.scale);
            SdpaOutput {
                context: probs.clone().matmul(v),
                probs: Some(probs),
            }
        }
        // The flash kernel takes a key-padding mask; a general mask goes to Burn's op.
        AttentionPath::Flash if mask.is_none() => SdpaOutput {
            context: crate::fused::flash_attention(
                q,
                k,
                v,
                None,
                options.causal,
                options.scale,
                0.0,
            ),
            probs: None,
        },
        AttentionPath::Flash | AttentionPath::Fused => {
            let [batch, n_heads, seq_q, _] = q.dims();
            let seq_k = k.dims()[2];
            // Burn's op wants the mask at full size.
            let mask = mask.map(|m| m.expand([batch, n_heads, seq_q, seq_k]));
            let d_head = q.dims()[3];
            // A scale equal to the default is left unset: CubeCL's flash kernels only run
            // when no custom scale is given.
            let default_scale = 1.0 / (d_head as f64).sqrt();
            let scale = options
                .scale
                .filter(|s| (s - default_scale).abs() > f64::EPSILON * 4.0);
            let opts = AttentionModuleOptions {
                scale,
                softcap: None,
                is_causal: options.causal,
            };
            SdpaOutput {
                context: attention(q, k, v, mask, None, opts),
                probs: None,
            }
        }
    }
}

/// Causal attention computed one block of `block` queries at a time, each block against only
/// the keys it may see. The explicit path computes (and then hides) the whole upper triangle
/// of `Q·Kᵀ`; this skips it, so at `seq` tokens it does about `(1 + block/seq)/2` of the
/// multiply work and holds one block's probabilities at a time, at the cost of one more
/// matmul pair per block. The same function as the explicit path, `masked_softmax(Q·Kᵀ·scale
/// + causal + mask)·V` (causal bottom-right aligned), and differentiable on autodiff devices.
///
/// `on_probs` sees each block's probabilities `[batch, n_heads, rows, keys]` before they
/// weight the values (dropout goes there); pass `|p| p` for none.
///
/// # Shapes
/// - `q`: `[batch, n_heads, seq_q, d_head]`
/// - `k`, `v`: `[batch, n_heads, seq_k, d_head]`, `seq_k >= seq_q` (query `i` sees keys
///   `0..=i + seq_k - seq_q`)
/// - `mask`: `[batch | 1, n_heads | 1, seq_q | 1, seq_k]`, `true` = hidden
/// - returns `[batch, n_heads, seq_q, d_head]`
///
/// # Panics
/// If `seq_k < seq_q` (`qkv_attention::MultiHeadAttention` reports that as an error before
/// it gets here), `seq_q` is 0 or `block` is 0.
pub fn causal_attention_in_query_blocks(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    scale: Option<f64>,
    block: usize,
    mut on_probs: impl FnMut(Tensor<4>) -> Tensor<4>,
) -> Tensor<4> {
    let seq_q = q.dims()[2];
    let seq_k = k.dims()[2];
    assert!(block > 0, "query block size must be positive");
    assert!(seq_q > 0, "causal attention needs at least one query");
    assert!(
        seq_k >= seq_q,
        "causal attention needs at least as many keys ({seq_k}) as queries ({seq_q})"
    );
    let offset = seq_k - seq_q;
    let mut parts = Vec::with_capacity(seq_q.div_ceil(block));
    for start in (0..seq_q).step_by(block) {
        let rows = block.min(seq_q - start);
        // Rows start..start + rows see keys 0..start + rows + offset; bottom-right alignment
        // of the causal rule within this slab gives each row exactly its own prefix.
        let keys = start + rows + offset;
        let mask = mask.as_ref().map(|m| {
            let m = if m.dims()[2] == seq_q && seq_q > 1 {
                m.clone().narrow(2, start, rows)
            } else {
                m.clone()
            };
            m.narrow(3, 0, keys)
        });
        let probs = attention_probs(
            q.clone().narrow(2, start, rows),
            k.clone().narrow(2, 0, keys),
            mask,
            true,
            scale,
        );
        parts.push(on_probs(probs).matmul(v.clone().narrow(2, 0, keys)));
    }
    Tensor::cat(parts, 2)
}

fn broadcast_shape(a: [usize; 4], b: [usize; 4]) -> [usize; 4] {
    std::array::from_fn(|i| a[i].max(b[i]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::padding_mask_from_lengths;
    use crate::reference::{AttentionDims, reference_attention};
    use qkv_test_support::{SeededRng, assert_close, random_tensor, test_on_cpu_backends, values};

    /// The shapes from the foundation issue: batch 3, heads 5, d_head 8, seq 7 and 13.
    fn check_against_reference(
        device: &Device,
        seq_q: usize,
        seq_k: usize,
        causal: bool,
        padded: bool,
    ) {
        let dims = AttentionDims {
            batch: 3,
            n_heads: 5,
            seq_q,
            seq_k,
            d_head: 8,
        };
        let mut rng =
            SeededRng::new((seq_q * 100 + seq_k) as u64 + causal as u64 * 7 + padded as u64 * 13);
        let q = random_tensor(&mut rng, [3, 5, seq_q, 8], 2.0, device);
        let k = random_tensor(&mut rng, [3, 5, seq_k, 8], 2.0, device);
        let v = random_tensor(&mut rng, [3, 5, seq_k, 8], 1.0, device);
        // Sequence 0 is unpadded, 1 loses its last three keys, 2 keeps only its first key.
        let lengths = [seq_k, seq_k - 3, 1];
        let pad = padding_mask_from_lengths(&lengths, seq_k, device);
        let pad_host: Vec<bool> = pad.clone().into_data().try_into_vec_as::<bool>().unwrap();
        let mask = padded.then(|| pad.reshape([3, 1, 1, seq_k]));
        let (want_ctx, want_probs) = reference_attention(
            &values(q.clone()),
            &values(k.clone()),
            &values(v.clone()),
            dims,
            causal,
            padded.then_some(&pad_host[..]),
        );
        let case = format!("seq_q {seq_q}, seq_k {seq_k}, causal {causal}, padded {padded}");
        for path in [
            AttentionPath::Explicit,
            AttentionPath::Flash,
            AttentionPath::Fused,
        ] {
            let opts = SdpaOptions {
                causal,
                scale: None,
                path,
            };
            let out =
                scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), mask.clone(), opts);
            assert_eq!(out.context.dims(), [3, 5, seq_q, 8]);
            assert_close(
                &values(out.context),
                &want_ctx,
                1e-5,
                &format!("{path:?} context, {case}"),
            );
            match (path, out.probs) {
                (AttentionPath::Explicit, Some(p)) => {
                    assert_close(&values(p), &want_probs, 1e-6, &format!("probs, {case}"))
                }
                (AttentionPath::Flash | AttentionPath::Fused, None) => {}
                (path, probs) => panic!("{path:?} returned probs: {}", probs.is_some()),
            }
        }
    }

    test_on_cpu_backends!(
        every_path_matches_reference_on_odd_shapes,
        |device: &Device| {
            for (seq_q, seq_k) in [(7, 7), (13, 13), (7, 13)] {
                for causal in [false, true] {
                    for padded in [false, true] {
                        check_against_reference(device, seq_q, seq_k, causal, padded);
                    }
                }
            }
        }
    );

    /// Runs causal attention on `device` (autodiff) either in query blocks or on the explicit
    /// path; returns the output and the gradients of q, k and v under a fixed random weighting.
    fn causal_forward_backward(
        qkv: &[Tensor<4>; 3],
        mask: Option<Tensor<4, Bool>>,
        block: Option<usize>,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let [q, k, v] = qkv.clone().map(|t| t.require_grad());
        let out = match block {
            Some(block) => causal_attention_in_query_blocks(
                q.clone(),
                k.clone(),
                v.clone(),
                mask,
                None,
                block,
                |p| p,
            ),
            None => attention_probs(q.clone(), k.clone(), mask, true, None).matmul(v.clone()),
        };
        let weights = random_tensor(&mut SeededRng::new(17), out.dims(), 1.0, &out.device());
        let grads = (out.clone() * weights).sum().backward();
        let grads = [q, k, v]
            .iter()
            .map(|t| values(t.grad(&grads).expect("tracked")))
            .collect();
        (values(out), grads)
    }

    test_on_cpu_backends!(
        query_blocks_match_the_explicit_path_values_and_gradients,
        |device: &Device| {
            let device = device.clone().autodiff();
            // (seq_q, seq_k, block, mask): blocks that divide the sequence, that do not, one
            // row each, one block larger than the sequence; more keys than queries; no mask,
            // key padding, and a mask per query (some rows fully hidden).
            let cases = [
                (16, 16, 8, 0),
                (13, 13, 4, 0),
                (13, 13, 5, 1),
                (10, 10, 1, 2),
                (9, 9, 32, 0),
                (7, 12, 3, 1),
                (6, 11, 4, 2),
            ];
            for (seq_q, seq_k, block, mask_kind) in cases {
                let mut rng = SeededRng::new((seq_q * 31 + seq_k * 7 + block) as u64);
                let q = random_tensor(&mut rng, [2, 3, seq_q, 4], 1.5, &device);
                let k = random_tensor(&mut rng, [2, 3, seq_k, 4], 1.5, &device);
                let v = random_tensor(&mut rng, [2, 3, seq_k, 4], 1.0, &device);
                let mask = match mask_kind {
                    0 => None,
                    1 => Some(
                        padding_mask_from_lengths(&[seq_k, seq_k - 2], seq_k, &device)
                            .reshape([2, 1, 1, seq_k]),
                    ),
                    _ => {
                        let hidden: Vec<bool> = (0..3 * seq_q * seq_k)
                            .map(|_| rng.uniform() < 0.4)
                            .collect();
                        Some(Tensor::from_data(
                            TensorData::new(hidden, [1, 3, seq_q, seq_k]),
                            &device,
                        ))
                    }
                };
                let case = format!("seq_q {seq_q}, seq_k {seq_k}, block {block}, mask {mask_kind}");
                let qkv = [q, k, v];
                let (bv, bg) = causal_forward_backward(&qkv, mask.clone(), Some(block));
                let (ev, eg) = causal_forward_backward(&qkv, mask, None);
                assert_close(&bv, &ev, 1e-5, &format!("values, {case}"));
                for (name, (b, e)) in ["q", "k", "v"].iter().zip(bg.iter().zip(&eg)) {
                    assert_close(b, e, 1e-5, &format!("gradient of {name}, {case}"));
                }
            }
        }
    );

    test_on_cpu_backends!(
        query_blocks_pass_probabilities_through_the_hook,
        |device: &Device| {
            let mut rng = SeededRng::new(23);
            let q = random_tensor(&mut rng, [1, 2, 9, 4], 1.0, device);
            let k = random_tensor(&mut rng, [1, 2, 9, 4], 1.0, device);
            let v = random_tensor(&mut rng, [1, 2, 9, 4], 1.0, device);
            let mut seen = Vec::new();
            let doubled = causal_attention_in_query_blocks(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                None,
                4,
                |p| {
                    seen.push(p.dims());
                    p.mul_scalar(2.0)
                },
            );
            // Blocks of 4, 4 and 1 queries, each against the keys it can see.
            assert_eq!(seen, vec![[1, 2, 4, 4], [1, 2, 4, 8], [1, 2, 1, 9]]);
            let plain = causal_attention_in_query_blocks(q, k, v, None, None, 4, |p| p);
            assert_close(
                &values(doubled),
                &values(plain.mul_scalar(2.0)),
                1e-6,
                "hook output weights the values",
            );
        }
    );

    test_on_cpu_backends!(fully_hidden_query_gives_zero_context, |device: &Device| {
        let mut rng = SeededRng::new(3);
        let q = random_tensor(&mut rng, [1, 2, 3, 4], 1.0, device);
        let k = random_tensor(&mut rng, [1, 2, 3, 4], 1.0, device);
        let v = random_tensor(&mut rng, [1, 2, 3, 4], 1.0, device);
        let hidden = Tensor::<4, Bool>::from_data(
            TensorData::new(
                vec![true, true, true, false, false, false, false, true, false],
                [1, 1, 3, 3],
            ),
            device,
        );
        for path in [AttentionPath::Explicit, AttentionPath::Fused] {
            let opts = SdpaOptions {
                path,
                ..Default::default()
            };
            let out = scaled_dot_product_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                Some(hidden.clone()),
                opts,
            );
            let ctx = values(out.context);
            assert!(ctx.iter().all(|x| x.is_finite()), "{path:?}: {ctx:?}");
            // Query 0 of each head sees nothing: its context is exactly zero.
            for head in 0..2 {
                assert_eq!(
                    &ctx[head * 12..head * 12 + 4],
                    &[0.0; 4],
                    "{path:?} head {head}"
                );
            }
        }
    });

    test_on_cpu_backends!(custom_scale_is_honoured_by_both_paths, |device: &Device| {
        let mut rng = SeededRng::new(5);
        let q = random_tensor(&mut rng, [2, 3, 5, 4], 1.0, device);
        let k = random_tensor(&mut rng, [2, 3, 5, 4], 1.0, device);
        let v = random_tensor(&mut rng, [2, 3, 5, 4], 1.0, device);
        let run = |path, scale| {
            let opts = SdpaOptions {
                causal: true,
                scale,
                path,
            };
            values(
                scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), None, opts).context,
            )
        };
        let explicit = run(AttentionPath::Explicit, Some(0.9));
        assert_close(
            &explicit,
            &run(AttentionPath::Fused, Some(0.9)),
            1e-5,
            "scale 0.9",
        );
        // Scaling q by 1.8 with the default scale 1/2 is the same as scale 0.9.
        let opts = SdpaOptions {
            causal: true,
            scale: None,
            path: AttentionPath::Explicit,
        };
        let rescaled = values(
            scaled_dot_product_attention(
                q.clone().mul_scalar(1.8),
                k.clone(),
                v.clone(),
                None,
                opts,
            )
            .context,
        );
        assert_close(&explicit, &rescaled, 1e-5, "scale vs rescaled q");
    });
}
