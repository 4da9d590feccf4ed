//! The qkv command line, run as `cargo xtask <command>`.
//!
//! * `train`: train a model (the default: associative recall, offline, a few minutes on 2
//!   cores; `--preset shakespeare-char` for nanoGPT's character-level Shakespeare).
//! * `sample`: generate text from a run directory or a Hugging Face GPT-2 directory.
//! * `attention`: attention maps (PNG, HTML, JSON) for a prompt, or head ablation.
//! * `eval`: a text model's loss over a whole data split.
//! * `translate`: translate with an encoder–decoder trained by `train --task translate`.
//! * `bench`: the benchmark suite on chosen backends, beside PyTorch if asked.
//!
//! Backends are chosen by name through `qkv-backends`, the one crate that names them.

mod attention;
mod bench;
mod eval;
mod sample;
mod train;
mod translate;

use anyhow::Result;

/// mimalloc instead of the system allocator, for this binary only (libraries leave the choice
/// to the program that uses them): the training step allocates and frees the same large
/// buffers every iteration, which mimalloc reuses where glibc returns and re-faults them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};

/// qkv: the transformer from first principles, on Burn.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model (default: the built-in associative-recall task).
    Train(Box<train::TrainArgs>),
    /// Generate tokens from a trained model or a Hugging Face GPT-2 directory.
    Sample(sample::SampleArgs),
    /// Show what each attention head looks at, or ablate heads one at a time.
    Attention(attention::AttentionArgs),
    /// The loss of a trained text model over its entire validation (or training) split.
    Eval(eval::EvalArgs),
    /// Translate with a model trained by `train --task translate`.
    Translate(translate::TranslateArgs),
    /// Time the benchmark suite on chosen backends, optionally beside PyTorch.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Sample(args) => sample::run(args),
        Command::Attention(args) => attention::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Translate(args) => translate::run(args),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
