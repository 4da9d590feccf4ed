//! Checked `f32` matrix products, `C = op(A)·op(B)` with `op` the identity or a transpose: the
//! products of a linear layer's forward pass (`X·W`) and of its backward pass (`dY·Wᵀ`,
//! `Xᵀ·dY`), read from row-major buffers in place.
//!
//! The arithmetic is the `gemm` crate's (the GEMM Burn's Flex backend calls), which picks
//! AVX-512 or AVX2 + FMA kernels at run time. This crate adds what a caller of Flex's matmul
//! pays for and does not need: Flex zero-fills every output buffer and then copies it to
//! realign it before the product overwrites it, and it transposes operands by making strided
//! views the caller must go through tensor ops to get. Here the output is written once, and a
//! transposed operand is only a flag.
//!
//! It is the one crate of the workspace with `unsafe` code: a single call into `gemm`, after
//! checks that every element the call reads or writes lies inside the slices it was given.
//! [`reference`] is the triple loop the tests hold it to. ARCHITECTURE.md ("Performance") has
//! the measurements that chose it over our own SIMD kernel and over OpenBLAS.

use gemm::Parallelism;

/// The README's example, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

/// From this many multiply-adds, with at least [`PARALLEL_OUTPUTS`] outputs, a product runs
/// on every thread of the current rayon pool.
const PARALLEL_MACS: usize = 1 << 21;
/// Fewer outputs than this stay on one thread whatever `k` is: splitting a long thin product
/// costs more than it saves.
const PARALLEL_OUTPUTS: usize = 1 << 14;

/// One operand: a row-major buffer and how the logical matrix sits in it.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Distance between consecutive rows of the buffer.
    pub ld: usize,
    /// `false`: element `(i, j)` is `data[i * ld + j]`; `true`: the buffer holds the
    /// transpose, so element `(i, j)` is `data[j * ld + i]`.
    pub transposed: bool,
}

impl<'a> Operand<'a> {
    /// A contiguous row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Operand {
            data,
            ld: cols,
            transposed: false,
        }
    }

    /// The transpose of a contiguous row-major matrix with `cols` columns (so the logical
    /// matrix has `cols` rows).
    pub fn transpose_of(data: &'a [f32], cols: usize) -> Self {
        Operand {
            data,
            ld: cols,
            transposed: true,
        }
    }

    /// The same buffer read as the transpose of this operand.
    pub fn t(self) -> Self {
        Operand {
            transposed: !self.transposed,
            ..self
        }
    }

    /// Element `(i, j)` of the logical matrix.
    fn at(&self, i: usize, j: usize) -> f32 {
        if self.transposed {
            self.data[j * self.ld + i]
        } else {
            self.data[i * self.ld + j]
        }
    }

    /// `(row stride, column stride)` of the logical matrix, in elements.
    fn strides(&self) -> (isize, isize) {
        let ld = self.ld as isize;
        if self.transposed { (1, ld) } else { (ld, 1) }
    }

    /// Checks that the logical `rows × cols` matrix lies inside the buffer: every index the
    /// product reads is then in bounds.
    ///
    /// # Panics
    /// If a row would overlap the next (`ld` too small) or the buffer is too short.
    fn check(&self, rows: usize, cols: usize, name: &str) {
        if rows == 0 || cols == 0 {
            return;
        }
        let (outer, inner) = if self.transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        assert!(
            inner <= self.ld,
            "gemm: {name}'s rows overlap: its row stride {} is below its width {inner}",
            self.ld
        );
        let needed = (outer - 1)
            .checked_mul(self.ld)
            .and_then(|x| x.checked_add(inner))
            .expect("gemm: operand size overflows usize");
        assert!(
            self.data.len() >= needed,
            "gemm: {name} is too short for its shape: {} values, {needed} needed",
            self.data.len()
        );
        assert!(
            self.ld <= isize::MAX as usize,
            "gemm: {name}'s row stride overflows isize"
        );
    }
}

/// `C = A·B`, or `C += A·B` with `accumulate`: `A` logically `[m, k]`, `B` logically `[k, n]`,
/// `C` contiguous row-major `[m, n]`. Large products run on every thread of the current rayon
/// pool.
///
/// # Panics
/// If an operand's buffer is too short for its shape, or `c.len() != m * n`.
pub fn gemm(m: usize, n: usize, k: usize, a: Operand, b: Operand, c: &mut [f32], accumulate: bool) {
    let len = check_product(m, n, k, a, b);
    assert_eq!(c.len(), len, "gemm: C must hold m × n = {m} × {n} values");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: both operands were checked above, the three sizes are non-zero, and `c` is a
    // unique borrow of exactly m × n initialised values.
    unsafe {
        call(m, n, k, a, b, c.as_mut_ptr(), accumulate);
    }
}

/// The one call into `gemm`: `C (+)= A·B` into the `m × n` row-major buffer at `c`.
///
/// # Safety
/// `a.check(m, k)` and `b.check(k, n)` passed; `m`, `n` and `k` are non-zero; `c` points to
/// `m × n` writable `f32`s that overlap neither operand, initialised if `accumulate`.
#[allow(unsafe_code)]
unsafe fn call(
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    c: *mut f32,
    accumulate: bool,
) {
    let (a_rs, a_cs) = a.strides();
    let (b_rs, b_cs) = b.strides();
    let parallelism = if m * n * k >= PARALLEL_MACS && m * n >= PARALLEL_OUTPUTS {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: `check` proved that every element (i, p) of A, i < m, p < k, at offset
    // i·a_rs + p·a_cs, and every element (p, j) of B, at p·b_rs + j·b_cs, lies inside its
    // slice, and the strides fit in `isize`; the caller gives `c` as this function's safety
    // section says. With `read_dst` false gemm writes C without reading it; with it true
    // (accumulating) C is initialised.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `A·B` into a new row-major `[m, n]` buffer (see [`gemm`]), written once: the buffer is not
/// zero-filled first.
///
/// # Panics
/// As [`gemm`].
pub fn product(m: usize, n: usize, k: usize, a: Operand, b: Operand) -> Vec<f32> {
    let len = check_product(m, n, k, a, b);
    if len == 0 || k == 0 {
        return vec![0.0; len];
    }
    let mut c: Vec<f32> = Vec::with_capacity(len);
    let out = c.spare_capacity_mut().as_mut_ptr().cast::<f32>();
    #[allow(unsafe_code)]
    // SAFETY: both operands were checked above, the three sizes are non-zero, and `out` is
    // the spare capacity of a new vector: `len` writable values that nothing else refers to.
    unsafe {
        call(m, n, k, a, b, out, false);
    }
    #[allow(unsafe_code)]
    // SAFETY: `c` has capacity `len`, and with `read_dst` false and `k > 0` the call above
    // wrote all `m × n = len` elements (gemm stores every output of its first `k` block
    // without reading it), so the first `len` elements are initialised `f32`s.
    unsafe {
        c.set_len(len);
    }
    c
}

/// Checks `A` (`[m, k]`) and `B` (`[k, n]`) against their buffers and returns `m × n`.
///
/// # Panics
/// As [`gemm`], or if `m × n` overflows `usize`.
fn check_product(m: usize, n: usize, k: usize, a: Operand, b: Operand) -> usize {
    a.check(m, k, "A");
    b.check(k, n, "B");
    m.checked_mul(n).expect("gemm: m × n overflows usize")
}

/// The triple loop, `C = A·B` (or `C += A·B`) accumulated in `f64`: the oracle of the tests.
///
/// # Panics
/// As [`gemm`].
pub fn reference(
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    c: &mut [f32],
    accumulate: bool,
) {
    let len = check_product(m, n, k, a, b);
    assert_eq!(c.len(), len, "gemm: C must hold m × n = {m} × {n} values");
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| a.at(i, p) as f64 * b.at(p, j) as f64).sum();
            let y = &mut c[i * n + j];
            *y = if accumulate { *y + s as f32 } else { s as f32 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkv_rng::SplitMix64;

    /// `len` values uniform in [-1, 1) from `seed`.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..len).map(|_| rng.uniform_f32(-1.0, 1.0)).collect()
    }

    /// The largest difference between `got` and `want`, relative to `want`'s largest value.
    fn relative_error(got: &[f32], want: &[f32]) -> f32 {
        let scale = want.iter().fold(0.0f32, |s, x| s.max(x.abs()));
        assert!(scale > 0.0, "the reference is all zeros");
        got.iter()
            .zip(want)
            .map(|(g, w)| {
                assert!(g.is_finite(), "a non-finite product");
                (g - w).abs()
            })
            .fold(0.0f32, f32::max)
            / scale
    }

    /// Runs [`gemm`] and [`reference`] on the same operands, stored as `ta` / `tb` say (with a
    /// row stride wider than the matrix when `padded`), with and without accumulation.
    fn check(m: usize, n: usize, k: usize, ta: bool, tb: bool, padded: bool) {
        let pad = if padded { 3 } else { 0 };
        let (a_rows, a_cols) = if ta { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if tb { (n, k) } else { (k, n) };
        let a_data = values(a_rows * (a_cols + pad), (m * 31 + k) as u64);
        let b_data = values(b_rows * (b_cols + pad), (n * 17 + k) as u64);
        let a = Operand {
            data: &a_data,
            ld: a_cols + pad,
            transposed: ta,
        };
        let b = Operand {
            data: &b_data,
            ld: b_cols + pad,
            transposed: tb,
        };
        for accumulate in [false, true] {
            let start = values(m * n, 7);
            let (mut got, mut want) = (start.clone(), start);
            gemm(m, n, k, a, b, &mut got, accumulate);
            reference(m, n, k, a, b, &mut want, accumulate);
            let err = relative_error(&got, &want);
            assert!(
                err < 1e-5,
                "{m}×{k} @ {k}×{n} (A transposed {ta}, B transposed {tb}, padded {padded}, \
                 accumulate {accumulate}): relative error {err}"
            );
        }
    }

    /// Every layout, at shapes that leave partial register tiles, at the training steps'
    /// shapes (large enough to run on several threads), and with padded row strides.
    #[test]
    fn gemm_matches_the_triple_loop() {
        let shapes = [
            (1, 1, 1),
            (1, 7, 3),
            (5, 1, 9),
            (7, 13, 5),
            (13, 70, 129),
            (150, 100, 260),
            (768, 65, 128),
            (256, 384, 128),
        ];
        for (m, n, k) in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                check(m, n, k, ta, tb, false);
            }
        }
        check(70, 90, 40, false, true, true);
        check(70, 90, 40, true, false, true);
    }

    /// A large product on a pool of three threads, so the work splits unevenly.
    #[test]
    fn gemm_on_three_threads() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("a thread pool");
        pool.install(|| {
            check(301, 96, 150, false, false, false);
            check(128, 384, 300, true, false, false);
        });
    }

    /// `product` is `gemm` into a fresh buffer; `t` flips an operand.
    #[test]
    fn product_and_transposed_operands() {
        let (m, n, k) = (9, 11, 6);
        let a = values(m * k, 1);
        let b = values(n * k, 2);
        // A·Bᵀ with B stored [n, k].
        let got = product(m, n, k, Operand::rows(&a, k), Operand::rows(&b, k).t());
        let mut want = vec![0.0; m * n];
        reference(
            m,
            n,
            k,
            Operand::rows(&a, k),
            Operand::transpose_of(&b, k),
            &mut want,
            false,
        );
        assert!(relative_error(&got, &want) < 1e-6);
    }

    /// With `k = 0` the product is zero, or leaves C as it was when accumulating; with `m` or
    /// `n` zero there is nothing to do.
    #[test]
    fn gemm_of_empty_shapes() {
        let mut c = vec![3.0f32; 6];
        gemm(
            2,
            3,
            0,
            Operand::rows(&[], 0),
            Operand::rows(&[], 3),
            &mut c,
            true,
        );
        assert_eq!(c, vec![3.0; 6]);
        gemm(
            2,
            3,
            0,
            Operand::rows(&[], 0),
            Operand::rows(&[], 3),
            &mut c,
            false,
        );
        assert_eq!(c, vec![0.0; 6]);
        assert!(product(0, 3, 4, Operand::rows(&[], 4), Operand::rows(&[0.0; 12], 3)).is_empty());
    }

    /// A buffer too short for its shape is refused before anything is read.
    #[test]
    #[should_panic(expected = "B is too short for its shape")]
    fn gemm_refuses_a_short_operand() {
        let mut c = vec![0.0f32; 4];
        gemm(
            2,
            2,
            3,
            Operand::rows(&[0.0; 6], 3),
            Operand::rows(&[0.0; 5], 2),
            &mut c,
            false,
        );
    }

    /// A row stride below the row's width (rows that overlap) is refused.
    #[test]
    #[should_panic(expected = "A's rows overlap")]
    fn gemm_refuses_overlapping_rows() {
        let mut c = vec![0.0f32; 4];
        let a = Operand {
            data: &[0.0; 12],
            ld: 2,
            transposed: false,
        };
        gemm(2, 2, 3, a, Operand::rows(&[0.0; 6], 2), &mut c, false);
    }

    /// C of the wrong size is refused.
    #[test]
    #[should_panic(expected = "C must hold m × n")]
    fn gemm_refuses_a_wrong_output() {
        let mut c = vec![0.0f32; 5];
        gemm(
            2,
            2,
            3,
            Operand::rows(&[0.0; 6], 3),
            Operand::rows(&[0.0; 6], 2),
            &mut c,
            false,
        );
    }
}
