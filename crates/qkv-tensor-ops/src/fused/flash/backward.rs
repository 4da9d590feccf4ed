//! The backward pass of the flash attention kernel: every query block of a head against every
//! key tile it saw, with the probabilities recomputed tile by tile from the forward pass's
//! log-sum-exp, and dQ, dK and dV accumulated in place of the materialised softmax backward.

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use super::super::kernels::{dot, exp};
use super::super::tile_matmul::{matmul_acc, matmul_acc_at};
use super::{
    BLOCK_K, BLOCK_Q, FlashProblem, HeadLayout, head_rows, hide, scatter_head, simd,
    transpose_tiles,
};

/// The three gradients of one attention call, each `[batch, seq, n_heads, d_head]`
/// contiguous.
#[derive(Debug)]
pub struct FlashGrads {
    /// Gradient of the queries.
    pub dq: Vec<f32>,
    /// Gradient of the keys.
    pub dk: Vec<f32>,
    /// Gradient of the values.
    pub dv: Vec<f32>,
}

/// The backward pass from the forward pass's inputs, its output `out` and log-sum-exp `lse`
/// (as [`super::forward`] returned them) and the output's gradient `dout`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    p: &FlashProblem,
    q: (&[f32], HeadLayout),
    k: (&[f32], HeadLayout),
    v: (&[f32], HeadLayout),
    key_hidden: Option<&[bool]>,
    out: (&[f32], HeadLayout),
    lse: &[f32],
    dout: (&[f32], HeadLayout),
) -> FlashGrads {
    p.check("q", &q.1, p.seq_q, q.0.len());
    p.check("k", &k.1, p.seq_k, k.0.len());
    p.check("v", &v.1, p.seq_k, v.0.len());
    p.check("out", &out.1, p.seq_q, out.0.len());
    p.check("dout", &dout.1, p.seq_q, dout.0.len());
    assert_eq!(
        lse.len(),
        p.batch * p.n_heads * p.seq_q,
        "flash attention: lse"
    );
    if let Some(hidden) = key_hidden {
        assert_eq!(hidden.len(), p.batch * p.seq_k, "flash attention: key mask");
    }
    let heads: Vec<(usize, usize)> = (0..p.batch)
        .flat_map(|b| (0..p.n_heads).map(move |h| (b, h)))
        .collect();
    let results: Vec<[Vec<f32>; 3]> = heads
        .par_iter()
        .map(|&(b, h)| {
            let at = (b * p.n_heads + h) * p.seq_q;
            simd(BackwardHead {
                p,
                q,
                k,
                v,
                out,
                dout,
                lse: &lse[at..at + p.seq_q],
                hidden: key_hidden.map(|m| &m[b * p.seq_k..(b + 1) * p.seq_k]),
                b,
                h,
            })
        })
        .collect();

    // One pass, one task per sequence, writes its heads' rows of all three gradients
    // (`results` is in (b, h) order). Where a dimension is empty the zip has no chunks, and
    // every gradient is then zero or empty, which the zero-filled buffers already hold.
    let len = |seq: usize| p.batch * seq * p.n_heads * p.d_head;
    let per_seq = |seq: usize| (seq * p.n_heads * p.d_head).max(1);
    let (mut dq, mut dk, mut dv) = (
        vec![0.0; len(p.seq_q)],
        vec![0.0; len(p.seq_k)],
        vec![0.0; len(p.seq_k)],
    );
    dq.par_chunks_mut(per_seq(p.seq_q))
        .zip(dk.par_chunks_mut(per_seq(p.seq_k)))
        .zip(dv.par_chunks_mut(per_seq(p.seq_k)))
        .zip(results.par_chunks(p.n_heads.max(1)))
        .for_each(|(((dq, dk), dv), grads_of_b)| {
            for (h, [gq, gk, gv]) in grads_of_b.iter().enumerate() {
                scatter_head(p, (h, 0), gq, dq);
                scatter_head(p, (h, 0), gk, dk);
                scatter_head(p, (h, 0), gv, dv);
            }
        });
    FlashGrads { dq, dk, dv }
}

/// Every query block against every key tile of one head; returns `[dq, dk, dv]`, each
/// `[seq, d_head]`.
struct BackwardHead<'a> {
    p: &'a FlashProblem,
    q: (&'a [f32], HeadLayout),
    k: (&'a [f32], HeadLayout),
    v: (&'a [f32], HeadLayout),
    out: (&'a [f32], HeadLayout),
    dout: (&'a [f32], HeadLayout),
    lse: &'a [f32],
    hidden: Option<&'a [bool]>,
    b: usize,
    h: usize,
}

impl WithSimd for BackwardHead<'_> {
    type Output = [Vec<f32>; 3];

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let Self {
            p,
            q,
            k,
            v,
            out,
            dout,
            lse,
            hidden,
            b,
            h,
        } = self;
        let (d, seq_q, seq_k) = (p.d_head, p.seq_q, p.seq_k);
        // q, k, o and dO are read in place (row `s` of a head at `s · stride`); the scale is
        // applied to the scores and, once at the end, to dQ and dK.
        let (q, q_ld) = head_rows(q, b, h);
        let (kc, k_ld) = head_rows(k, b, h);
        let (o, o_ld) = head_rows(out, b, h);
        let (dout, do_ld) = head_rows(dout, b, h);
        // Kᵀ and Vᵀ in tiles (see `transpose_tiles`).
        let tiled = seq_k.div_ceil(BLOCK_K) * d * BLOCK_K;
        let mut kt = vec![0.0; tiled];
        transpose_tiles(k, b, h, seq_k, &mut kt);
        let mut vt = vec![0.0; tiled];
        transpose_tiles(v, b, h, seq_k, &mut vt);
        // D_i = dO_i · O_i, the softmax backward's row term.
        let delta: Vec<f32> = (0..seq_q)
            .map(|i| dot(&dout[i * do_ld..i * do_ld + d], &o[i * o_ld..i * o_ld + d]))
            .collect();

        let mut dq = vec![0.0f32; seq_q * d];
        let mut dk = vec![0.0f32; seq_k * d];
        let mut dv = vec![0.0f32; seq_k * d];
        let mut probs = vec![0.0f32; BLOCK_Q * BLOCK_K];
        let mut dprobs = vec![0.0f32; BLOCK_Q * BLOCK_K];
        let mut dropped = vec![
            0.0f32;
            if p.dropout.is_some() {
                BLOCK_Q * BLOCK_K
            } else {
                0
            }
        ];

        for i0 in (0..seq_q).step_by(BLOCK_Q) {
            let i1 = (i0 + BLOCK_Q).min(seq_q);
            let rows = i1 - i0;
            let q_blk = &q[i0 * q_ld..];
            let do_blk = &dout[i0 * do_ld..];
            let key_end = p.key_end(i1);
            for j0 in (0..key_end).step_by(BLOCK_K) {
                let w = (j0 + BLOCK_K).min(key_end) - j0;
                let tile = j0 * d..(j0 + BLOCK_K) * d;
                for (c0, c1, wn) in p.row_chunks(i0, rows, j0, w) {
                    let n = c1 - c0;
                    let q_c = &q_blk[c0 * q_ld..];
                    let do_c = &do_blk[c0 * do_ld..];
                    // P = exp(scale · Q·Kᵀ − lse), recomputed.
                    let pr = &mut probs[..n * wn];
                    pr.fill(0.0);
                    matmul_acc(
                        simd,
                        n,
                        wn,
                        d,
                        q_c,
                        q_ld,
                        &kt[tile.clone()],
                        BLOCK_K,
                        pr,
                        wn,
                    );
                    for (r, row) in (c0..c1).zip(pr.chunks_exact_mut(wn)) {
                        let seen = p.visible(i0 + r).saturating_sub(j0).min(wn);
                        let l = lse[i0 + r];
                        if l == f32::INFINITY {
                            row.fill(0.0);
                            continue;
                        }
                        hide(row, seen, hidden.map(|m| &m[j0..j0 + wn]));
                        for x in row.iter_mut() {
                            let e = exp(*x * p.scale - l);
                            *x = if *x == f32::NEG_INFINITY { 0.0 } else { e };
                        }
                    }
                    // With dropout, the values saw P∘Z (Z: the mask over 1 − prob).
                    let pz: &[f32] = match &p.dropout {
                        Some(drop) => {
                            let pz = &mut dropped[..n * wn];
                            pz.copy_from_slice(pr);
                            for (r, row) in (c0..c1).zip(pz.chunks_exact_mut(wn)) {
                                drop.apply(row, p.prob_index(b, h, i0 + r, j0));
                            }
                            pz
                        }
                        None => pr,
                    };
                    // dV += (P∘Z)ᵀ·dO
                    matmul_acc_at(simd, wn, d, n, pz, wn, do_c, do_ld, &mut dv[j0 * d..], d);
                    // dP = dO·Vᵀ, then dS = P ∘ (dP − D) in place.
                    let ds = &mut dprobs[..n * wn];
                    ds.fill(0.0);
                    matmul_acc(
                        simd,
                        n,
                        wn,
                        d,
                        do_c,
                        do_ld,
                        &vt[tile.clone()],
                        BLOCK_K,
                        ds,
                        wn,
                    );
                    // dP = (dO·Vᵀ)∘Z; D_i = dO_i·O_i holds with dropout too (O = (P∘Z)·V).
                    let rows_of = ds.chunks_exact_mut(wn).zip(pr.chunks_exact(wn));
                    for (r, (row, p_row)) in (c0..c1).zip(rows_of) {
                        if let Some(drop) = &p.dropout {
                            drop.apply(row, p.prob_index(b, h, i0 + r, j0));
                        }
                        let dl = delta[i0 + r];
                        for (g, &pv) in row.iter_mut().zip(p_row) {
                            *g = pv * (*g - dl);
                        }
                    }
                    // dQ += dS·K and dK += dSᵀ·Q (the scale is applied once at the end).
                    matmul_acc(
                        simd,
                        n,
                        d,
                        wn,
                        ds,
                        wn,
                        &kc[j0 * k_ld..],
                        k_ld,
                        &mut dq[(i0 + c0) * d..],
                        d,
                    );
                    matmul_acc_at(simd, wn, d, n, ds, wn, q_c, q_ld, &mut dk[j0 * d..], d);
                }
            }
        }
        dq.iter_mut().for_each(|g| *g *= p.scale);
        dk.iter_mut().for_each(|g| *g *= p.scale);
        [dq, dk, dv]
    }
}
