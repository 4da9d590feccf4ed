//! The spectra of the Query and Key matrices, head by head: a test of the claim that "the
//! eigenvalues and eigenvectors of Q and K tend to be similar, and their product gives the
//! attention score".
//!
//! A head's score between a query-side input `x_i` and a key-side input `x_j` (rows of
//! `d_model`, biases aside) is
//!
//! ```text
//! score(i, j) = (x_i W_Q) · (x_j W_K) / √d_head = x_i (W_Q W_Kᵀ) x_jᵀ / √d_head
//! ```
//!
//! with `W_Q`, `W_K` the head's `[d_model, d_head]` slices of the projections. `W_Q` and
//! `W_K` are not square, so they have singular values, not eigenvalues; the square matrix
//! that makes the score is the bilinear form `M = W_Q W_Kᵀ` (`[d_model, d_model]`, rank at
//! most `d_head`). For each head, [`HeadSpectrum`] holds:
//!
//! - the singular values of `W_Q` and of `W_K`, and how alike the two spectra are;
//! - how aligned their singular vectors are: the cosines of the principal angles between
//!   the subspaces `W_Q` and `W_K` read from (1 = the same directions), and the top pair;
//! - the eigenvalues of `M` (complex in general: its non-zero ones are those of the
//!   `d_head × d_head` matrix `W_Kᵀ W_Q`);
//! - how symmetric `M` is, and how much of its symmetric part is positive definite. A
//!   symmetric, positive definite `M` is a similarity (an inner product: `x_i` attends to
//!   inputs like itself); an antisymmetric one scores `x_j` against `x_i` with the opposite
//!   sign of `x_i` against `x_j`.
//!
//! With rotary position encoding the score between positions `i` and `j` is
//! `x_i W_Q R_{j-i} W_Kᵀ x_jᵀ`: `M` is its form at offset 0. Biases and the LayerNorm scale
//! in front of the projections are left out.

use burn::nn::Linear;
use nalgebra::DMatrix;
use serde::Serialize;

use crate::gpt::Gpt;
use crate::seq2seq::Seq2Seq;
use qkv_attention::MultiHeadAttention;

/// The spectra of one attention head. See the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadSpectrum {
    /// Where the head is (`blocks.0.attn`, `decoder.1.cross_attn`, …).
    pub module: String,
    /// The head's index within its layer.
    pub head: usize,
    /// Width of the inputs the head reads, `d_model`.
    pub d_model: usize,
    /// Singular values of the head's `W_Q`, `[d_model, d_head]`, largest first.
    pub sigma_q: Vec<f64>,
    /// Singular values of the head's `W_K`, largest first.
    pub sigma_k: Vec<f64>,
    /// How far apart the two spectra are, each scaled to unit norm: `‖σ_Q/‖σ_Q‖ −
    /// σ_K/‖σ_K‖‖`, from 0 (the same shape) to √2.
    pub spectrum_distance: f64,
    /// Cosines of the principal angles between the column spaces of `W_Q` and `W_K`
    /// (subspaces of `d_model`), largest first: all 1 when Q and K read the same directions.
    /// Two random `d_head`-dimensional subspaces have a mean squared cosine of
    /// `d_head / d_model`.
    pub principal_cosines: Vec<f64>,
    /// `|u_Q · u_K|` of the top left singular vectors of `W_Q` and `W_K`.
    pub top_vector_alignment: f64,
    /// The non-zero eigenvalues of `M = W_Q W_Kᵀ` as `(re, im)`, largest modulus first.
    pub eigenvalues: Vec<(f64, f64)>,
    /// The eigenvalues of `M`'s symmetric part `(M + Mᵀ)/2` that can be non-zero (at most
    /// `2·d_head`), largest first.
    pub symmetric_eigenvalues: Vec<f64>,
    /// `(‖S‖² − ‖A‖²) / ‖M‖²` with `S`, `A` the symmetric and antisymmetric parts of `M`
    /// (Frobenius norms): 1 for a symmetric `M`, −1 for an antisymmetric one, near 0 for a
    /// random one.
    pub symmetry: f64,
    /// The share of the symmetric part's eigenvalue mass that is positive, `Σ λ₊ / Σ |λ|`:
    /// 1 when `S` is positive semi-definite, 0 when negative, near ½ for a random head.
    pub positive_mass: f64,
    /// The share of `M`'s eigenvalue modulus on eigenvalues with a positive real part.
    pub positive_eigen_mass: f64,
}

/// The spectrum of one head, from its `W_Q` and `W_K` slices, each `[d_model, d_head]` in
/// row-major order.
///
/// # Panics
/// If either slice does not hold `d_model · d_head` values.
pub fn head_spectrum(
    module: &str,
    head: usize,
    w_q: &[f64],
    w_k: &[f64],
    d_model: usize,
    d_head: usize,
) -> HeadSpectrum {
    assert_eq!(w_q.len(), d_model * d_head, "W_Q is [d_model, d_head]");
    assert_eq!(w_k.len(), d_model * d_head, "W_K is [d_model, d_head]");
    let q = DMatrix::from_row_slice(d_model, d_head, w_q);
    let k = DMatrix::from_row_slice(d_model, d_head, w_k);
    let svd_q = q.clone().svd(true, false);
    let svd_k = k.clone().svd(true, false);
    let (u_q, sigma_q) = sorted_left(&svd_q.u.expect("asked for U"), &svd_q.singular_values);
    let (u_k, sigma_k) = sorted_left(&svd_k.u.expect("asked for U"), &svd_k.singular_values);

    let unit = |s: &[f64]| {
        let n = s
            .iter()
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt()
            .max(f64::MIN_POSITIVE);
        s.iter().map(|x| x / n).collect::<Vec<_>>()
    };
    let spectrum_distance = unit(&sigma_q)
        .iter()
        .zip(unit(&sigma_k))
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt();

    // Orthonormal bases of the two column spaces, only the directions a non-zero singular
    // value spans.
    let rank_q = numerical_rank(&sigma_q);
    let rank_k = numerical_rank(&sigma_k);
    let basis_q = u_q.columns(0, rank_q);
    let basis_k = u_k.columns(0, rank_k);
    let mut principal_cosines: Vec<f64> = (basis_q.transpose() * basis_k)
        .singular_values()
        .iter()
        .map(|c| c.min(1.0))
        .collect();
    principal_cosines.sort_by(|a, b| b.total_cmp(a));
    let top_vector_alignment = if rank_q > 0 && rank_k > 0 {
        u_q.column(0).dot(&u_k.column(0)).abs()
    } else {
        0.0
    };

    // Non-zero eigenvalues of M = Q Kᵀ are those of Kᵀ Q (d_head × d_head).
    let small = k.transpose() * &q;
    let mut eigenvalues: Vec<(f64, f64)> = small
        .complex_eigenvalues()
        .iter()
        .map(|z| (z.re, z.im))
        .collect();
    eigenvalues.sort_by(|a, b| modulus(*b).total_cmp(&modulus(*a)));
    let total_modulus: f64 = eigenvalues.iter().map(|&z| modulus(z)).sum();
    let positive_eigen_mass = eigenvalues
        .iter()
        .filter(|z| z.0 > 0.0)
        .map(|&z| modulus(z))
        .sum::<f64>()
        / total_modulus.max(f64::MIN_POSITIVE);

    // ‖M‖² = tr((QᵀQ)(KᵀK)) and tr(M M) = tr((KᵀQ)²); ‖S‖² − ‖A‖² = tr(M M).
    let norm2 = ((q.transpose() * &q) * (k.transpose() * &k)).trace();
    let symmetry = (&small * &small).trace() / norm2.max(f64::MIN_POSITIVE);

    // S = ½ (Q Kᵀ + K Qᵀ) = U C Uᵀ with U = [Q K] and C = ½ [[0, I], [I, 0]]. With U = Z R
    // (Z orthonormal columns), S = Z (R C Rᵀ) Zᵀ: S's non-zero eigenvalues are those of the
    // small symmetric R C Rᵀ.
    let mut u = DMatrix::zeros(d_model, 2 * d_head);
    u.columns_mut(0, d_head).copy_from(&q);
    u.columns_mut(d_head, d_head).copy_from(&k);
    let r = u.qr().r();
    let mut c = DMatrix::zeros(2 * d_head, 2 * d_head);
    for i in 0..d_head {
        c[(i, d_head + i)] = 0.5;
        c[(d_head + i, i)] = 0.5;
    }
    let small_sym = &r * c * r.transpose();
    let small_sym = (&small_sym + small_sym.transpose()) * 0.5;
    let mut symmetric_eigenvalues: Vec<f64> =
        small_sym.symmetric_eigenvalues().iter().copied().collect();
    symmetric_eigenvalues.sort_by(|a, b| b.total_cmp(a));
    let abs_mass: f64 = symmetric_eigenvalues.iter().map(|l| l.abs()).sum();
    let positive_mass = symmetric_eigenvalues
        .iter()
        .filter(|&&l| l > 0.0)
        .sum::<f64>()
        / abs_mass.max(f64::MIN_POSITIVE);

    HeadSpectrum {
        module: module.to_string(),
        head,
        d_model,
        sigma_q,
        sigma_k,
        spectrum_distance,
        principal_cosines,
        top_vector_alignment,
        eigenvalues,
        symmetric_eigenvalues,
        symmetry,
        positive_mass,
        positive_eigen_mass,
    }
}

/// Every head of one attention layer; `module` names the layer in the results.
pub fn attention_spectra(module: &str, attn: &MultiHeadAttention) -> Vec<HeadSpectrum> {
    let d_model = attn.d_model;
    let d_head = d_model / attn.n_heads;
    let w_q = linear_weight(&attn.query);
    let w_k = linear_weight(&attn.key);
    (0..attn.n_heads)
        .map(|h| {
            let q = head_slice(&w_q, d_model, d_head, h);
            let k = head_slice(&w_k, d_model, d_head, h);
            head_spectrum(module, h, &q, &k, d_model, d_head)
        })
        .collect()
}

/// Every head of a GPT, layer by layer.
pub fn gpt_spectra(model: &Gpt) -> Vec<HeadSpectrum> {
    model
        .blocks
        .iter()
        .enumerate()
        .flat_map(|(i, b)| attention_spectra(&format!("blocks.{i}.attn"), &b.attn))
        .collect()
}

/// Every head of an encoder–decoder: encoder self-attention, then each decoder layer's
/// self- and cross-attention.
pub fn seq2seq_spectra(model: &Seq2Seq) -> Vec<HeadSpectrum> {
    let encoder = model
        .encoder
        .iter()
        .enumerate()
        .flat_map(|(i, l)| attention_spectra(&format!("encoder.{i}.self_attn"), &l.self_attn));
    let decoder = model.decoder.iter().enumerate().flat_map(|(i, l)| {
        let mut heads = attention_spectra(&format!("decoder.{i}.self_attn"), &l.self_attn);
        heads.extend(attention_spectra(
            &format!("decoder.{i}.cross_attn"),
            &l.cross_attn,
        ));
        heads
    });
    encoder.chain(decoder).collect()
}

/// Means over a set of heads of the figures that summarise one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpectraSummary {
    /// Heads averaged.
    pub heads: usize,
    /// Mean [`HeadSpectrum::spectrum_distance`].
    pub spectrum_distance: f64,
    /// Mean over heads of the mean principal cosine.
    pub mean_principal_cosine: f64,
    /// Mean [`HeadSpectrum::top_vector_alignment`].
    pub top_vector_alignment: f64,
    /// Mean [`HeadSpectrum::symmetry`].
    pub symmetry: f64,
    /// Mean [`HeadSpectrum::positive_mass`].
    pub positive_mass: f64,
    /// Mean [`HeadSpectrum::positive_eigen_mass`].
    pub positive_eigen_mass: f64,
}

impl SpectraSummary {
    /// The means over `heads` (all zeros for none).
    pub fn of(heads: &[HeadSpectrum]) -> Self {
        let n = heads.len().max(1) as f64;
        let mean = |f: &dyn Fn(&HeadSpectrum) -> f64| heads.iter().map(f).sum::<f64>() / n;
        Self {
            heads: heads.len(),
            spectrum_distance: mean(&|h| h.spectrum_distance),
            mean_principal_cosine: mean(&|h| mean_of(&h.principal_cosines)),
            top_vector_alignment: mean(&|h| h.top_vector_alignment),
            symmetry: mean(&|h| h.symmetry),
            positive_mass: mean(&|h| h.positive_mass),
            positive_eigen_mass: mean(&|h| h.positive_eigen_mass),
        }
    }
}

/// The mean of `values` (0 for none).
pub fn mean_of(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn modulus((re, im): (f64, f64)) -> f64 {
    re.hypot(im)
}

/// A Linear's weight `[d_input, d_output]` as row-major f64.
fn linear_weight(linear: &Linear) -> Vec<f64> {
    linear
        .weight
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("float weights")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Head `h`'s columns `h·d_head .. (h+1)·d_head` of a `[d_model, d_model]` row-major matrix.
fn head_slice(w: &[f64], d_model: usize, d_head: usize, h: usize) -> Vec<f64> {
    (0..d_model)
        .flat_map(|row| {
            let start = row * d_model + h * d_head;
            w[start..start + d_head].iter().copied()
        })
        .collect()
}

/// The left singular vectors and singular values, largest value first (nalgebra does not
/// promise an order).
fn sorted_left(u: &DMatrix<f64>, sigma: &nalgebra::DVector<f64>) -> (DMatrix<f64>, Vec<f64>) {
    let mut order: Vec<usize> = (0..sigma.len()).collect();
    order.sort_by(|&a, &b| sigma[b].total_cmp(&sigma[a]));
    let columns: Vec<_> = order.iter().map(|&i| u.column(i).into_owned()).collect();
    (
        DMatrix::from_columns(&columns),
        order.iter().map(|&i| sigma[i]).collect(),
    )
}

/// Singular values above round-off of the largest.
fn numerical_rank(sigma: &[f64]) -> usize {
    let top = sigma.first().copied().unwrap_or(0.0);
    sigma
        .iter()
        .filter(|&&s| s > top * 1e-10 && s > 0.0)
        .count()
}
