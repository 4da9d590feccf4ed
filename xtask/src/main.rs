//! The qkv command line, run as `cargo xtask <command>`.
//!
//! * `train`: train a model (the default: associative recall, offline, about 35 s on 2
//!   cores; `--preset shakespeare-char` for nanoGPT's character-level Shakespeare;
//!   `--task translate` for the encoder–decoder).
//! * `sample`: generate text from a run directory, a Hugging Face GPT-2 directory, or a
//!   GPT-2 on the Hub (`--model gpt2`, downloaded into the Hugging Face cache).
//! * `summarize`: summarise a text file with GPT-2's "TL;DR:" recipe.
//! * `attention`: attention maps (PNG, HTML, JSON) for a prompt, or head ablation.
//! * `lens`, `patch`, `attribute`: the logit lens, activation patching and direct logit
//!   attribution of a GPT.
//! * `eval`: a text model's loss over a whole data split.
//! * `translate`: translate with an encoder–decoder trained by `train --task translate`.
//! * `bench`: the benchmark suite on chosen backends, beside PyTorch if asked.
//! * `compare`: attention against LSTM and GRU baselines on the same tasks.
//! * `spectra`: the singular values and eigenvalues behind each head's Q and K.
//! * `lengths`: recall on sequences longer than training's, per position encoding.
//! * `serve-device`: serve this machine's devices to `train --devices ws://host:port`.
//!
//! Backends are chosen by name through `qkv-backends`, the one crate that names them.

mod attention;
mod bench;
mod bench_gpt2;
mod claims;
mod compare;
mod compare_report;
mod eval;
mod interp;
mod lengths;
mod model;
mod page;
mod sample;
mod serve;
mod spectra;
mod summarize;
mod train;
mod translate;

use anyhow::Result;

/// mimalloc instead of the system allocator, for this binary only (libraries leave the choice
/// to the program that uses them): the training step allocates and frees the same large
/// buffers every iteration, which mimalloc reuses where glibc returns and re-faults them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (include/mimalloc.h); the Rust
/// bindings leave it unnamed.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to hand freed memory back to the operating system. A training step
/// frees and re-allocates the same large buffers (at 6/6/384, batch 64: 100 MB attention
/// matrices per layer); returned to the OS, every one of them comes back as fresh pages that
/// the kernel must fault in and zero, which measured 28% of all CPU time at that size. Kept,
/// that step is 30% faster here (11.2 s -> 7.6 s with everything else in place). The price
/// is peak memory, since freed blocks are reused but never returned: the 6/6/384 benchmark
/// process peaks at 5.08 GB instead of 4.16 GB, the Shakespeare run at 150 MB instead of
/// 143 MB.
///
/// A `MIMALLOC_PURGE_DELAY` in the environment (read by mimalloc itself at start-up) wins:
/// `MIMALLOC_PURGE_DELAY=1000`, mimalloc's default, measures the program without this.
///
/// The one `unsafe` block of the project (xtask's lints deny `unsafe_code`; the libraries
/// forbid it): a call into mimalloc's C API.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: `mi_option_set` stores one integer in mimalloc's option table. It is called
    // first thing in `main`, before this program starts any thread, so nothing reads the
    // table concurrently (the one condition mimalloc documents for it).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Runs `work` on a thread of rayon's global pool rather than on the main thread. Every
/// tensor op parallelises over that pool; called from outside it, each op would hand its work
/// to the pool and put the calling thread to sleep until it is done (a wake-up and a sleep per
/// op, with three threads on two cores). Called from a worker, an op pushes its pieces onto
/// the worker's own queue, does the first itself, and the other worker steals the rest.
fn on_rayon_worker<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let mut result = None;
    rayon::scope(|_| result = Some(work()));
    result.expect("rayon::scope runs its closure before returning")
}

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
    /// Generate text from a trained model, a Hugging Face GPT-2 directory or a GPT-2 on the Hub.
    Sample(sample::SampleArgs),
    /// Summarise a text file (GPT-2's zero-shot "TL;DR:" recipe).
    Summarize(summarize::SummarizeArgs),
    /// Show what each attention head looks at, or ablate heads one at a time.
    Attention(attention::AttentionArgs),
    /// The logit lens: each layer's residual stream read as next-token predictions.
    Lens(interp::LensArgs),
    /// Activation patching: which heads, layers and positions carry a prompt's answer.
    Patch(interp::PatchArgs),
    /// Direct logit attribution: each head's and MLP's share of one token's logit.
    Attribute(interp::AttributeArgs),
    /// The loss of a trained text model over its entire validation (or training) split.
    Eval(eval::EvalArgs),
    /// Translate with a model trained by `train --task translate`.
    Translate(translate::TranslateArgs),
    /// Time the benchmark suite on chosen backends, optionally beside PyTorch.
    Bench(bench::BenchArgs),
    /// Attention against LSTM and GRU: recall over growing distances, gradients per
    /// position, time against sequence length.
    Compare(compare::CompareArgs),
    /// The spectra of each head's Query and Key matrices, trained against random.
    Spectra(spectra::SpectraArgs),
    /// Recall on sequences longer than training's, for each position encoding.
    Lengths(lengths::LengthsArgs),
    /// Serve this machine's devices to `train --devices ws://host:port` elsewhere.
    ServeDevice(serve::ServeArgs),
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    // A misspelt limit is an error here rather than a warning from the first kernel.
    if let Err(error) = qkv_tensor_ops::simd::limit_from_env() {
        eprintln!("error: {error}");
        std::process::exit(2);
    }
    let result: Result<()> = match cli.command {
        // The server computes on threads of its own runtime; this thread only waits.
        Command::ServeDevice(args) => serve::run(args),
        command => on_rayon_worker(move || run(command)),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// Runs every command but `serve-device`.
fn run(command: Command) -> Result<()> {
    match command {
        Command::Train(args) => train::run(*args),
        Command::Sample(args) => sample::run(args),
        Command::Summarize(args) => summarize::run(args),
        Command::Attention(args) => attention::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Lens(args) => interp::lens(args),
        Command::Patch(args) => interp::patch(args),
        Command::Attribute(args) => interp::attribute(args),
        Command::Bench(args) => bench::run(args),
        Command::Translate(args) => translate::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Spectra(args) => spectra::run(args),
        Command::Lengths(args) => lengths::run(args),
        Command::ServeDevice(_) => unreachable!("served without the CPU pool"),
    }
}
