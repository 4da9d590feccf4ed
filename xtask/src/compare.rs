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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::{Args, ValueEnum};
use qkv_backends::{Backend, MachineInfo};
use qkv_data::{IGNORE, RecallTask, Split};
use qkv_plot::{LinePlot, Rgb, Series};
use qkv_trainer::{
    DataConfig, LanguageModel, RecurrentLanguageModel, Start, Task, TrainConfig, Trainer, tensors,
};
use qkv_transformer::interp::{gpt_position_gradients, recurrent_position_gradients};
use qkv_transformer::recurrent::{RecurrentCell, RecurrentLm};
use qkv_transformer::{Gpt, SplitMix64, cross_entropy};
use serde_json::{Value, json};

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
    fn name(self) -> &'static str {
        match self {
            ModelKind::Gpt => "gpt",
            ModelKind::Lstm => "lstm",
            ModelKind::Gru => "gru",
        }
    }

    fn color(self) -> Rgb {
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
        for (value, flag) in [
            (self.steps, "--steps"),
            (self.batch_size, "--batch-size"),
            (self.eval_examples, "--eval-examples"),
            (self.timing_batch, "--timing-batch"),
        ] {
            if value == 0 || value > 1 << 20 {
                bail!("{flag} must be in 1..=1048576, got {value}");
            }
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr must be a positive number, got {}", self.lr);
        }
        Ok(())
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

/// A trained model of either family, for evaluation.
pub(crate) enum Model {
    Gpt(Gpt),
    Rnn(RecurrentLm),
}

impl Model {
    fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        match self {
            Model::Gpt(m) => m.forward(tokens),
            Model::Rnn(m) => m.forward(tokens),
        }
    }

    /// Norms of the gradient of the recall loss reaching each layer at each position
    /// (`model` on an autodiff device).
    fn position_gradients(&self, x: Tensor<2, Int>, y: Tensor<2, Int>) -> Result<Vec<Vec<f64>>> {
        let loss = |logits| cross_entropy(logits, y, Some(IGNORE));
        Ok(match self {
            Model::Gpt(m) => gpt_position_gradients(m, x, loss)?.norms,
            Model::Rnn(m) => recurrent_position_gradients(m, x, loss).norms,
        })
    }
}

/// What training one model produced.
struct Trained {
    /// The trained model on the autodiff device.
    model: Model,
    /// The model before training (same seed), on the autodiff device.
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
            let init = Model::Gpt(seeded(&task, &device)?);
            let mut trainer = Trainer::new(task, run, &device, Start::Overwrite)?;
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
            let init = Model::Rnn(seeded(&task, &device)?);
            let mut trainer = Trainer::new(task, run, &device, Start::Overwrite)?;
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

/// The model a task starts from, initialised as the trainer does (the device's generator
/// seeded with the run's seed).
fn seeded<T: Task>(task: &T, device: &Device) -> Result<T::Model> {
    device.seed(task.recipe().seed);
    Ok(task.init_model(device)?)
}

/// Held-out accuracy on `examples` recall examples: overall, and `(distance, correct,
/// total)` for each distance between a pair and its query.
pub(crate) fn accuracy_by_distance(
    model: &Model,
    task: &RecallTask,
    examples: usize,
    seed: u64,
    device: &Device,
) -> (f64, Vec<(usize, usize, usize)>) {
    let mut rng = SplitMix64::new(seed ^ 0xd157_a9ce);
    let mut tally: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    let mut left = examples;
    while left > 0 {
        let n = left.min(64);
        left -= n;
        let batch = task.batch(Split::Val, n, &mut |k| rng.below(k));
        let (x, _) = tensors(&batch, device);
        let predicted: Vec<i64> = model
            .forward(x)
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .try_into_vec_as::<i64>()
            .expect("int predictions");
        for row in 0..n {
            let span = row * batch.seq..(row + 1) * batch.seq;
            let distances = task.answer_distances(&batch.inputs[span.clone()]);
            for (t, d) in distances.into_iter().enumerate() {
                if let Some(d) = d {
                    let i = span.start + t;
                    let entry = tally.entry(d).or_default();
                    entry.0 += (predicted[i] == batch.targets[i]) as usize;
                    entry.1 += 1;
                }
            }
        }
    }
    let (correct, total) = tally
        .values()
        .fold((0, 0), |(c, t), &(dc, dt)| (c + dc, t + dt));
    let rows = tally.into_iter().map(|(d, (c, t))| (d, c, t)).collect();
    (correct as f64 / total.max(1) as f64, rows)
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
    write_outputs(&args, &report)?;
    println!(
        "wrote compare.json, compare.md and 4 plots to {}",
        args.out.display()
    );
    Ok(())
}

fn write_outputs(args: &CompareArgs, report: &Value) -> Result<()> {
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = args.out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    write(
        "compare.json",
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    write("compare.md", markdown(report).as_bytes())?;
    let rows = report["recall"].as_array().cloned().unwrap_or_default();
    let series_of = |points: &dyn Fn(&str) -> Vec<(f64, f64)>| -> Vec<Series> {
        args.models
            .iter()
            .map(|&kind| Series {
                name: kind.name().into(),
                color: kind.color(),
                points: points(kind.name()),
            })
            .collect()
    };
    let plots = [
        (
            "recall-accuracy.png",
            LinePlot {
                title: "held-out recall accuracy vs gap".into(),
                x_label: "filler tokens between pairs and queries".into(),
                y_label: "accuracy".into(),
                series: series_of(&|m| {
                    rows.iter()
                        .filter(|r| r["model"] == m)
                        .map(|r| {
                            (
                                r["gap"].as_f64().unwrap_or(0.0),
                                r["accuracy"].as_f64().unwrap_or(0.0),
                            )
                        })
                        .collect()
                }),
            },
        ),
        (
            "recall-distance.png",
            LinePlot {
                title: format!(
                    "accuracy vs distance to the pair, gap {}",
                    report["gradients"]["gap"]
                ),
                x_label: "tokens between the pair and its query".into(),
                y_label: "accuracy".into(),
                series: series_of(&|m| {
                    rows.iter()
                        .filter(|r| r["model"] == m && r["gap"] == report["gradients"]["gap"])
                        .flat_map(|r| r["by_distance"].as_array().cloned().unwrap_or_default())
                        .map(|b| {
                            let c = b["correct"].as_f64().unwrap_or(0.0);
                            let t = b["total"].as_f64().unwrap_or(1.0).max(1.0);
                            (b["distance"].as_f64().unwrap_or(0.0), c / t)
                        })
                        .collect()
                }),
            },
        ),
        (
            "gradients.png",
            LinePlot {
                title: "log10 gradient norm at the embeddings, trained".into(),
                x_label: "position".into(),
                y_label: "log10 |dloss/dx|".into(),
                series: series_of(&|m| {
                    report["gradients"]["norms"][m]["trained"][0]
                        .as_array()
                        .map(|row| {
                            row.iter()
                                .enumerate()
                                .filter_map(|(t, g)| {
                                    let g = g.as_f64()?;
                                    (g > 0.0).then(|| (t as f64, g.log10()))
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                }),
            },
        ),
        (
            "step-time.png",
            LinePlot {
                title: "forward + backward time vs sequence length".into(),
                x_label: "sequence length".into(),
                y_label: "ms".into(),
                series: series_of(&|m| {
                    report["timing"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|t| t["model"] == m)
                        .flat_map(|t| t["times"].as_array().cloned().unwrap_or_default())
                        .map(|p| {
                            (
                                p["seq"].as_f64().unwrap_or(0.0),
                                p["ms"].as_f64().unwrap_or(0.0),
                            )
                        })
                        .collect()
                }),
            },
        ),
    ];
    for (name, plot) in plots {
        write(name, &plot.render().png_bytes())?;
    }
    Ok(())
}

/// The tables of `compare.md`.
fn markdown(report: &Value) -> String {
    let machine = &report["machine"];
    let mut s = format!(
        "Machine: {} ({}), {} threads, backend {}\n\n| gap | seq | model | held-out accuracy | val loss | ms/step |\n|---:|---:|---|---:|---:|---:|\n",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["simd"].as_str().unwrap_or("?"),
        machine["threads"],
        report["backend"].as_str().unwrap_or("?"),
    );
    for r in report["recall"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {} | {} | {:.1}% | {:.3} | {:.1} |\n",
            r["gap"],
            r["sequence"],
            r["model"].as_str().unwrap_or("?"),
            r["accuracy"].as_f64().unwrap_or(0.0) * 100.0,
            r["val_loss"].as_f64().unwrap_or(0.0),
            r["ms_per_step"].as_f64().unwrap_or(0.0),
        );
    }
    let norms = &report["gradients"]["norms"];
    s += &format!(
        "\nGradient norm reaching the embeddings (gap {}), first position / last pair position / last position:\n\n| model | init | trained |\n|---|---|---|\n",
        report["gradients"]["gap"]
    );
    let pairs = report["settings"]["pairs"].as_u64().unwrap_or(1) as usize;
    if let Some(models) = norms.as_object() {
        for (model, g) in models {
            let cell = |which: &str| {
                let row = &g[which][0];
                let at = |i: usize| row[i].as_f64().unwrap_or(f64::NAN);
                let last = row.as_array().map(|r| r.len()).unwrap_or(1) - 1;
                format!("{:.2e} / {:.2e} / {:.2e}", at(0), at(pairs - 1), at(last))
            };
            s += &format!("| {model} | {} | {} |\n", cell("init"), cell("trained"));
        }
    }
    s += "\nForward + backward, ms:\n\n| model | seq: ms |\n|---|---|\n";
    for t in report["timing"].as_array().into_iter().flatten() {
        let times: Vec<String> = t["times"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{}: {:.1}", p["seq"], p["ms"].as_f64().unwrap_or(0.0)))
            .collect();
        s += &format!(
            "| {} | {} |\n",
            t["model"].as_str().unwrap_or("?"),
            times.join(", ")
        );
    }
    if let Some(rows) = report["shakespeare"].as_array().filter(|r| !r.is_empty()) {
        s += "\nTiny Shakespeare:\n\n| model | steps | val loss | ms/step | wall s |\n|---|---:|---:|---:|---:|\n";
        for r in rows {
            s += &format!(
                "| {} | {} | {:.4} | {:.1} | {:.1} |\n",
                r["model"].as_str().unwrap_or("?"),
                r["steps"],
                r["val_loss"].as_f64().unwrap_or(0.0),
                r["ms_per_step"].as_f64().unwrap_or(0.0),
                r["wall_s"].as_f64().unwrap_or(0.0)
            );
        }
    }
    s
}
