//! Transposes of the flash kernel's key and value tiles with vector shuffles: 16 × 16 blocks
//! in AVX-512 registers, 8 × 8 blocks in AVX2 registers, picked at run time (within the limit
//! of [`crate::simd`]), and scalar code for the edges and for CPUs with neither. At the
//! training step's shapes (64 keys × `d_head` 32) a scalar transpose, one element per load
//! and store, cost more than the product that reads it.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::{__m256, __m512};

/// Writes the transpose of the `n × d` matrix at `src` (row stride `lds`) into `dst` (`d × n`,
/// row stride `ldd`): element `(r, c)` of the source lands at `dst[c·ldd + r]`.
pub(super) fn transpose(src: &[f32], lds: usize, n: usize, d: usize, dst: &mut [f32], ldd: usize) {
    check(src.len(), lds, n, d, dst.len(), ldd);
    #[cfg(target_arch = "x86_64")]
    match crate::simd::arch() {
        pulp::Arch::V4(v4) => {
            return v4.vectorize(
                #[inline(always)]
                || transpose_v4(v4, src, lds, n, d, dst, ldd),
            );
        }
        pulp::Arch::V3(v3) => {
            return v3.vectorize(
                #[inline(always)]
                || transpose_v3(v3, src, lds, n, d, dst, ldd),
            );
        }
        _ => {}
    }
    scalar(src, lds, (0, n), (0, d), dst, ldd);
}

/// Panics unless every element [`transpose`] reads and writes lies inside its slices.
fn check(src_len: usize, lds: usize, n: usize, d: usize, dst_len: usize, ldd: usize) {
    if n == 0 || d == 0 {
        return;
    }
    assert!(lds >= d && ldd >= n, "transpose: a row stride is too short");
    assert!(src_len >= (n - 1) * lds + d, "transpose: source too short");
    assert!(
        dst_len >= (d - 1) * ldd + n,
        "transpose: destination too short"
    );
}

/// The transpose of rows `rows.0..rows.1` and columns `cols.0..cols.1`, one element at a time.
#[inline(always)]
fn scalar(
    src: &[f32],
    lds: usize,
    rows: (usize, usize),
    cols: (usize, usize),
    dst: &mut [f32],
    ldd: usize,
) {
    for r in rows.0..rows.1 {
        for c in cols.0..cols.1 {
            dst[c * ldd + r] = src[r * lds + c];
        }
    }
}

/// Full `B × B` blocks through `block`, then the right and bottom edges through [`scalar`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn blocked<const B: usize>(
    src: &[f32],
    lds: usize,
    n: usize,
    d: usize,
    dst: &mut [f32],
    ldd: usize,
    mut block: impl FnMut(&[f32], &mut [f32]),
) {
    let (nb, db) = (n / B * B, d / B * B);
    for r0 in (0..nb).step_by(B) {
        for c0 in (0..db).step_by(B) {
            block(&src[r0 * lds + c0..], &mut dst[c0 * ldd + r0..]);
        }
    }
    scalar(src, lds, (0, nb), (db, d), dst, ldd);
    scalar(src, lds, (nb, n), (0, d), dst, ldd);
}

/// [`transpose`] with AVX-512: each 16 × 16 block is sixteen loads, four rounds of sixteen
/// shuffles and sixteen stores.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose_v4(
    v4: pulp::x86::V4,
    src: &[f32],
    lds: usize,
    n: usize,
    d: usize,
    dst: &mut [f32],
    ldd: usize,
) {
    let f = v4.avx512f;
    blocked::<16>(
        src,
        lds,
        n,
        d,
        dst,
        ldd,
        #[inline(always)]
        |src, dst| {
            let r: [__m512; 16] = core::array::from_fn(|i| {
                let row: [f32; 16] = src[i * lds..i * lds + 16].try_into().expect("16 values");
                pulp::cast(row)
            });
            // Pairs of rows interleaved within each 128-bit lane.
            let t: [__m512; 16] = core::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    f._mm512_unpacklo_ps(a, b)
                } else {
                    f._mm512_unpackhi_ps(a, b)
                }
            });
            // Lane `l` of `u[4g + c]` now holds column `4l + c` of rows `4g..4g + 4`.
            let u: [__m512; 16] = core::array::from_fn(|i| {
                let (g, c) = (i / 4, i % 4);
                let (a, b) = (t[4 * g + c / 2], t[4 * g + c / 2 + 2]);
                if c % 2 == 0 {
                    f._mm512_shuffle_ps::<0x44>(a, b)
                } else {
                    f._mm512_shuffle_ps::<0xEE>(a, b)
                }
            });
            // Gather lane `l` of `u[c]`, `u[4 + c]`, `u[8 + c]` and `u[12 + c]`: column `4l + c`.
            for c in 0..4 {
                let lo = (
                    f._mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]),
                    f._mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]),
                );
                let hi = (
                    f._mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]),
                    f._mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]),
                );
                let cols = [
                    f._mm512_shuffle_f32x4::<0x88>(lo.0, lo.1),
                    f._mm512_shuffle_f32x4::<0xDD>(lo.0, lo.1),
                    f._mm512_shuffle_f32x4::<0x88>(hi.0, hi.1),
                    f._mm512_shuffle_f32x4::<0xDD>(hi.0, hi.1),
                ];
                for (l, col) in cols.into_iter().enumerate() {
                    let at = (4 * l + c) * ldd;
                    let out: [f32; 16] = pulp::cast(col);
                    dst[at..at + 16].copy_from_slice(&out);
                }
            }
        },
    );
}

/// [`transpose`] with AVX2: each 8 × 8 block is eight loads, three rounds of eight shuffles
/// and eight stores.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose_v3(
    v3: pulp::x86::V3,
    src: &[f32],
    lds: usize,
    n: usize,
    d: usize,
    dst: &mut [f32],
    ldd: usize,
) {
    let f = v3.avx;
    blocked::<8>(
        src,
        lds,
        n,
        d,
        dst,
        ldd,
        #[inline(always)]
        |src, dst| {
            let r: [__m256; 8] = core::array::from_fn(|i| {
                let row: [f32; 8] = src[i * lds..i * lds + 8].try_into().expect("8 values");
                pulp::cast(row)
            });
            let t: [__m256; 8] = core::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    f._mm256_unpacklo_ps(a, b)
                } else {
                    f._mm256_unpackhi_ps(a, b)
                }
            });
            // Lane `l` of `u[4g + c]` now holds column `4l + c` of rows `4g..4g + 4`.
            let u: [__m256; 8] = core::array::from_fn(|i| {
                let (g, c) = (i / 4, i % 4);
                let (a, b) = (t[4 * g + c / 2], t[4 * g + c / 2 + 2]);
                if c % 2 == 0 {
                    f._mm256_shuffle_ps::<0x44>(a, b)
                } else {
                    f._mm256_shuffle_ps::<0xEE>(a, b)
                }
            });
            for c in 0..4 {
                let cols = [
                    f._mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]),
                    f._mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]),
                ];
                for (l, col) in cols.into_iter().enumerate() {
                    let at = (4 * l + c) * ldd;
                    let out: [f32; 8] = pulp::cast(col);
                    dst[at..at + 8].copy_from_slice(&out);
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source with distinct values, its transpose by the scalar loop, and `run`'s, at
    /// shapes with and without edges and with strides wider than the matrices.
    fn check_against_scalar(run: impl Fn(&[f32], usize, usize, usize, &mut [f32], usize)) {
        for (n, d) in [
            (64, 32),
            (64, 64),
            (16, 16),
            (8, 8),
            (70, 40),
            (17, 33),
            (5, 3),
            (1, 1),
            (0, 4),
            (64, 0),
        ] {
            let (lds, ldd) = (d + 5, n + 3);
            let src: Vec<f32> = (0..n.max(1) * lds).map(|i| i as f32 + 0.5).collect();
            // The destination starts as NaN where nothing should be written.
            let mut want = vec![f32::NAN; d.max(1) * ldd];
            scalar(&src, lds, (0, n), (0, d), &mut want, ldd);
            let mut got = vec![f32::NAN; d.max(1) * ldd];
            run(&src, lds, n, d, &mut got, ldd);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits(),
                    "{n} x {d}: element {i} is {g}, want {w}"
                );
            }
            for r in 0..n {
                for c in 0..d {
                    assert_eq!(want[c * ldd + r], src[r * lds + c]);
                }
            }
        }
    }

    /// The dispatched transpose: AVX-512 or AVX2 on the CPUs this project runs on.
    #[test]
    fn transpose_matches_the_scalar_loop() {
        check_against_scalar(transpose);
    }

    /// Each vector path on its own, wherever this CPU has it (an AVX-512 CPU runs both).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_vector_path_matches_the_scalar_loop() {
        let mut ran = 0;
        if let Some(v4) = pulp::x86::V4::try_new() {
            check_against_scalar(|s, lds, n, d, o, ldd| {
                v4.vectorize(|| transpose_v4(v4, s, lds, n, d, o, ldd))
            });
            ran += 1;
        }
        if let Some(v3) = pulp::x86::V3::try_new() {
            check_against_scalar(|s, lds, n, d, o, ldd| {
                v3.vectorize(|| transpose_v3(v3, s, lds, n, d, o, ldd))
            });
            ran += 1;
        }
        assert!(ran > 0, "this x86-64 CPU has neither AVX2 nor AVX-512");
    }
}
