//! The qkv command line: the one place that maps a backend name to a concrete Burn device.
//!
//! `cargo xtask attention-demo [--backend flex|ndarray]` runs one causal multi-head attention
//! layer (random weights, fixed seed) over a short sentence and prints each head's attention
//! probabilities, to show the shape of what the layer computes.

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use qkv_attention::{MhaInput, MultiHeadAttentionConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("attention-demo") => attention_demo(&args[1..]),
        Some(other) => bail!("unknown command {other:?}; available: attention-demo"),
        None => bail!("usage: cargo xtask attention-demo [--backend flex|ndarray]"),
    }
}

/// Maps `--backend` to a device. The only place in the workspace that names a backend.
fn device_for(name: &str) -> Result<Device> {
    match name {
        "flex" => Ok(Device::flex()),
        #[allow(deprecated)]
        "ndarray" => Ok(Device::ndarray()),
        other => bail!("unknown backend {other:?}; choose flex or ndarray"),
    }
}

fn attention_demo(args: &[String]) -> Result<()> {
    let backend = match args {
        [] => "flex",
        [flag, value] if flag == "--backend" => value.as_str(),
        _ => bail!("usage: cargo xtask attention-demo [--backend flex|ndarray]"),
    };
    let device = device_for(backend)?;
    let words = ["the", "cat", "sat", "on", "the", "mat"];
    let (d_model, n_heads) = (16, 2);
    device.seed(7);
    let mha = MultiHeadAttentionConfig::new(d_model, n_heads).try_init(&device)?;
    // One random embedding per distinct word, so the two "the"s share a vector.
    let table = Tensor::<2>::random(
        [5, d_model],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let ids: Vec<i64> = words
        .iter()
        .map(|w| {
            ["the", "cat", "sat", "on", "mat"]
                .iter()
                .position(|v| v == w)
                .unwrap() as i64
        })
        .collect();
    let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [words.len()]), &device);
    let x = table.select(0, ids).unsqueeze::<3>(); // [1, seq, d_model]
    let out = mha
        .try_forward(MhaInput::self_attn(x).causal().return_probs())
        .context("attention forward")?;
    let probs = out.probs.context("probabilities were asked for")?;
    let seq = words.len();
    let p: Vec<f32> = probs
        .into_data()
        .try_into_vec_as()
        .context("reading probabilities")?;
    println!("causal self-attention on {backend}, untrained weights (seed 7): who looks at whom\n");
    for h in 0..n_heads {
        println!("head {h}     {}", words.map(|w| format!("{w:>6}")).join(""));
        for i in 0..seq {
            let row: String = (0..seq)
                .map(|j| format!("{:>6.2}", p[(h * seq + i) * seq + j]))
                .collect();
            println!("{:>8}  {row}", words[i]);
        }
        println!();
    }
    Ok(())
}
