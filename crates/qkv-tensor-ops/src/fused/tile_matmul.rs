//! The small matrix products inside the flash attention kernel: `C += A·B` and `C += Aᵀ·B`
//! on row-major `f32` tiles, register-blocked, written with `pulp` so that one body compiles
//! for every SIMD level and is picked at run time. At tile sizes (64 × 64 × `d_head`) a
//! packing GEMM per call (`qkv-gemm`, the linear layers' products) would cost more than it
//! saves.

use pulp::Simd;

/// Rows of C per register block.
const MR: usize = 4;

/// `C += A·B` for row-major `A` (`[m, k]`, row stride `lda`), `B` (`[k, n]`, row stride `ldb`)
/// and `C` (`[m, n]`, row stride `ldc`): blocks of `MR` rows of C by several SIMD vectors of
/// columns (four with 16-lane vectors, which have 32 registers; two otherwise) held in
/// registers across the whole `k` loop, then narrower and scalar edges.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn matmul_acc<S: Simd>(
    simd: S,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    product::<S, false>(simd, m, n, k, a, lda, b, ldb, c, ldc);
}

/// `C += Aᵀ·B`: as [`matmul_acc`], with `A` stored transposed, `[k, m]` with row stride
/// `lda` (so the backward pass needs no transposed copy of a tile).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn matmul_acc_at<S: Simd>(
    simd: S,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    product::<S, true>(simd, m, n, k, a, lda, b, ldb, c, ldc);
}

/// The body of [`matmul_acc`] (`AT` false) and [`matmul_acc_at`] (`AT` true).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn product<S: Simd, const AT: bool>(
    simd: S,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let a_end = if AT {
        (k - 1) * lda + m
    } else {
        (m - 1) * lda + k
    };
    assert!(a.len() >= a_end, "matmul_acc: A too short");
    assert!(b.len() >= (k - 1) * ldb + n, "matmul_acc: B too short");
    assert!(c.len() >= (m - 1) * ldc + n, "matmul_acc: C too short");
    let lanes = core::mem::size_of::<S::f32s>() / core::mem::size_of::<f32>();
    let full = n / lanes * lanes;
    let m4 = m / MR * MR;
    let operands = Operands {
        k,
        a,
        lda,
        b,
        ldb,
        lanes,
    };
    let mut j = 0;
    if lanes >= 16 {
        while j + 4 * lanes <= full {
            rows::<S, 4, AT>(simd, &operands, m4, m, j, c, ldc);
            j += 4 * lanes;
        }
    }
    while j + 2 * lanes <= full {
        rows::<S, 2, AT>(simd, &operands, m4, m, j, c, ldc);
        j += 2 * lanes;
    }
    while j < full {
        rows::<S, 1, AT>(simd, &operands, m4, m, j, c, ldc);
        j += lanes;
    }
    // Columns past the last full vector.
    if full < n {
        for i in 0..m {
            for p in 0..k {
                let x = if AT { a[p * lda + i] } else { a[i * lda + p] };
                let brow = &b[p * ldb + full..p * ldb + n];
                for (y, &z) in c[i * ldc + full..i * ldc + n].iter_mut().zip(brow) {
                    *y += x * z;
                }
            }
        }
    }
}

/// The factors of one [`matmul_acc`] call.
struct Operands<'a> {
    k: usize,
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    ldb: usize,
    lanes: usize,
}

/// Every row of C over the `NV` vectors of columns starting at column `j`: blocks of [`MR`]
/// rows up to `m4`, then single rows up to `m`.
#[inline(always)]
fn rows<S: Simd, const NV: usize, const AT: bool>(
    simd: S,
    ops: &Operands,
    m4: usize,
    m: usize,
    j: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let mut i = 0;
    while i < m4 {
        block::<S, MR, NV, AT>(simd, ops, i, j, c, ldc);
        i += MR;
    }
    while i < m {
        block::<S, 1, NV, AT>(simd, ops, i, j, c, ldc);
        i += 1;
    }
}

/// `R` rows of C from row `i` by `NV` vectors of columns from column `j`, accumulated in
/// registers over the whole `k` loop.
// `p` indexes a row of B and a column of A's rows together.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn block<S: Simd, const R: usize, const NV: usize, const AT: bool>(
    simd: S,
    ops: &Operands,
    i: usize,
    j: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let Operands {
        k,
        a,
        lda,
        b,
        ldb,
        lanes,
    } = *ops;
    let width = NV * lanes;
    let mut acc = [[simd.splat_f32s(0.0); NV]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        let at = (i + r) * ldc + j;
        row.copy_from_slice(&S::as_simd_f32s(&c[at..at + width]).0[..NV]);
    }
    let a_rows: [&[f32]; R] = core::array::from_fn(|r| {
        if AT {
            &[]
        } else {
            &a[(i + r) * lda..(i + r) * lda + k]
        }
    });
    for p in 0..k {
        let at = p * ldb + j;
        let bv = S::as_simd_f32s(&b[at..at + width]).0;
        // Row `p` of Aᵀ holds the `R` values this step needs side by side.
        let a_col: &[f32] = if AT {
            &a[p * lda + i..p * lda + i + R]
        } else {
            &[]
        };
        for (r, row) in acc.iter_mut().enumerate() {
            let x = simd.splat_f32s(if AT { a_col[r] } else { a_rows[r][p] });
            for (y, &z) in row.iter_mut().zip(bv) {
                *y = simd.mul_add_e_f32s(x, z, *y);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let at = (i + r) * ldc + j;
        S::as_mut_simd_f32s(&mut c[at..at + width]).0[..NV].copy_from_slice(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulp::WithSimd;

    /// Runs `op` compiled for the SIMD level the kernels run at.
    fn simd<R>(op: impl WithSimd<Output = R>) -> R {
        crate::simd::arch().dispatch(op)
    }

    /// `matmul_acc` and `matmul_acc_at` against the triple loop, at shapes that exercise
    /// every edge (row blocks, one-vector and scalar columns, strides wider than the
    /// matrices), at each SIMD level this CPU has (the blocks' widths depend on the lanes).
    #[test]
    fn matmul_acc_matches_the_triple_loop() {
        struct Run<'a> {
            dims: (usize, usize, usize),
            a: (&'a [f32], usize),
            b: (&'a [f32], usize),
            c: (&'a mut [f32], usize),
            transposed: bool,
        }
        impl WithSimd for Run<'_> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Simd>(self, s: S) {
                let Run {
                    dims: (m, n, k),
                    a,
                    b,
                    c,
                    transposed,
                } = self;
                if transposed {
                    matmul_acc_at(s, m, n, k, a.0, a.1, b.0, b.1, c.0, c.1);
                } else {
                    matmul_acc(s, m, n, k, a.0, a.1, b.0, b.1, c.0, c.1);
                }
            }
        }
        let mut rng = qkv_test_support::SeededRng::new(7);
        crate::simd::at_each_level(|level| {
            for (m, n, k) in [
                (1, 1, 1),
                (5, 37, 3),
                (8, 64, 64),
                (13, 16, 9),
                (64, 33, 70),
                (6, 80, 5),
            ] {
                let (lda, ldb, ldc) = (k + 2, n + 3, n + 1);
                let a = rng.vec(m * lda, 0.5);
                let b = rng.vec(k * ldb, 0.5);
                let c0 = rng.vec(m * ldc, 0.5);
                // A stored transposed, `[k, m]`, with a wider stride.
                let ldat = m + 5;
                let mut at = vec![0.0f32; k * ldat];
                for i in 0..m {
                    for p in 0..k {
                        at[p * ldat + i] = a[i * lda + p];
                    }
                }
                for transposed in [false, true] {
                    let mut c = c0.clone();
                    let a = if transposed {
                        (&at[..], ldat)
                    } else {
                        (&a[..], lda)
                    };
                    simd(Run {
                        dims: (m, n, k),
                        a,
                        b: (&b, ldb),
                        c: (&mut c, ldc),
                        transposed,
                    });
                    let a_at = |i: usize, p: usize| {
                        if transposed {
                            a.0[p * a.1 + i]
                        } else {
                            a.0[i * a.1 + p]
                        }
                    };
                    for i in 0..m {
                        for j in 0..ldc {
                            let want = if j < n {
                                c0[i * ldc + j]
                                    + (0..k).map(|p| a_at(i, p) * b[p * ldb + j]).sum::<f32>()
                            } else {
                                c0[i * ldc + j]
                            };
                            let got = c[i * ldc + j];
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{level}, transposed {transposed}, {m}x{n}x{k} at ({i}, {j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        });
    }
}
