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
            simd!(adamw_chunk(p, g, m, v, step, p_out, m_out, v_out))
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
        (*p_out, *m_out, *v_out) = update(p, g, m, v, s);
    }
}

/// [`adamw`] writing the new parameter and moments over the old ones: no output buffers to
/// allocate and zero-fill, for tensors the optimizer owns alone.
pub fn adamw_in_place(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: &AdamWStep) {
    assert!(
        g.len() == p.len() && m.len() == p.len() && v.len() == p.len(),
        "adamw_in_place: p, g, m and v must have the same length"
    );
    p.par_chunks_mut(TASK_ELEMS)
        .zip(g.par_chunks(TASK_ELEMS))
        .zip(
            m.par_chunks_mut(TASK_ELEMS)
                .zip(v.par_chunks_mut(TASK_ELEMS)),
        )
        .for_each(|((p, g), (m, v))| {
            simd!({
                let state = p.iter_mut().zip(m.iter_mut().zip(v.iter_mut()));
                for ((p, (m, v)), &g) in state.zip(g) {
                    (*p, *m, *v) = update(*p, g, *m, *v, step);
                }
            })
        });
}

/// One element's update: the new `(p, m, v)`.
#[inline(always)]
fn update(p: f32, g: f32, m: f32, v: f32, s: &AdamWStep) -> (f32, f32, f32) {
    let g = g * s.grad_scale;
    let m = s.beta1 * m + (1.0 - s.beta1) * g;
    let v = s.beta2 * v + (1.0 - s.beta2) * (g * g);
    let update = m / (v.sqrt() / s.bias2_sqrt + s.eps);
    (p * s.decay_factor - s.step_size * update, m, v)
}

/// The constants of a third AdamW step (lr 1e-3, weight decay 0.1, β 0.9/0.99) with the
/// gradient halved: the tests' update.
#[cfg(test)]
pub(super) fn example_step() -> AdamWStep {
    AdamWStep {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        decay_factor: 1.0 - 1e-3 * 0.1,
        step_size: 1e-3 / (1.0 - 0.9f32.powi(3)),
        bias2_sqrt: (1.0 - 0.99f32.powi(3)).sqrt(),
        grad_scale: 0.5,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The in-place update writes exactly what the out-of-place one does, over several rayon
    /// chunks and a partial one.
    #[test]
    pub(crate) fn in_place_equals_out_of_place() {
        let n = 3 * TASK_ELEMS + 77;
        let wave = |k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect::<Vec<f32>>();
        let (p, g, m) = (wave(0.37), wave(1.3), wave(0.11));
        let v: Vec<f32> = wave(0.7).iter().map(|x| x * x).collect();
        let step = example_step();
        let (mut p_out, mut m_out, mut v_out) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        adamw(&p, &g, &m, &v, &step, &mut p_out, &mut m_out, &mut v_out);
        let (mut p2, mut m2, mut v2) = (p.clone(), m.clone(), v.clone());
        adamw_in_place(&mut p2, &g, &mut m2, &mut v2, &step);
        assert_ne!(p, p_out, "the update moved nothing");
        assert_eq!((p2, m2, v2), (p_out, m_out, v_out));
    }
}
