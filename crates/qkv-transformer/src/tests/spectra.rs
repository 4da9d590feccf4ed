//! The spectra of Q and K against slow, obvious references on small matrices: singular values
//! from a Jacobi eigensolver on `WᵀW`, eigenvalues of the full `d_model × d_model` bilinear
//! form from its characteristic polynomial (Faddeev–LeVerrier) and Durand–Kerner root
//! finding, and the symmetric part's eigenvalues by Jacobi on the full matrix.

use burn::prelude::*;
use nalgebra::Complex;
use qkv_test_support::{SeededRng, flex};

use crate::GptConfig;
use crate::interp::spectra::{HeadSpectrum, attention_spectra, gpt_spectra, head_spectrum};

type Mat = Vec<Vec<f64>>;

fn matrix(rows: usize, cols: usize, flat: &[f64]) -> Mat {
    (0..rows)
        .map(|r| flat[r * cols..(r + 1) * cols].to_vec())
        .collect()
}

fn transpose(a: &Mat) -> Mat {
    (0..a[0].len())
        .map(|c| a.iter().map(|row| row[c]).collect())
        .collect()
}

fn mul(a: &Mat, b: &Mat) -> Mat {
    let (n, m, p) = (a.len(), b.len(), b[0].len());
    (0..n)
        .map(|i| {
            (0..p)
                .map(|j| (0..m).map(|k| a[i][k] * b[k][j]).sum())
                .collect()
        })
        .collect()
}

/// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations, largest first.
fn jacobi_eigenvalues(mut a: Mat) -> Vec<f64> {
    let n = a.len();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off < 1e-26 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (row_p, row_q) = (a[p].clone(), a[q].clone());
                for k in 0..n {
                    a[p][k] = c * row_p[k] - s * row_q[k];
                    a[q][k] = s * row_p[k] + c * row_q[k];
                }
            }
        }
    }
    let mut eig: Vec<f64> = (0..n).map(|i| a[i][i]).collect();
    eig.sort_by(|x, y| y.total_cmp(x));
    eig
}

/// Roots of the characteristic polynomial of a square matrix: Faddeev–LeVerrier for the
/// coefficients, then Durand–Kerner iteration for the roots.
fn characteristic_roots(a: &Mat) -> Vec<Complex<f64>> {
    let n = a.len();
    // coeffs[i] multiplies λ^i; monic.
    let mut coeffs = vec![0.0; n + 1];
    coeffs[n] = 1.0;
    let mut m: Mat = vec![vec![0.0; n]; n];
    for k in 1..=n {
        let am = mul(a, &m);
        m = am;
        for (i, row) in m.iter_mut().enumerate() {
            row[i] += coeffs[n - k + 1];
        }
        let am = mul(a, &m);
        let trace: f64 = (0..n).map(|i| am[i][i]).sum();
        coeffs[n - k] = -trace / k as f64;
    }
    let p = |z: Complex<f64>| {
        coeffs
            .iter()
            .rev()
            .fold(Complex::new(0.0, 0.0), |acc, &c| acc * z + c)
    };
    let seed = Complex::new(0.4, 0.9);
    let mut roots: Vec<Complex<f64>> = (0..n).map(|i| seed.powi(i as i32)).collect();
    for _ in 0..5000 {
        for i in 0..n {
            let denom = (0..n)
                .filter(|&j| j != i)
                .fold(Complex::new(1.0, 0.0), |acc, j| acc * (roots[i] - roots[j]));
            let step = p(roots[i]) / denom;
            roots[i] -= step;
        }
    }
    roots
}

/// Orthonormal columns spanning `a`'s columns (Gram–Schmidt, twice for stability).
fn orthonormal_columns(a: &Mat) -> Mat {
    let mut cols: Vec<Vec<f64>> = Vec::new();
    for c in transpose(a) {
        let mut v = c;
        for _ in 0..2 {
            for u in &cols {
                let d: f64 = v.iter().zip(u).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(u).for_each(|(x, y)| *x -= d * y);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        cols.push(v.iter().map(|x| x / norm).collect());
    }
    transpose(&cols)
}

fn assert_all_close(got: &[f64], want: &[f64], scale: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-7 * scale, "{what}: {got:?} vs {want:?}");
    }
}

fn random(rng: &mut SeededRng, n: usize) -> Vec<f64> {
    rng.vec(n, 1.0).into_iter().map(f64::from).collect()
}

fn check_against_reference(d_model: usize, d_head: usize, seed: u64) -> HeadSpectrum {
    let mut rng = SeededRng::new(seed);
    let (wq, wk) = (
        random(&mut rng, d_model * d_head),
        random(&mut rng, d_model * d_head),
    );
    let got = head_spectrum("test", 0, &wq, &wk, d_model, d_head);
    let (q, k) = (matrix(d_model, d_head, &wq), matrix(d_model, d_head, &wk));

    let sv = |w: &Mat| -> Vec<f64> {
        jacobi_eigenvalues(mul(&transpose(w), w))
            .into_iter()
            .map(|l| l.max(0.0).sqrt())
            .collect()
    };
    let top = sv(&q)[0];
    assert_all_close(&got.sigma_q, &sv(&q), top, "singular values of W_Q");
    assert_all_close(&got.sigma_k, &sv(&k), sv(&k)[0], "singular values of W_K");

    let cross = mul(
        &transpose(&orthonormal_columns(&q)),
        &orthonormal_columns(&k),
    );
    let cosines = sv(&cross);
    assert_all_close(&got.principal_cosines, &cosines, 1.0, "principal cosines");

    // The full bilinear form and its parts.
    let m = mul(&q, &transpose(&k));
    let frob = |a: &Mat| a.iter().flatten().map(|x| x * x).sum::<f64>();
    let sym: Mat = (0..d_model)
        .map(|i| (0..d_model).map(|j| (m[i][j] + m[j][i]) / 2.0).collect())
        .collect();
    let anti: Mat = (0..d_model)
        .map(|i| (0..d_model).map(|j| (m[i][j] - m[j][i]) / 2.0).collect())
        .collect();
    let symmetry = (frob(&sym) - frob(&anti)) / frob(&m);
    assert!(
        (got.symmetry - symmetry).abs() < 1e-9,
        "symmetry {} vs {symmetry}",
        got.symmetry
    );

    let scale = frob(&m).sqrt();
    let sym_eig = jacobi_eigenvalues(sym);
    // The reference has d_model eigenvalues; the fast path only the ones that can be
    // non-zero. The rest of the reference's must be zero.
    let mut rest = sym_eig.clone();
    for &g in &got.symmetric_eigenvalues {
        let i = rest
            .iter()
            .position(|r| (r - g).abs() <= 1e-7 * scale)
            .unwrap_or_else(|| panic!("eigenvalue {g} of S not in {sym_eig:?}"));
        rest.remove(i);
    }
    assert!(
        rest.iter().all(|r| r.abs() <= 1e-7 * scale),
        "left over {rest:?}"
    );
    let pos: f64 = sym_eig.iter().filter(|&&l| l > 0.0).sum();
    let abs: f64 = sym_eig.iter().map(|l| l.abs()).sum();
    assert!((got.positive_mass - pos / abs).abs() < 1e-6);

    let mut roots = characteristic_roots(&m);
    for &(re, im) in &got.eigenvalues {
        let z = Complex::new(re, im);
        let i = roots
            .iter()
            .position(|r| (r - z).norm() <= 1e-5 * scale)
            .unwrap_or_else(|| panic!("eigenvalue {z} of M not among {roots:?}"));
        roots.remove(i);
    }
    // The rest are the (d_model − d_head)-fold root 0, which root finding only resolves to
    // about ε^(1/multiplicity).
    assert!(
        roots.iter().all(|r| r.norm() <= 1e-3 * scale),
        "M has non-zero eigenvalues the fast path missed: {roots:?}"
    );
    got
}

#[test]
fn spectra_match_slow_references() {
    // Rank-deficient forms (d_head < d_model) and one where Q and K span d_model together.
    for (d_model, d_head, seed) in [(6, 2, 1), (5, 3, 2), (8, 4, 3), (4, 4, 4)] {
        let s = check_against_reference(d_model, d_head, seed);
        assert_eq!(s.eigenvalues.len(), d_head);
        assert_eq!(s.sigma_q.len(), d_head);
    }
}

#[test]
fn known_answers_for_equal_and_rotated_keys() {
    let mut rng = SeededRng::new(9);
    let (d_model, d_head) = (6, 2);
    let wq = random(&mut rng, d_model * d_head);
    // K = Q: M = Q Qᵀ is symmetric positive semi-definite, its eigenvalues the squared
    // singular values of Q.
    let same = head_spectrum("same", 0, &wq, &wq, d_model, d_head);
    assert!((same.symmetry - 1.0).abs() < 1e-12);
    assert!((same.positive_mass - 1.0).abs() < 1e-12);
    assert!((same.positive_eigen_mass - 1.0).abs() < 1e-12);
    assert!(same.spectrum_distance < 1e-12);
    assert!(
        same.principal_cosines
            .iter()
            .all(|c| (c - 1.0).abs() < 1e-9)
    );
    assert!((same.top_vector_alignment - 1.0).abs() < 1e-9);
    for (&(re, im), s) in same.eigenvalues.iter().zip(&same.sigma_q) {
        assert!(im.abs() < 1e-9 && (re - s * s).abs() < 1e-9 * s * s);
    }
    // K = Q J with J a quarter turn: M = Q J Qᵀ is antisymmetric, with imaginary eigenvalues,
    // while Q and K still span the same subspace with the same singular values.
    let wk: Vec<f64> = (0..d_model)
        .flat_map(|r| [-wq[r * 2 + 1], wq[r * 2]])
        .collect();
    let turned = head_spectrum("turned", 0, &wq, &wk, d_model, d_head);
    assert!((turned.symmetry + 1.0).abs() < 1e-12);
    let norm = turned.sigma_q[0] * turned.sigma_k[0];
    assert!(
        turned
            .symmetric_eigenvalues
            .iter()
            .all(|l| l.abs() < 1e-12 * norm)
    );
    assert!(
        turned
            .eigenvalues
            .iter()
            .all(|z| z.0.abs() < 1e-9 * z.1.abs())
    );
    assert!(turned.spectrum_distance < 1e-12);
    assert!(
        turned
            .principal_cosines
            .iter()
            .all(|c| (c - 1.0).abs() < 1e-9)
    );
}

#[test]
fn heads_are_the_projection_columns() {
    let device = flex();
    let model = GptConfig::new(11, 8, 2, 3, 12).init(&device);
    let heads = gpt_spectra(&model);
    assert_eq!(heads.len(), 2 * 3);
    assert_eq!(heads[4].module, "blocks.1.attn");
    assert_eq!(heads[4].head, 1);
    // Head 1 of layer 1 by hand: its 4 columns of W_Q and W_K.
    let attn = &model.blocks[1].attn;
    let cols = |w: Tensor<2>| -> Vec<f64> {
        w.slice([0..12, 4..8])
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 weights")
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let by_hand = head_spectrum(
        "blocks.1.attn",
        1,
        &cols(attn.query.weight.val()),
        &cols(attn.key.weight.val()),
        12,
        4,
    );
    assert_eq!(by_hand, heads[4]);
    assert_eq!(attention_spectra("x", attn).len(), 3);
}

#[test]
fn encoder_decoder_heads_are_all_measured() {
    let device = flex();
    let model = crate::Seq2SeqConfig::new(10, 10, 8, 8)
        .with_d_model(12)
        .with_n_heads(3)
        .init(&device);
    let heads = crate::interp::spectra::seq2seq_spectra(&model);
    let (enc, dec) = (model.encoder.len(), model.decoder.len());
    assert_eq!(heads.len(), 3 * (enc + 2 * dec));
    assert_eq!(heads[3 * enc].module, "decoder.0.self_attn");
    assert_eq!(heads[3 * enc + 3].module, "decoder.0.cross_attn");
}
