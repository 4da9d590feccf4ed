//! `qkv-attention` on its own: one causal multi-head attention layer over a batch, its
//! per-head probabilities, and the same sequence decoded one token at a time through the KV
//! cache.
//!
//! `cargo run --release -p qkv-examples --example attention_only`

use burn::prelude::*;
use burn::tensor::Distribution;
use qkv_attention::{KvCache, MhaInput, MultiHeadAttentionConfig};

fn main() -> Result<(), qkv_attention::AttentionError> {
    let device = Device::flex();
    device.seed(42);
    let (batch, seq, d_model, n_heads) = (2, 6, 32, 4);
    let mha = MultiHeadAttentionConfig::new(d_model, n_heads)
        .with_rotary_base(Some(10_000.0))
        .try_init(&device)?;
    let x = Tensor::<3>::random(
        [batch, seq, d_model],
        Distribution::Normal(0.0, 1.0),
        &device,
    );

    // The whole sequence at once, asking for the probabilities.
    let full = mha.try_forward(MhaInput::self_attn(x.clone()).causal().return_probs())?;
    let probs = full.probs.expect("asked for");
    println!(
        "context {:?}, probabilities {:?}",
        full.context.dims(),
        probs.dims()
    );
    let head0: Vec<f32> = probs
        .slice(s![0..1, 0..1, .., ..])
        .into_data()
        .try_into_vec_as()
        .expect("floats");
    println!("sequence 0, head 0 (rows: queries, columns: keys):");
    for row in head0.chunks(seq) {
        println!(
            "  {}",
            row.iter()
                .map(|p| format!("{p:5.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    // The same, one token at a time: each step adds one row of keys and values to the cache.
    let mut cache = KvCache::new();
    let mut steps = Vec::new();
    for t in 0..seq {
        let token = x.clone().slice(s![.., t..t + 1, ..]);
        steps.push(
            mha.forward_cached(MhaInput::self_attn(token).causal(), &mut cache)?
                .context,
        );
    }
    let stepped = Tensor::cat(steps, 1);
    let diff = (stepped - full.context).abs().max().into_scalar::<f32>();
    println!(
        "cache holds {} positions; step-by-step vs whole sequence: max |difference| {diff:.2e}",
        cache.len()
    );
    Ok(())
}
