//! `cargo xtask compare`: attention against recurrent networks on the same tasks, by the same
//! trainer, optimiser and data. It tests the claim that transformers replaced RNNs because
//! RNNs are hard to parallelise and hard to train on long inputs:
//!
//! 1. **Recall over growing distances.** The recall task with a growing gap of filler
//!    tokens between the pairs and the queries (so the pair holding an answer lies further
//!    back while the lookup stays as hard): a GPT, an LSTM and a GRU trained alike, and their
//!    held-out accuracy, overall and by the distance between the pair and its query.
//! 2. **Vanishing gradients.** On the longest gap's sequences, the norm of the loss's
//!    gradient reaching each layer's input at each position, at initialisation and after
//!    training (see `qkv_transformer::interp::gpt_position_gradients`).
//! 3. **Parallelism.** Milliseconds per forward + backward pass against sequence length.
//! 4. Optionally (`--shakespeare-steps N`), each model trained on Tiny Shakespeare for the
//!    same number of steps: validation loss and wall time.
//!
//! Everything goes to `--out`: `compare.json` (every figure), `compare.md` (the tables) and
//! four PNG plots.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::claims::{Model, accuracy_by_distance, check_counts, check_lr};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::{Args, ValueEnum};
use qkv_backends::{Backend, MachineInfo};
use qkv_data::{RecallTask, Split};
use qkv_plot::Rgb;
use qkv_trainer::{
    DataConfig, LanguageModel, RecurrentLanguageModel, Start, TrainConfig, Trainer, tensors,
};
use qkv_transformer::SplitMix64;
use qkv_transformer::recurrent::RecurrentCell;
use serde_json::json;

/// The models compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelKind {
    /// The transformer (our GPT).
    Gpt,
    /// A stacked LSTM.
    Lstm,
    /// A stacked GRU.
    Gru,
}

impl ModelKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ModelKind::Gpt => "gpt",
            ModelKind::Lstm => "lstm",
            ModelKind::Gru => "gru",
        }
    }

    pub(crate) fn color(self) -> Rgb {
        match self {
            ModelKind::Gpt => Rgb(31, 119, 180),
            ModelKind::Lstm => Rgb(214, 39, 40),
            ModelKind::Gru => Rgb(44, 160, 44),
        }
    }

    fn cell(self) -> Option<RecurrentCell> {
        match self {
            ModelKind::Gpt => None,
            ModelKind::Lstm => Some(RecurrentCell::Lstm),
            ModelKind::Gru => Some(RecurrentCell::Gru),
        }
    }
}

/// Options of `cargo xtask compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Filler tokens between the recall pairs and their queries, each gap a task of its own.
    #[arg(long, value_delimiter = ',', default_value = "0,8,16,32,64")]
    gaps: Vec<usize>,
    /// Key-value pairs per recall sequence (16 keys, 10 values).
    #[arg(long, default_value_t = 6)]
    pairs: usize,
    /// The models.
    #[arg(long, value_delimiter = ',', default_value = "gpt,lstm,gru")]
    models: Vec<ModelKind>,
    /// Training steps per model and task (the recall preset's 2000: the GPT's lookup forms
    /// abruptly, around step 700 at gap 0).
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Layers of every model.
    #[arg(long, default_value_t = 2)]
    n_layers: usize,
    /// Width of every model.
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    /// Heads of the GPT.
    #[arg(long, default_value_t = 4)]
    n_heads: usize,
    /// Peak learning rate (warm-up, then cosine to a tenth).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Held-out recall examples scored per task.
    #[arg(long, default_value_t = 512)]
    eval_examples: usize,
    /// Sequence lengths of the timing experiment.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128,256,512")]
    seq_lens: Vec<usize>,
    /// Sequences per timed batch.
    #[arg(long, default_value_t = 8)]
    timing_batch: usize,
    /// Train each model this many steps on Tiny Shakespeare too (0: skip).
    #[arg(long, default_value_t = 0)]
    shakespeare_steps: usize,
    /// A local copy of Tiny Shakespeare (else `$QKV_DATA_DIR`, the cache, or a download).
    #[arg(long)]
    shakespeare: Option<PathBuf>,
    /// Where downloaded datasets are cached.
    #[arg(long, default_value = "data")]
    cache_dir: PathBuf,
    /// Seed of initialisation, batches and evaluation.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Backend: flex, ndarray, wgpu, vulkan, cuda.
    #[arg(long, default_value = "flex")]
    backend: Backend,
    /// Output directory.
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
}

impl CompareArgs {
    fn check(&self) -> Result<()> {
        if self.gaps.is_empty() || self.models.is_empty() {
            bail!("--gaps and --models each need at least one value");
        }
        if let Some(&g) = self.gaps.iter().find(|&&g| g > qkv_data::recall::MAX_GAP) {
            bail!(
                "--gaps takes gaps of at most {}, got {g}",
                qkv_data::recall::MAX_GAP
            );
        }
        if self.pairs == 0 || self.pairs > 16 {
            bail!("--pairs takes a count in 1..=16, got {}", self.pairs);
        }
        if let Some(&l) = self.seq_lens.iter().find(|&&l| l == 0 || l > 1 << 14) {
            bail!("--seq-lens takes lengths in 1..=16384, got {l}");
        }
        check_counts(&[
            (self.steps, "--steps"),
            (self.batch_size, "--batch-size"),
            (self.eval_examples, "--eval-examples"),
            (self.timing_batch, "--timing-batch"),
        ])?;
        check_lr(self.lr)
    }

    /// The training config of every model on recall with a gap of `gap` fillers.
    fn recall_config(&self, gap: usize) -> TrainConfig {
        let task = RecallTask {
            n_pairs: self.pairs,
            n_keys: 16,
            n_values: 10,
            gap,
        };
        let mut config = TrainConfig::recall();
        config.model.n_layers = self.n_layers;
        config.model.n_heads = self.n_heads;
        config.model.d_model = self.d_model;
        config.model.block_size = task.block_size();
        config.data = DataConfig::Recall {
            n_pairs: task.n_pairs,
            n_keys: task.n_keys,
            n_values: task.n_values,
            gap: task.gap,
        };
        config.batch_size = self.batch_size;
        config.lr = self.lr;
        config.min_lr = self.lr / 10.0;
        config.eval_iters = 4;
        schedule(&mut config, self.steps, self.seed);
        config
    }
}

/// `steps` updates with 5% warm-up, a cosine over all of them, and one evaluation at the end.
fn schedule(config: &mut TrainConfig, steps: usize, seed: u64) {
    config.max_iters = steps;
    config.warmup_iters = (steps / 20).max(1);
    config.lr_decay_iters = steps;
    config.eval_interval = steps;
    config.seed = seed;
}

/// What training one model produced.
struct Trained {
    /// The trained model on the autodiff device.
    model: Model,
    /// The trainer's freshly initialised model, kept before training, on the autodiff device.
    init: Model,
    wall_s: f64,
    ms_per_step: f64,
    val_loss: f64,
}

fn train(kind: ModelKind, config: TrainConfig, args: &CompareArgs, run: &Path) -> Result<Trained> {
    let device = args.backend.check()?.autodiff();
    let stop = AtomicBool::new(false);
    let done = |s: qkv_trainer::RunSummary| -> Result<(f64, f64, f64)> {
        let eval = s.final_eval.context("the run evaluated at its end")?;
        Ok((s.wall_s, s.ms_per_iter, eval.val_loss))
    };
    Ok(match kind.cell() {
        None => {
            let task = LanguageModel::open(config, &args.cache_dir)?;
            let mut trainer = Trainer::new(task, run, &device, Start::Overwrite)?;
            let init = Model::Gpt(trainer.model.clone());
            let (wall_s, ms_per_step, val_loss) = done(trainer.run(&stop, None, |_| {})?)?;
            Trained {
                model: Model::Gpt(trainer.model),
                init,
                wall_s,
                ms_per_step,
                val_loss,
            }
        }
        Some(cell) => {
            let task = RecurrentLanguageModel::open(config, cell, &args.cache_dir)?;
            let mut trainer = Trainer::new(task, run, &device, Start::Overwrite)?;
            let init = Model::Rnn(trainer.model.clone());
            let (wall_s, ms_per_step, val_loss) = done(trainer.run(&stop, None, |_| {})?)?;
            Trained {
                model: Model::Rnn(trainer.model),
                init,
                wall_s,
                ms_per_step,
                val_loss,
            }
        }
    })
}

/// Median milliseconds of one forward + backward pass of a fresh `kind` model on random
/// tokens, for each sequence length.
fn step_times(kind: ModelKind, args: &CompareArgs) -> Result<Vec<(usize, f64)>> {
    let device = args.backend.check()?.autodiff();
    let vocab = 65;
    let mut times = Vec::new();
    for &seq in &args.seq_lens {
        let mut config = TrainConfig::shakespeare_char();
        config.model.n_layers = args.n_layers;
        config.model.n_heads = args.n_heads;
        config.model.d_model = args.d_model;
        config.model.block_size = seq;
        let model = match kind.cell() {
            None => Model::Gpt(config.model.gpt(vocab).try_init(&device)?),
            Some(cell) => Model::Rnn(
                qkv_transformer::recurrent::RecurrentConfig {
                    vocab_size: vocab,
                    d_model: args.d_model,
                    n_layers: args.n_layers,
                    cell,
                }
                .try_init(&device)?,
            ),
        };
        let mut rng = SplitMix64::new(args.seed);
        let ids: Vec<i64> = (0..args.timing_batch * seq)
            .map(|_| rng.below(vocab) as i64)
            .collect();
        let x =
            Tensor::<2, Int>::from_data(TensorData::new(ids, [args.timing_batch, seq]), &device);
        let plan = qkv_benches::Plan::new(1, 3, Duration::from_secs(2));
        let stats = qkv_benches::measure(plan, || {
            let loss = model.forward(x.clone()).mean();
            let grads = loss.backward();
            drop(grads);
        });
        times.push((seq, stats.median_ms));
    }
    Ok(times)
}

/// Runs `cargo xtask compare`.
pub fn run(args: CompareArgs) -> Result<()> {
    args.check()?;
    let started = Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let machine = MachineInfo::detect();
    let device = args.backend.check()?;
    let longest = *args.gaps.iter().max().expect("checked non-empty");
    let mut recall_rows = Vec::new();
    let mut gradients = json!({});
    println!(
        "recall, {} pairs: {} steps, batch {}, {} layers, {} wide, models {:?}",
        args.pairs,
        args.steps,
        args.batch_size,
        args.n_layers,
        args.d_model,
        args.models.iter().map(|m| m.name()).collect::<Vec<_>>()
    );
    for &gap in &args.gaps {
        let config = args.recall_config(gap);
        let task = config.data.recall().expect("a recall config");
        for &kind in &args.models {
            let run_dir = args.out.join(format!("recall-gap-{gap}")).join(kind.name());
            let trained = train(kind, config.clone(), &args, &run_dir)?;
            let valid = match &trained.model {
                Model::Gpt(m) => Model::Gpt(m.valid()),
                Model::Rnn(m) => Model::Rnn(m.valid()),
            };
            let (accuracy, by_distance) =
                accuracy_by_distance(&valid, &task, args.eval_examples, args.seed, &device);
            println!(
                "  gap {gap:>4} {:>4}: held-out accuracy {:>6.2}%, val loss {:.4}, {:.1} ms/step, {:.1} s",
                kind.name(),
                accuracy * 100.0,
                trained.val_loss,
                trained.ms_per_step,
                trained.wall_s
            );
            recall_rows.push(json!({
                "gap": gap,
                "sequence": task.block_size(),
                "model": kind.name(),
                "accuracy": accuracy,
                "val_loss": trained.val_loss,
                "ms_per_step": trained.ms_per_step,
                "wall_s": trained.wall_s,
                "by_distance": by_distance.iter().map(|&(d, c, t)| json!({"distance": d, "correct": c, "total": t})).collect::<Vec<_>>(),
            }));
            if gap == longest {
                let ad = device.clone().autodiff();
                let mut rng = SplitMix64::new(args.seed ^ 0x9ad);
                let batch = task.batch(Split::Val, 16, &mut |k| rng.below(k));
                let (x, y) = tensors(&batch, &ad);
                gradients[kind.name()] = json!({
                    "init": trained.init.position_gradients(x.clone(), y.clone())?,
                    "trained": trained.model.position_gradients(x, y)?,
                });
            }
        }
    }

    println!("timing forward + backward, batch {}:", args.timing_batch);
    let mut timing = Vec::new();
    for &kind in &args.models {
        let times = step_times(kind, &args)?;
        println!(
            "  {:>4}: {}",
            kind.name(),
            times
                .iter()
                .map(|(s, ms)| format!("seq {s} {ms:.1} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        timing.push(json!({"model": kind.name(), "times": times.iter().map(|&(s, ms)| json!({"seq": s, "ms": ms})).collect::<Vec<_>>()}));
    }

    let mut shakespeare = Vec::new();
    if args.shakespeare_steps > 0 {
        println!("tiny shakespeare, {} steps:", args.shakespeare_steps);
        for &kind in &args.models {
            // nanoGPT's CPU recipe (4/4/128, block 64, batch 12, lr 1e-3), shortened.
            let mut config = TrainConfig::shakespeare_char();
            schedule(&mut config, args.shakespeare_steps, args.seed);
            config.data = DataConfig::Shakespeare {
                path: args.shakespeare.clone(),
                tokenizer: qkv_trainer::TokenizerChoice::Char,
            };
            let run_dir = args.out.join("shakespeare").join(kind.name());
            let trained = train(kind, config, &args, &run_dir)?;
            println!(
                "  {:>4}: val loss {:.4}, {:.1} ms/step, {:.1} s",
                kind.name(),
                trained.val_loss,
                trained.ms_per_step,
                trained.wall_s
            );
            shakespeare.push(json!({"model": kind.name(), "steps": args.shakespeare_steps, "val_loss": trained.val_loss, "ms_per_step": trained.ms_per_step, "wall_s": trained.wall_s}));
        }
    }

    let report = json!({
        "machine": {"cpu": machine.cpu, "simd": machine.simd, "threads": machine.threads},
        "backend": args.backend.to_string(),
        "settings": {
            "pairs": args.pairs, "gaps": args.gaps, "steps": args.steps, "batch_size": args.batch_size,
            "n_layers": args.n_layers, "d_model": args.d_model, "n_heads": args.n_heads,
            "lr": args.lr, "eval_examples": args.eval_examples, "seed": args.seed,
            "timing_batch": args.timing_batch, "seq_lens": args.seq_lens,
        },
        "recall": recall_rows,
        "gradients": {"gap": longest, "norms": gradients},
        "timing": timing,
        "shakespeare": shakespeare,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    crate::compare_report::write_outputs(&args.out, &args.models, &report)?;
    println!(
        "wrote compare.json, compare.md and 4 plots to {}",
        args.out.display()
    );
    Ok(())
}
