//! `cargo xtask lengths`: does attention handle inputs longer than it was trained on? One
//! GPT per position encoding (learned, sinusoidal, rotary) is trained on recall sequences of
//! one length and scored on longer ones (more pairs, so the sequence grows and the answers
//! sit at positions never seen in training). Every model is built with a context long enough
//! for the longest evaluation, so a learned encoding has untrained vectors there rather than
//! none.
//!
//! Writes `lengths.json` (every figure, with accuracy by distance), `lengths.md` and
//! `lengths.png` to `--out`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::{Args, ValueEnum};
use qkv_backends::{Backend, MachineInfo};
use qkv_data::RecallTask;
use qkv_plot::{LinePlot, Rgb, Series};
use qkv_trainer::{DataConfig, LanguageModel, Start, TrainConfig, Trainer};
use qkv_transformer::PositionalEncoding;
use serde_json::json;

use crate::claims::{Model, accuracy_by_distance, check_counts, check_lr};

/// A position encoding to train with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    /// A trained vector per position.
    Learned,
    /// Fixed sines and cosines.
    Sinusoidal,
    /// Rotary embedding of queries and keys (base 10000).
    Rotary,
}

impl Encoding {
    fn positional(self) -> PositionalEncoding {
        match self {
            Encoding::Learned => PositionalEncoding::Learned,
            Encoding::Sinusoidal => PositionalEncoding::Sinusoidal,
            Encoding::Rotary => PositionalEncoding::Rotary { base: 10_000.0 },
        }
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Learned => "learned",
            Encoding::Sinusoidal => "sinusoidal",
            Encoding::Rotary => "rotary",
        }
    }

    fn color(self) -> Rgb {
        match self {
            Encoding::Learned => Rgb(31, 119, 180),
            Encoding::Sinusoidal => Rgb(214, 39, 40),
            Encoding::Rotary => Rgb(44, 160, 44),
        }
    }
}

/// Options of `cargo xtask lengths`.
#[derive(Debug, Args)]
pub struct LengthsArgs {
    /// Recall pairs per training sequence (16 keys, 10 values: at most 16).
    #[arg(long, default_value_t = 6)]
    train_pairs: usize,
    /// Recall pairs per evaluation sequence, each a length of its own (at most 16).
    #[arg(long, value_delimiter = ',', default_value = "4,6,8,10,12,16")]
    eval_pairs: Vec<usize>,
    /// The position encodings to compare.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "learned,sinusoidal,rotary"
    )]
    encodings: Vec<Encoding>,
    /// Training steps per model.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Layers.
    #[arg(long, default_value_t = 2)]
    n_layers: usize,
    /// Heads.
    #[arg(long, default_value_t = 4)]
    n_heads: usize,
    /// Width.
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    /// Held-out examples scored per length.
    #[arg(long, default_value_t = 512)]
    eval_examples: usize,
    /// Seed of initialisation, batches and evaluation.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Backend: flex, ndarray, wgpu, vulkan, cuda.
    #[arg(long, default_value = "flex")]
    backend: Backend,
    /// Also score a translation run (`train --task translate`) by source length: greedy
    /// exact match of held-out sentences, grouped by their number of source tokens.
    #[arg(long)]
    translate: Option<PathBuf>,
    /// Score only the `--translate` run; train no recall models.
    #[arg(long, requires = "translate")]
    translation_only: bool,
    /// Held-out sentences translated for `--translate`.
    #[arg(long, default_value_t = 2000)]
    translate_examples: usize,
    /// Output directory.
    #[arg(long, default_value = "runs/lengths")]
    out: PathBuf,
}

/// Greedy exact match of `examples` held-out sentences of a translation run, as
/// `(source tokens, correct, total)` for each source length.
fn translation_by_length(
    run_dir: &std::path::Path,
    examples: usize,
    seed: u64,
    device: &Device,
) -> Result<Vec<(usize, usize, usize)>> {
    let translator = qkv_trainer::translate::load_translator(run_dir, device)?;
    let mut rng = qkv_transformer::SplitMix64::new(seed ^ 0x7a45);
    let pairs: Vec<(String, String)> = (0..examples)
        .map(|_| {
            translator
                .task
                .example(qkv_data::Split::Val, &mut |n| rng.below(n))
        })
        .collect();
    let mut tally = std::collections::BTreeMap::<usize, (usize, usize)>::new();
    for chunk in pairs.chunks(250) {
        let sources: Vec<&str> = chunk.iter().map(|(s, _)| s.as_str()).collect();
        let out = translator.translate(&sources, 1)?;
        for ((source, target), (got, translation)) in chunk.iter().zip(out) {
            let n = qkv_data::translate::TranslationVocab::split_source(source).len();
            let entry = tally.entry(n).or_default();
            entry.0 += (translation.finished && got == *target) as usize;
            entry.1 += 1;
        }
    }
    Ok(tally.into_iter().map(|(n, (c, t))| (n, c, t)).collect())
}

fn task(pairs: usize) -> RecallTask {
    RecallTask {
        n_pairs: pairs,
        n_keys: 16,
        n_values: 10,
        gap: 0,
    }
}

/// Runs `cargo xtask lengths`.
pub fn run(args: LengthsArgs) -> Result<()> {
    let pairs_ok = |p: usize| (1..=16).contains(&p);
    if !pairs_ok(args.train_pairs)
        || args.eval_pairs.is_empty()
        || !args.eval_pairs.iter().all(|&p| pairs_ok(p))
    {
        bail!("--train-pairs and --eval-pairs take pair counts in 1..=16 (16 keys)");
    }
    if args.encodings.is_empty() {
        bail!("--encodings needs at least one encoding");
    }
    check_counts(&[
        (args.steps, "--steps"),
        (args.batch_size, "--batch-size"),
        (args.eval_examples, "--eval-examples"),
        (args.translate_examples, "--translate-examples"),
    ])?;
    check_lr(args.lr)?;
    let device = args.backend.check()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let longest = args
        .eval_pairs
        .iter()
        .chain([&args.train_pairs])
        .map(|&p| task(p).block_size())
        .max()
        .expect("non-empty");
    println!(
        "recall: trained on {} pairs ({} tokens), scored on {:?} pairs; {} steps, batch {}",
        args.train_pairs,
        task(args.train_pairs).block_size(),
        args.eval_pairs,
        args.steps,
        args.batch_size
    );
    let mut rows = Vec::new();
    let encodings: &[Encoding] = if args.translation_only {
        &[]
    } else {
        &args.encodings
    };
    for &encoding in encodings {
        let train_task = task(args.train_pairs);
        let mut config = TrainConfig::recall();
        config.model.n_layers = args.n_layers;
        config.model.n_heads = args.n_heads;
        config.model.d_model = args.d_model;
        config.model.block_size = longest;
        config.model.positional = encoding.positional();
        config.data = DataConfig::Recall {
            n_pairs: train_task.n_pairs,
            n_keys: train_task.n_keys,
            n_values: train_task.n_values,
            gap: 0,
        };
        config.batch_size = args.batch_size;
        config.max_iters = args.steps;
        config.lr_decay_iters = args.steps;
        config.warmup_iters = (args.steps / 40).max(1);
        config.eval_interval = args.steps;
        config.lr = args.lr;
        config.min_lr = args.lr / 10.0;
        config.seed = args.seed;
        let lm = LanguageModel::open(config, &args.out.join("data"))?;
        let run_dir = args.out.join(encoding.name());
        let mut trainer = Trainer::new(lm, &run_dir, &device.clone().autodiff(), Start::Overwrite)?;
        let summary = trainer.run(&AtomicBool::new(false), None, |_| {})?;
        let model = Model::Gpt(trainer.model.valid());
        let mut scores = Vec::new();
        for &pairs in &args.eval_pairs {
            let t = task(pairs);
            let (accuracy, by_distance) =
                accuracy_by_distance(&model, &t, args.eval_examples, args.seed, &device);
            scores.push(json!({
                "pairs": pairs,
                "sequence": t.block_size(),
                "accuracy": accuracy,
                "by_distance": by_distance.iter().map(|&(d, c, n)| json!({"distance": d, "correct": c, "total": n})).collect::<Vec<_>>(),
            }));
        }
        println!(
            "  {:>10}: {} ({:.0} s)",
            encoding.name(),
            scores
                .iter()
                .map(|s| format!(
                    "{} tokens {:.1}%",
                    s["sequence"],
                    s["accuracy"].as_f64().unwrap_or(0.0) * 100.0
                ))
                .collect::<Vec<_>>()
                .join(", "),
            summary.wall_s
        );
        rows.push(json!({"encoding": encoding.name(), "wall_s": summary.wall_s, "scores": scores}));
    }
    let translation = match &args.translate {
        Some(dir) => {
            let rows = translation_by_length(dir, args.translate_examples, args.seed, &device)?;
            println!(
                "translation exact match by source tokens: {}",
                rows.iter()
                    .map(|&(n, c, t)| format!("{n}: {:.1}% of {t}", c as f64 / t as f64 * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            rows.iter()
                .map(|&(n, c, t)| json!({"source_tokens": n, "correct": c, "total": t}))
                .collect()
        }
        None => Vec::new(),
    };
    let machine = MachineInfo::detect();
    let report = json!({
        "machine": {"cpu": machine.cpu, "simd": machine.simd, "threads": machine.threads},
        "backend": args.backend.to_string(),
        "settings": {
            "train_pairs": args.train_pairs, "train_sequence": task(args.train_pairs).block_size(),
            "eval_pairs": args.eval_pairs, "steps": args.steps, "batch_size": args.batch_size,
            "lr": args.lr, "n_layers": args.n_layers, "n_heads": args.n_heads,
            "d_model": args.d_model, "eval_examples": args.eval_examples, "seed": args.seed,
        },
        "encodings": rows,
        "translation": {"run": args.translate.as_ref().map(|p| p.display().to_string()), "by_source_tokens": translation},
    });
    let mut md = format!(
        "Trained on {} tokens ({} pairs); held-out recall accuracy by evaluation length. {} ({}), {} threads.\n\n| encoding |",
        task(args.train_pairs).block_size(),
        args.train_pairs,
        machine.cpu,
        machine.simd,
        machine.threads
    );
    for &p in &args.eval_pairs {
        md += &format!(" {} tokens |", task(p).block_size());
    }
    md += "\n|---|";
    md += &"---:|".repeat(args.eval_pairs.len());
    md += "\n";
    for row in report["encodings"].as_array().into_iter().flatten() {
        md += &format!("| {} |", row["encoding"].as_str().unwrap_or("?"));
        for s in row["scores"].as_array().into_iter().flatten() {
            md += &format!(" {:.1}% |", s["accuracy"].as_f64().unwrap_or(0.0) * 100.0);
        }
        md += "\n";
    }
    if let Some(rows) = report["translation"]["by_source_tokens"]
        .as_array()
        .filter(|r| !r.is_empty())
    {
        md += "\nTranslation, greedy exact match by source tokens:\n\n| source tokens | exact match | sentences |\n|---:|---:|---:|\n";
        for r in rows {
            let (c, t) = (
                r["correct"].as_f64().unwrap_or(0.0),
                r["total"].as_f64().unwrap_or(1.0),
            );
            md += &format!(
                "| {} | {:.1}% | {} |\n",
                r["source_tokens"],
                c / t * 100.0,
                r["total"]
            );
        }
    }
    let plot = LinePlot {
        title: format!(
            "recall accuracy vs length, trained on {} tokens",
            task(args.train_pairs).block_size()
        ),
        x_label: "evaluation sequence length (tokens)".into(),
        y_label: "held-out accuracy".into(),
        series: encodings
            .iter()
            .zip(report["encodings"].as_array().into_iter().flatten())
            .map(|(e, row)| Series {
                name: e.name().into(),
                color: e.color(),
                points: row["scores"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        (
                            s["sequence"].as_f64().unwrap_or(0.0),
                            s["accuracy"].as_f64().unwrap_or(0.0),
                        )
                    })
                    .collect(),
            })
            .collect(),
    };
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = args.out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    write(
        "lengths.json",
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    write("lengths.md", md.as_bytes())?;
    write("lengths.png", &plot.render().png_bytes())?;
    print!("{md}");
    println!(
        "wrote lengths.json, lengths.md and lengths.png to {}",
        args.out.display()
    );
    Ok(())
}
