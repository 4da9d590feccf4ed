//! Sinusoidal position encodings ("Attention Is All You Need", section 3.5).

use burn::prelude::*;

/// `PE(pos, 2i) = sin(pos / 10000^(2i/d_model))`, `PE(pos, 2i+1) = cos(…)` for positions
/// `start..start + len`.
///
/// # Shapes
/// returns `[len, d_model]`
pub fn sinusoidal_table(start: usize, len: usize, d_model: usize, device: &Device) -> Tensor<2> {
    let mut table = Vec::with_capacity(len * d_model);
    for pos in start..start + len {
        for column in 0..d_model {
            let i = (column / 2) as f64;
            let angle = pos as f64 / 10_000f64.powf(2.0 * i / d_model as f64);
            table.push(if column % 2 == 0 {
                angle.sin()
            } else {
                angle.cos()
            } as f32);
        }
    }
    Tensor::from_data(TensorData::new(table, [len, d_model]), device)
}
