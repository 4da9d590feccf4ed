//! One attention kernel on the CPU, forward and backward, in the manner of FlashAttention-2
//! (Dao, 2023, <https://arxiv.org/abs/2307.08691>): queries in blocks, keys and values in
//! tiles, the softmax computed online (a running maximum and sum per query), so the
//! probabilities are never written out. The forward pass keeps one number per query, the
//! log-sum-exp of its scores; the backward pass recomputes each tile's probabilities from it.
//!
//! Heads are read in place: q, k and v (and, in the backward pass, the output and its
//! gradient) are described by a [`HeadLayout`] (offset and strides into their storage), so the
//! `[batch, seq, n_heads, d_head]` output of a projection is read without first being
//! transposed into `[batch, n_heads, seq, d_head]` or copied head by head. Outputs and gradients
//! are written in `[batch, seq, n_heads, d_head]` order, which the output projection reads
//! back without a copy.
//!
//! The tile products run on [`super::tile_matmul`], register-blocked products written with
//! `pulp`, compiled for the CPU's best SIMD level at run time. Everything is checked against the
//! explicit path (probabilities materialised) in the tests of [`super`].

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use super::kernels::{drop_threshold, exp, keeps, max, sum};
use super::tile_matmul::matmul_acc;

mod backward;
mod transpose;

pub use backward::{FlashGrads, backward};

/// Queries per block.
const BLOCK_Q: usize = 64;
/// Keys per tile.
const BLOCK_K: usize = 64;
/// Queries per piece of a query block on a tile that the causal rule hides in part (see
/// [`FlashProblem::row_chunks`]).
const CAUSAL_CHUNK: usize = 16;
/// A chunk's keys are rounded up to a multiple of this: one AVX-512 vector of `f32`, two AVX2
/// ones, so the tile products keep whole vectors.
const CHUNK_KEYS: usize = 16;

/// Where a `[batch, n_heads, seq, d_head]` tensor's elements live in its storage: element
/// `(b, h, s, i)` is at `offset + b·strides[0] + h·strides[1] + s·strides[2] + i` (the last
/// dimension is contiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLayout {
    /// `[batch, n_heads, seq, d_head]`.
    pub shape: [usize; 4],
    /// Strides of the first three dimensions, in elements.
    pub strides: [usize; 3],
    /// Index of element `(0, 0, 0, 0)`.
    pub offset: usize,
}

impl HeadLayout {
    /// The layout of a contiguous `[batch, n_heads, seq, d_head]` tensor.
    pub fn contiguous(shape: [usize; 4]) -> Self {
        let [_, h, s, d] = shape;
        Self {
            shape,
            strides: [h * s * d, s * d, d],
            offset: 0,
        }
    }

    /// Index of the first element of row `(b, h, s)`.
    #[inline(always)]
    fn row(&self, b: usize, h: usize, s: usize) -> usize {
        self.offset + b * self.strides[0] + h * self.strides[1] + s * self.strides[2]
    }

    /// One past the largest index this layout touches (0 when it is empty).
    pub fn end(&self) -> usize {
        let [b, h, s, d] = self.shape;
        if b * h * s * d == 0 {
            return 0;
        }
        self.row(b - 1, h - 1, s - 1) + d
    }
}

/// What one attention call computes, shared by the forward and backward kernels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlashProblem {
    /// Sequences.
    pub batch: usize,
    /// Heads.
    pub n_heads: usize,
    /// Queries per sequence.
    pub seq_q: usize,
    /// Keys (and values) per sequence.
    pub seq_k: usize,
    /// Width of one head.
    pub d_head: usize,
    /// Whether query `i` sees only keys `0..=i + seq_k - seq_q` (bottom-right alignment).
    pub causal: bool,
    /// Factor on `q·k` before the softmax.
    pub scale: f32,
    /// Dropout on the probabilities, if any.
    pub dropout: Option<FlashDropout>,
}

/// Inverted dropout on the attention probabilities, with the counter-based mask of
/// [`super::dropout`]: probability `(b, h, i, j)` is element
/// `((b·n_heads + h)·seq_q + i)·seq_k + j` of the `[batch, n_heads, seq_q, seq_k]` tensor,
/// so the kernel drops exactly what `super::dropout` with the same seed would drop from the
/// materialised probabilities. The softmax's normaliser is taken before dropout, as there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlashDropout {
    /// `prob · 2³²`: a draw below it drops.
    threshold: u32,
    /// `1 / (1 − prob)`, the factor on what is kept.
    scale: f32,
    /// The mask's seed.
    seed: u64,
}

impl FlashDropout {
    /// Dropout with probability `prob` (in `[0, 1)`) and mask seed `seed`.
    pub fn new(prob: f32, seed: u64) -> Self {
        Self {
            threshold: drop_threshold(prob),
            scale: 1.0 / (1.0 - prob),
            seed,
        }
    }

    /// Multiplies `row` (probabilities of keys `first..first + row.len()` in the flattened
    /// index above) by the mask over `1 − prob`.
    #[inline(always)]
    fn apply(&self, row: &mut [f32], first: usize) {
        for (c, x) in row.iter_mut().enumerate() {
            let keep = keeps(self.seed, first + c, self.threshold);
            *x = if keep { *x * self.scale } else { 0.0 };
        }
    }
}

impl FlashProblem {
    /// The flattened index of probability `(b, h, i, j)` (see [`FlashDropout`]).
    #[inline(always)]
    fn prob_index(&self, b: usize, h: usize, i: usize, j: usize) -> usize {
        ((b * self.n_heads + h) * self.seq_q + i) * self.seq_k + j
    }

    /// Keys the queries `i0..i1` may see at most (a prefix of the keys).
    fn key_end(&self, i1: usize) -> usize {
        if self.causal {
            (i1 + self.seq_k - self.seq_q).min(self.seq_k)
        } else {
            self.seq_k
        }
    }

    /// The pieces in which the `rows` queries from `i0` meet the `w` keys of the tile at
    /// `j0`, as `(first row, end row, keys)` with rows counted from `i0`: the whole block
    /// against the whole tile, unless the causal rule hides part of the tile from some of the
    /// rows (the tile on the diagonal). Then the block goes in chunks of [`CAUSAL_CHUNK`]
    /// rows, each against only the keys its last row sees (rounded up to a multiple of
    /// [`CHUNK_KEYS`], and at most `w`), and chunks that see none of the tile are left
    /// out. Every key a row sees lies inside its chunk's keys; the ones past it are hidden
    /// by [`hide`] as before. On a square causal tile this skips 3/8 of the products.
    fn row_chunks(
        &self,
        i0: usize,
        rows: usize,
        j0: usize,
        w: usize,
    ) -> impl Iterator<Item = (usize, usize, usize)> + use<> {
        let partial = self.causal && self.visible(i0) < j0 + w;
        let step = if partial { CAUSAL_CHUNK } else { rows.max(1) };
        let p = *self;
        (0..rows).step_by(step).filter_map(move |c0| {
            let c1 = (c0 + step).min(rows);
            let seen = p.visible(i0 + c1 - 1).saturating_sub(j0).min(w);
            (seen > 0).then(|| (c0, c1, seen.next_multiple_of(CHUNK_KEYS).min(w)))
        })
    }

    /// Keys query `i` sees, as a prefix length of the keys (before padding).
    #[inline(always)]
    fn visible(&self, i: usize) -> usize {
        if self.causal {
            i + 1 + self.seq_k - self.seq_q
        } else {
            self.seq_k
        }
    }

    /// Checks that `layout` describes `[batch, n_heads, seq, d_head]` inside `len` elements.
    fn check(&self, what: &str, layout: &HeadLayout, seq: usize, len: usize) {
        assert_eq!(
            layout.shape,
            [self.batch, self.n_heads, seq, self.d_head],
            "flash attention: shape of {what}"
        );
        assert!(
            layout.end() <= len,
            "flash attention: {what} outside its storage"
        );
    }
}

/// Runs `op` compiled for the SIMD level the kernels run at (see [`crate::simd`]).
#[inline(always)]
fn simd<R>(op: impl WithSimd<Output = R>) -> R {
    crate::simd::arch().dispatch(op)
}

/// The forward pass. Returns the output, `[batch, seq_q, n_heads, d_head]` contiguous, and the
/// log-sum-exp of each query's scaled scores, `[batch, n_heads, seq_q]` (`+∞` for a query
/// that sees no key, whose output row is zero).
///
/// `key_hidden`, `[batch, seq_k]`, hides keys (`true` = hidden) on top of the causal rule.
pub fn forward(
    p: &FlashProblem,
    q: (&[f32], HeadLayout),
    k: (&[f32], HeadLayout),
    v: (&[f32], HeadLayout),
    key_hidden: Option<&[bool]>,
) -> (Vec<f32>, Vec<f32>) {
    p.check("q", &q.1, p.seq_q, q.0.len());
    p.check("k", &k.1, p.seq_k, k.0.len());
    p.check("v", &v.1, p.seq_k, v.0.len());
    if let Some(hidden) = key_hidden {
        assert_eq!(hidden.len(), p.batch * p.seq_k, "flash attention: key mask");
    }
    // Kᵀ of every head, tile by tile (see `transpose_tiles`).
    let head_len = p.seq_k.div_ceil(BLOCK_K) * p.d_head * BLOCK_K;
    let mut kt = vec![0.0f32; p.batch * p.n_heads * head_len];
    kt.par_chunks_mut(head_len.max(1))
        .enumerate()
        .for_each(|(bh, out)| {
            let (b, h) = (bh / p.n_heads, bh % p.n_heads);
            transpose_tiles(k, b, h, p.seq_k, out);
        });
    let blocks = p.seq_q.div_ceil(BLOCK_Q);
    let tasks: Vec<(usize, usize, usize)> = (0..p.batch)
        .flat_map(|b| (0..p.n_heads).flat_map(move |h| (0..blocks).map(move |blk| (b, h, blk))))
        .collect();
    let results: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(b, h, blk)| {
            let i0 = blk * BLOCK_Q;
            let i1 = (i0 + BLOCK_Q).min(p.seq_q);
            let hidden = key_hidden.map(|m| &m[b * p.seq_k..(b + 1) * p.seq_k]);
            let at = (b * p.n_heads + h) * head_len;
            simd(ForwardBlock {
                p,
                q,
                kt: &kt[at..at + head_len],
                v,
                hidden,
                b,
                h,
                i0,
                i1,
            })
        })
        .collect();

    // Each sequence's part of the output, `[seq_q, n_heads, d_head]`, is filled by one task
    // from the blocks of its heads (tasks are in (b, h, block) order).
    let per_batch = p.n_heads * blocks;
    let mut out = vec![0.0; p.batch * p.seq_q * p.n_heads * p.d_head];
    out.par_chunks_mut((p.seq_q * p.n_heads * p.d_head).max(1))
        .zip(results.par_chunks(per_batch.max(1)))
        .for_each(|(all, blocks_of_b)| {
            for (t, (block_out, _)) in blocks_of_b.iter().enumerate() {
                let (h, blk) = (t / blocks, t % blocks);
                scatter_head(p, (h, blk * BLOCK_Q), block_out, all);
            }
        });
    let mut lse = Vec::with_capacity(p.batch * p.n_heads * p.seq_q);
    for (_, block_lse) in &results {
        lse.extend_from_slice(block_lse);
    }
    (out, lse)
}

/// Writes `rows` (`[n, d_head]`, rows `first..first + n` of head `h`) into `all`, one
/// sequence's `[seq, n_heads, d_head]` part of a `[batch, seq, n_heads, d_head]` buffer.
fn scatter_head(p: &FlashProblem, (h, first): (usize, usize), rows: &[f32], all: &mut [f32]) {
    let d = p.d_head;
    for (r, row) in rows.chunks_exact(d).enumerate() {
        let at = ((first + r) * p.n_heads + h) * d;
        all[at..at + d].copy_from_slice(row);
    }
}

/// One block of queries of one head through every key tile it can see.
struct ForwardBlock<'a> {
    p: &'a FlashProblem,
    q: (&'a [f32], HeadLayout),
    /// This head's Kᵀ in tiles (see `transpose_tiles`).
    kt: &'a [f32],
    v: (&'a [f32], HeadLayout),
    hidden: Option<&'a [bool]>,
    b: usize,
    h: usize,
    i0: usize,
    i1: usize,
}

impl WithSimd for ForwardBlock<'_> {
    type Output = (Vec<f32>, Vec<f32>);

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let Self {
            p,
            q,
            kt,
            v,
            hidden,
            b,
            h,
            i0,
            i1,
        } = self;
        let d = p.d_head;
        let rows = i1 - i0;
        // The block's queries, pre-multiplied by the scale.
        let qs = gather_rows(q, b, h, i0..i1, p.scale);
        let mut max_so_far = vec![f32::NEG_INFINITY; rows];
        let mut sum_so_far = vec![0.0f32; rows];
        let mut acc = vec![0.0f32; rows * d];
        let mut scores = vec![0.0f32; rows * BLOCK_K];
        // The values are read in place: row `j` of this head at `v0 + j·v_stride`.
        let (v0, v_stride) = (v.1.row(b, h, 0), v.1.strides[2]);

        let key_end = p.key_end(i1);
        for j0 in (0..key_end).step_by(BLOCK_K) {
            let w = (j0 + BLOCK_K).min(key_end) - j0;
            let tile = &kt[j0 * d..(j0 + BLOCK_K) * d];
            let values = &v.0[v0 + j0 * v_stride..];
            for (c0, c1, wn) in p.row_chunks(i0, rows, j0, w) {
                let n = c1 - c0;
                let s = &mut scores[..n * wn];
                s.fill(0.0);
                matmul_acc(simd, n, wn, d, &qs[c0 * d..], d, tile, BLOCK_K, s, wn);
                for (r, row) in (c0..c1).zip(s.chunks_exact_mut(wn)) {
                    let seen = p.visible(i0 + r).saturating_sub(j0).min(wn);
                    hide(row, seen, hidden.map(|m| &m[j0..j0 + wn]));
                    let row_max = max(row);
                    if row_max == f32::NEG_INFINITY {
                        row.fill(0.0);
                        continue;
                    }
                    let new_max = max_so_far[r].max(row_max);
                    for x in row.iter_mut() {
                        let e = exp(*x - new_max);
                        *x = if *x == f32::NEG_INFINITY { 0.0 } else { e };
                    }
                    if max_so_far[r] != f32::NEG_INFINITY {
                        let alpha = exp(max_so_far[r] - new_max);
                        sum_so_far[r] *= alpha;
                        acc[r * d..(r + 1) * d].iter_mut().for_each(|a| *a *= alpha);
                    }
                    sum_so_far[r] += sum(row);
                    max_so_far[r] = new_max;
                    if let Some(drop) = &p.dropout {
                        drop.apply(row, p.prob_index(b, h, i0 + r, j0));
                    }
                }
                matmul_acc(
                    simd,
                    n,
                    d,
                    wn,
                    s,
                    wn,
                    values,
                    v_stride,
                    &mut acc[c0 * d..],
                    d,
                );
            }
        }

        let mut lse = vec![f32::INFINITY; rows];
        for r in 0..rows {
            let row = &mut acc[r * d..(r + 1) * d];
            if sum_so_far[r] > 0.0 {
                let inv = 1.0 / sum_so_far[r];
                row.iter_mut().for_each(|a| *a *= inv);
                lse[r] = max_so_far[r] + sum_so_far[r].ln();
            } else {
                row.fill(0.0);
            }
        }
        (acc, lse)
    }
}

/// Sets every score of `row` past the first `seen` (the causal rule) or hidden by `hidden` to
/// `−∞`.
#[inline(always)]
fn hide(row: &mut [f32], seen: usize, hidden: Option<&[bool]>) {
    row[seen..].fill(f32::NEG_INFINITY);
    if let Some(hidden) = hidden {
        for (x, &off) in row[..seen].iter_mut().zip(hidden) {
            if off {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// Head `(b, h)` of `x` in place: its storage from row 0 on, and the distance between its
/// rows (row `s` starts at `s · stride`).
fn head_rows(x: (&[f32], HeadLayout), b: usize, h: usize) -> (&[f32], usize) {
    (&x.0[x.1.row(b, h, 0)..], x.1.strides[2])
}

/// Copies rows `rows` of head `(b, h)` into a contiguous buffer, times `factor`.
fn gather_rows(
    x: (&[f32], HeadLayout),
    b: usize,
    h: usize,
    rows: std::ops::Range<usize>,
    factor: f32,
) -> Vec<f32> {
    let d = x.1.shape[3];
    let mut out = Vec::with_capacity(rows.len() * d);
    for s in rows {
        let at = x.1.row(b, h, s);
        out.extend(x.0[at..at + d].iter().map(|&y| y * factor));
    }
    out
}

/// The transpose of each tile of [`BLOCK_K`] rows of head `(b, h)` of `x` (rows `0..seq`,
/// read in place): tile `t` is written to `out[t·d·BLOCK_K..]` as `[d, BLOCK_K]` (a partial
/// last tile keeps the row stride `BLOCK_K`; its unused columns are left as they are).
/// Contiguous tiles keep a product's rows out of the 4 KiB-strided pattern that one
/// `[d, seq]` transpose would give, which thrashes L1 sets.
fn transpose_tiles(x: (&[f32], HeadLayout), b: usize, h: usize, seq: usize, out: &mut [f32]) {
    let d = x.1.shape[3];
    let (rows, stride) = head_rows(x, b, h);
    for s0 in (0..seq).step_by(BLOCK_K) {
        let n = (seq - s0).min(BLOCK_K);
        let at = s0 / BLOCK_K * d * BLOCK_K;
        transpose::transpose(&rows[s0 * stride..], stride, n, d, &mut out[at..], BLOCK_K);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(seq_q: usize, seq_k: usize, causal: bool) -> FlashProblem {
        FlashProblem {
            batch: 1,
            n_heads: 1,
            seq_q,
            seq_k,
            d_head: 8,
            causal,
            scale: 1.0,
            dropout: None,
        }
    }

    /// On the causal diagonal a block goes in chunks of 16 rows, each against only the keys
    /// its last row sees (rounded up to 16); off the diagonal, and without the causal rule,
    /// the whole block meets the whole tile. The values and gradients these pieces give are
    /// checked against the explicit path in `fused::tests`.
    #[test]
    fn row_chunks_cover_exactly_the_keys_each_row_sees() {
        let chunks = |p: &FlashProblem, i0, rows, j0, w| -> Vec<(usize, usize, usize)> {
            p.row_chunks(i0, rows, j0, w).collect()
        };
        let square = problem(64, 64, true);
        assert_eq!(
            chunks(&square, 0, 64, 0, 64),
            [(0, 16, 16), (16, 32, 32), (32, 48, 48), (48, 64, 64)]
        );
        // Rows 64..128 against the first tile: all of it is visible.
        let long = problem(128, 128, true);
        assert_eq!(chunks(&long, 64, 64, 0, 64), [(0, 64, 64)]);
        // A partial block and a partial tile on the diagonal (seq 70: rows 64..70).
        let odd = problem(70, 70, true);
        assert_eq!(chunks(&odd, 64, 6, 64, 6), [(0, 6, 6)]);
        // More keys than queries (bottom-right alignment): query 0 sees keys 0..=141.
        let wide = problem(9, 150, true);
        assert_eq!(chunks(&wide, 0, 9, 128, 22), [(0, 9, 22)]);
        assert_eq!(chunks(&wide, 0, 9, 64, 64), [(0, 9, 64)]);
        // Not causal: one piece.
        assert_eq!(chunks(&problem(64, 64, false), 0, 64, 0, 64), [(0, 64, 64)]);
        // Every row's visible keys lie inside its chunk's keys, and a chunk is never wider
        // than the tile, at every block and tile of a causal 200 × 200 problem.
        let p = problem(200, 200, true);
        for i0 in (0..200).step_by(BLOCK_Q) {
            let rows = (i0 + BLOCK_Q).min(200) - i0;
            for j0 in (0..p.key_end(i0 + rows)).step_by(BLOCK_K) {
                let w = (j0 + BLOCK_K).min(p.key_end(i0 + rows)) - j0;
                let mut covered = vec![false; rows];
                for (c0, c1, wn) in chunks(&p, i0, rows, j0, w) {
                    assert!(wn <= w);
                    for (r, seen) in covered.iter_mut().enumerate().take(c1).skip(c0) {
                        assert!(p.visible(i0 + r).saturating_sub(j0).min(w) <= wn);
                        *seen = true;
                    }
                }
                for (r, &c) in covered.iter().enumerate() {
                    assert!(c || p.visible(i0 + r) <= j0, "row {} at tile {j0}", i0 + r);
                }
            }
        }
    }
}
