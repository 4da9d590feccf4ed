//! `cargo xtask train`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::Args;
use qkv_trainer::{DataConfig, Event, TokenizerChoice, TrainConfig, Trainer, metrics};
use qkv_transformer::{GenerationConfig, Sampling};

use qkv_backends::Backend;

/// `--tokenizer` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TokenizerFlag {
    /// One token per character.
    Char,
    /// Byte-level BPE trained on the corpus.
    Bpe,
}

/// Options of `cargo xtask train`. Every config value can be set by a flag; flags override
/// the preset (or the `--config` file).
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// What to train: `lm` (a GPT language model: the default) or `translate` (the
    /// encoder–decoder on a built-in translation task).
    #[arg(long, default_value = "lm")]
    task: String,
    /// With `--task translate`: `numbers` (number words to digits, the default) or `dates`
    /// (English dates to ISO dates).
    #[arg(long)]
    translation: Option<String>,
    /// With `--task translate`: label smoothing of the loss.
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// With `--task translate`: stop (saving first) after this many seconds.
    #[arg(long)]
    time_limit: Option<f64>,
    /// Named recipe: `recall` (default, offline) or `shakespeare-char`.
    #[arg(long, default_value = "recall")]
    preset: String,
    /// A JSON config file (as written to `config.json` by a run) instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to compute: flex, ndarray or wgpu.
    #[arg(long, default_value = "flex")]
    backend: Backend,
    /// The run directory (default `runs/<preset>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in `--out` exactly where it stopped.
    #[arg(long)]
    resume: bool,
    /// A local text file: for `shakespeare-char` a copy of Tiny Shakespeare, otherwise any
    /// UTF-8 text to train on at the character level.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Tokenizer for text data: `char`, or `bpe` (byte-level BPE trained on the corpus).
    #[arg(long, value_enum)]
    tokenizer: Option<TokenizerFlag>,
    /// Vocabulary size of `--tokenizer bpe`.
    #[arg(long, default_value_t = 512)]
    bpe_vocab: usize,
    /// Where downloaded datasets are cached.
    #[arg(long, default_value = "data")]
    cache_dir: PathBuf,
    /// Updates to run.
    #[arg(long)]
    max_iters: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per update.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Final learning rate.
    #[arg(long)]
    min_lr: Option<f64>,
    /// Warm-up steps.
    #[arg(long)]
    warmup_iters: Option<usize>,
    /// Step where the cosine ends.
    #[arg(long)]
    lr_decay_iters: Option<usize>,
    /// AdamW weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip (0 = off).
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Evaluate and checkpoint every N steps.
    #[arg(long)]
    eval_interval: Option<usize>,
    /// Batches per evaluation.
    #[arg(long)]
    eval_iters: Option<usize>,
    /// Transformer blocks.
    #[arg(long)]
    n_layers: Option<usize>,
    /// Heads per block.
    #[arg(long)]
    n_heads: Option<usize>,
    /// Model width.
    #[arg(long)]
    d_model: Option<usize>,
    /// Context length.
    #[arg(long)]
    block_size: Option<usize>,
    /// Dropout.
    #[arg(long)]
    dropout: Option<f64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
}

/// `cargo xtask train --task translate`: rejects the flags that only language models take.
fn run_translation(args: TrainArgs) -> Result<()> {
    for (given, flag) in [
        (args.preset != "recall", "--preset"),
        (args.config.is_some(), "--config"),
        (args.resume, "--resume"),
        (args.data.is_some(), "--data"),
        (args.tokenizer.is_some(), "--tokenizer"),
        (args.grad_accum.is_some(), "--grad-accum"),
        (args.lr_decay_iters.is_some(), "--lr-decay-iters"),
        (args.eval_iters.is_some(), "--eval-iters"),
        (args.block_size.is_some(), "--block-size"),
    ] {
        if given {
            anyhow::bail!(
                "{flag} does not apply to --task translate (its data, vocabulary and lengths come from the task)"
            );
        }
    }
    let overrides = crate::translate::TranslateOverrides {
        task: args.translation,
        max_iters: args.max_iters,
        batch_size: args.batch_size,
        lr: args.lr,
        min_lr: args.min_lr,
        warmup_iters: args.warmup_iters,
        weight_decay: args.weight_decay,
        grad_clip: args.grad_clip,
        eval_interval: args.eval_interval,
        n_layers: args.n_layers,
        n_heads: args.n_heads,
        d_model: args.d_model,
        dropout: args.dropout,
        seed: args.seed,
        label_smoothing: args.label_smoothing,
        time_limit_s: args.time_limit,
    };
    crate::translate::train(overrides, args.backend, args.out)
}

impl TrainArgs {
    fn resolve(&self) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                TrainConfig::from_json(&text)?
            }
            None => TrainConfig::preset(&self.preset)?,
        };
        let choice = match self.tokenizer {
            Some(TokenizerFlag::Char) => Some(TokenizerChoice::Char),
            Some(TokenizerFlag::Bpe) => Some(TokenizerChoice::Bpe {
                vocab_size: self.bpe_vocab,
            }),
            None => None,
        };
        c.data = match (c.data, &self.data) {
            (DataConfig::Shakespeare { path, tokenizer }, data) => DataConfig::Shakespeare {
                path: data.clone().or(path),
                tokenizer: choice.unwrap_or(tokenizer),
            },
            (DataConfig::TextFile { path, tokenizer }, data) => DataConfig::TextFile {
                path: data.clone().unwrap_or(path),
                tokenizer: choice.unwrap_or(tokenizer),
            },
            (recall @ DataConfig::Recall { .. }, None) => {
                if choice.is_some() {
                    anyhow::bail!(
                        "--tokenizer applies to text data; the recall task has its own vocabulary"
                    );
                }
                recall
            }
            (DataConfig::Recall { .. }, Some(path)) => DataConfig::TextFile {
                path: path.clone(),
                tokenizer: choice.unwrap_or_default(),
            },
        };
        macro_rules! set {
            ($($flag:ident => $($field:ident).+),* $(,)?) => {
                $(if let Some(v) = self.$flag { c.$($field).+ = v; })*
            };
        }
        set!(max_iters => max_iters, batch_size => batch_size, grad_accum => grad_accum, lr => lr,
             min_lr => min_lr, warmup_iters => warmup_iters, lr_decay_iters => lr_decay_iters,
             weight_decay => weight_decay, grad_clip => grad_clip, eval_interval => eval_interval,
             eval_iters => eval_iters, n_layers => model.n_layers, n_heads => model.n_heads,
             d_model => model.d_model, block_size => model.block_size, dropout => model.dropout,
             seed => seed);
        if self.max_iters.is_some() && self.lr_decay_iters.is_none() {
            c.lr_decay_iters = c.max_iters;
        }
        Ok(c)
    }
}

/// Runs `cargo xtask train`.
pub fn run(args: TrainArgs) -> Result<()> {
    match args.task.as_str() {
        "lm" => {}
        "translate" => return run_translation(args),
        other => anyhow::bail!("unknown --task {other:?}: choose lm or translate"),
    }
    for (given, flag) in [
        (args.translation.is_some(), "--translation"),
        (args.label_smoothing.is_some(), "--label-smoothing"),
        (args.time_limit.is_some(), "--time-limit"),
    ] {
        if given {
            anyhow::bail!("{flag} applies to --task translate only");
        }
    }
    let config = args.resolve()?;
    let name = if args.config.is_some() {
        "custom"
    } else {
        args.preset.as_str()
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(name));
    let device = args.backend.check()?.autodiff();
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let mut trainer = Trainer::new(config.clone(), &out, &args.cache_dir, &device, args.resume)?;
    let params = trainer.model.parameter_count();
    println!(
        "training {name} on {:?}: {} layers, {} heads, {} wide, block {}, {:.2}M parameters, {} steps, batch {} -> {}",
        args.backend,
        config.model.n_layers,
        config.model.n_heads,
        config.model.d_model,
        config.model.block_size,
        params as f64 / 1e6,
        config.max_iters,
        config.batch_size * config.grad_accum,
        out.display()
    );
    if trainer.step > 0 {
        println!("resuming at step {}", trainer.step);
    }
    let tty = std::io::stderr().is_terminal();
    let max = config.max_iters;
    let summary = trainer.run(&interrupt, None, |event| match event {
        Event::Step(r) if tty => {
            let filled = r.step * 30 / max.max(1);
            eprint!(
                "\r[{}{}] {}/{} loss {:.4} lr {:.2e} {:.0} tok/s {:.1} ms/it   ",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                r.step,
                max,
                r.loss,
                r.lr,
                r.tokens_per_s,
                r.ms_per_iter
            );
        }
        Event::Step(_) => {}
        Event::Eval { step, train_loss, val_loss, val_accuracy } => {
            if tty {
                eprintln!();
            }
            println!(
                "step {step:>5}: train loss {train_loss:.4}, val loss {val_loss:.4}, val accuracy {:.2}%",
                val_accuracy * 100.0
            );
        }
        Event::Checkpoint { .. } => {}
        Event::Interrupted { step } => println!("\ninterrupted: checkpoint saved at step {step}; continue with --resume"),
    })?;
    let records = metrics::read(&out.join("metrics.jsonl"))?;
    qkv_trainer::plot::loss_curve(&records, &format!("qkv {name}"), &out.join("loss.png"))?;
    qkv_trainer::plot::attention_curves(&records, &out.join("attention_stats.png"))?;
    println!(
        "{} steps in {:.1} s: {:.1} ms/iteration, {:.0} tokens/s",
        summary.step, summary.wall_s, summary.ms_per_iter, summary.tokens_per_s
    );
    if let Some((train_loss, val_loss, accuracy)) = summary.final_eval {
        println!("final: train loss {train_loss:.4}, val loss {val_loss:.4}");
        if config.data.recall().is_some() {
            println!("held-out accuracy: {:.2}% of answers", accuracy * 100.0);
        }
    }
    if summary.interrupted {
        return Ok(());
    }
    if config.data.recall().is_none() {
        let tokenizer = trainer.source.tokenizer();
        let model = burn::module::Module::valid(&trainer.model);
        let prompt = tokenizer.encode("\n").unwrap_or_else(|_| vec![0]);
        let sampling = Sampling::Random {
            temperature: 0.8,
            top_k: Some(200),
            top_p: None,
            seed: config.seed,
        };
        let generation = GenerationConfig {
            sampling,
            ..GenerationConfig::greedy(300)
        };
        let out_tokens = model.generate(&[prompt], &generation, |_, _| {})?;
        let text = tokenizer.decode(&out_tokens.tokens[0])?;
        std::fs::write(out.join("sample.txt"), &text).context("writing sample.txt")?;
        println!("\nsample (300 characters, temperature 0.8):\n{text}");
    }
    Ok(())
}
