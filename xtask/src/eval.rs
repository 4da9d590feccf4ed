//! `cargo xtask eval`: a trained text model's loss over its entire validation split.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use qkv_data::Split;
use qkv_trainer::{BatchSource, full_split_loss};

use crate::sample::{load_model, load_run_data};
use qkv_backends::Backend;

/// Options of `cargo xtask eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A qkv run directory trained on text.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Evaluate the training split instead of the validation split.
    #[arg(long)]
    train_split: bool,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Where to compute: flex, ndarray or wgpu.
    #[arg(long, default_value = "flex")]
    backend: Backend,
}

/// Runs `cargo xtask eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = args.backend.check()?;
    let (config, source) = load_run_data(&args.checkpoint, "eval")?;
    let BatchSource::Text(dataset) = source else {
        bail!("eval measures text models; for the recall task, train reports held-out accuracy");
    };
    let (model, _) = load_model(&args.checkpoint, &device)?;
    let split = if args.train_split {
        Split::Train
    } else {
        Split::Val
    };
    let loss = full_split_loss(
        &model,
        &dataset,
        split,
        config.model.block_size,
        args.batch_size,
        &device,
    );
    let tokens = if args.train_split {
        dataset.train.len()
    } else {
        dataset.val.len()
    };
    println!(
        "{} loss over the whole split ({} tokens, consecutive windows of {}): {loss:.4}",
        if args.train_split { "train" } else { "val" },
        tokens,
        config.model.block_size
    );
    Ok(())
}
