//! The AdamW update as one kernel: a pass over each parameter reads `p`, `g`, `m` and `v` once
//! and writes the new parameter and moments (the explicit form is thirteen tensor ops).
//! Checked against that form in the tests of [`super`].

use rayon::prelude::*;

use super::kernels::{TASK_ELEMS, simd};

/// The constants of one AdamW update (PyTorch's `torch.optim.AdamW` formula, see
/// [`super::adamw_update`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// β₁, the decay of the first moment.
    pub beta1: f32,
    /// β₂, the decay of the second moment.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
    /// `1 − lr·weight_decay` (1 for parameters without decay).
    pub decay_factor: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
    /// `√(1 − β₂ᵗ)`.
    pub bias2_sqrt: f32,
    /// Factor on the gradient first (the clipping factor, or `1/accumulation`).
    pub grad_scale: f32,
}

/// One AdamW update in one pass over a parameter: reads `p`, `g`, `m`, `v` once and writes
/// the new parameter and moments.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    p: &[f32],
    g: &[f32],
    m: &[f32],
    v: &[f32],
    step: &AdamWStep,
    p_out: &mut [f32],
    m_out: &mut [f32],
    v_out: &mut [f32],
) {
    let inputs = p
        .par_chunks(TASK_ELEMS)
        .zip(g.par_chunks(TASK_ELEMS))
        .zip(m.par_chunks(TASK_ELEMS).zip(v.par_chunks(TASK_ELEMS)));
    let outputs = p_out.par_chunks_mut(TASK_ELEMS).zip(
        m_out
            .par_chunks_mut(TASK_ELEMS)
            .zip(v_out.par_chunks_mut(TASK_ELEMS)),
    );
    inputs
        .zip(outputs)
        .for_each(|(((p, g), (m, v)), (p_out, (m_out, v_out)))| {
            simd(|| adamw_chunk(p, g, m, v, step, p_out, m_out, v_out))
        });
}

/// [`adamw`] on one chunk.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn adamw_chunk(
    p: &[f32],
    g: &[f32],
    m: &[f32],
    v: &[f32],
    s: &AdamWStep,
    p_out: &mut [f32],
    m_out: &mut [f32],
    v_out: &mut [f32],
) {
    let outputs = p_out.iter_mut().zip(m_out).zip(v_out);
    let inputs = p.iter().zip(g).zip(m.iter().zip(v));
    for (((p_out, m_out), v_out), ((&p, &g), (&m, &v))) in outputs.zip(inputs) {
        let g = g * s.grad_scale;
        let m = s.beta1 * m + (1.0 - s.beta1) * g;
        let v = s.beta2 * v + (1.0 - s.beta2) * (g * g);
        let update = m / (v.sqrt() / s.bias2_sqrt + s.eps);
        *p_out = p * s.decay_factor - s.step_size * update;
        *m_out = m;
        *v_out = v;
    }
}
