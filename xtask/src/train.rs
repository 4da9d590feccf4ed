//! `cargo xtask train`: one command for every task. Flags resolve to the task's config in one
//! place ([`TrainArgs::lm_config`], [`TrainArgs::translate_config`], with the table
//! [`TASK_ONLY`] of flags that belong to one task), and one generic [`train`] runs any
//! [`Task`] with one Ctrl-C handler and one progress display.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Args;
use qkv_backends::{Backend, DeviceSpec};
use qkv_data::TranslationTask;
use qkv_trainer::translate::{TranslateConfig, TranslationRun, load_translator};
use qkv_trainer::{
    DataConfig, Event, LanguageModel, Precision, RunSummary, Start, StopReason, Task,
    TokenizerChoice, TrainConfig, Trainer,
};
use qkv_transformer::{GenerationConfig, Sampling};

/// `--task` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskFlag {
    /// A GPT language model (the recall task, Shakespeare, or any text).
    Lm,
    /// The encoder–decoder on a built-in translation task.
    Translate,
}

/// `--tokenizer` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TokenizerFlag {
    /// One token per character.
    Char,
    /// Byte-level BPE trained on the corpus.
    Bpe,
}

/// Options of `cargo xtask train`. Flags override the preset, the `--config` file or, with
/// `--resume`, the run's own saved config.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// What to train: `lm` (a GPT language model) or `translate` (the encoder–decoder on a
    /// built-in translation task).
    #[arg(long, value_enum, default_value = "lm")]
    task: TaskFlag,
    /// With `--task translate`: `numbers` (number words to digits, the default) or `dates`
    /// (English dates to ISO dates).
    #[arg(long)]
    translation: Option<String>,
    /// With `--task translate`: label smoothing of the loss.
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// With `--task translate`: held-out sentences per evaluation.
    #[arg(long)]
    eval_sentences: Option<usize>,
    /// Stop (after evaluating and saving) after this many seconds.
    #[arg(long)]
    time_limit: Option<f64>,
    /// Named recipe: `recall` (default, offline) or `shakespeare-char`.
    #[arg(long)]
    preset: Option<String>,
    /// A JSON config file (as written to `config.json` by a run) instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to compute: flex, ndarray, wgpu (vulkan, cuda in builds with them).
    #[arg(long, default_value = "flex")]
    backend: Backend,
    /// Train data-parallel on several devices, comma-separated: indices of the backend's
    /// devices (`0,1`; the CPU backends have device 0 only, which may repeat: `0,0` runs two
    /// workers on it), `default` (the wgpu adapter), or remote devices served by
    /// `cargo xtask serve-device` (`ws://host:port`, `ws://host:port/1`). Every batch is cut
    /// across them; the first holds the model, the optimizer and the evaluations. Batch size,
    /// schedule, checkpoints and resume are those of one device.
    #[arg(long)]
    devices: Option<String>,
    /// The run directory (default `runs/<preset>` or `runs/translate-<task>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in `--out` exactly where its last checkpoint stopped (its
    /// saved config is the base that flags override).
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start a new run in `--out` even if it holds one, replacing it.
    #[arg(long)]
    overwrite: bool,
    /// A local text file: for `shakespeare-char` a copy of Tiny Shakespeare, otherwise any
    /// UTF-8 text to train on at the character level.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Tokenizer for text data: `char`, or `bpe` (byte-level BPE trained on the corpus).
    #[arg(long, value_enum)]
    tokenizer: Option<TokenizerFlag>,
    /// Vocabulary size of `--tokenizer bpe`.
    #[arg(long)]
    bpe_vocab: Option<usize>,
    /// Where downloaded datasets are cached.
    #[arg(long, default_value = "data")]
    cache_dir: PathBuf,
    /// Updates to run.
    #[arg(long)]
    max_iters: Option<usize>,
    /// Sequences (or sentence pairs) per micro-batch.
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
    /// Transformer blocks (per stack, for translation).
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
    /// The float type of the forward and backward passes: `f32` (default), `f16` (with a
    /// dynamic loss scale) or `bf16`. Weights, gradients and AdamW stay f32; LayerNorm, the
    /// attention softmax and the loss compute in f32. Meant for GPUs; one device only.
    #[arg(long)]
    dtype: Option<Precision>,
}

/// Flags that only one task takes, and why the other rejects them.
pub const TASK_ONLY: [(&str, TaskFlag); 13] = [
    ("--translation", TaskFlag::Translate),
    ("--label-smoothing", TaskFlag::Translate),
    ("--eval-sentences", TaskFlag::Translate),
    ("--preset", TaskFlag::Lm),
    ("--config", TaskFlag::Lm),
    ("--data", TaskFlag::Lm),
    ("--tokenizer", TaskFlag::Lm),
    ("--bpe-vocab", TaskFlag::Lm),
    ("--grad-accum", TaskFlag::Lm),
    ("--lr-decay-iters", TaskFlag::Lm),
    ("--eval-iters", TaskFlag::Lm),
    ("--block-size", TaskFlag::Lm),
    ("--dtype", TaskFlag::Lm),
];

impl TrainArgs {
    /// Whether a flag of [`TASK_ONLY`] was given.
    fn given(&self, flag: &str) -> bool {
        match flag {
            "--translation" => self.translation.is_some(),
            "--label-smoothing" => self.label_smoothing.is_some(),
            "--eval-sentences" => self.eval_sentences.is_some(),
            "--preset" => self.preset.is_some(),
            "--config" => self.config.is_some(),
            "--data" => self.data.is_some(),
            "--tokenizer" => self.tokenizer.is_some(),
            "--bpe-vocab" => self.bpe_vocab.is_some(),
            "--grad-accum" => self.grad_accum.is_some(),
            "--lr-decay-iters" => self.lr_decay_iters.is_some(),
            "--eval-iters" => self.eval_iters.is_some(),
            "--block-size" => self.block_size.is_some(),
            "--dtype" => self.dtype.is_some(),
            other => unreachable!("{other} is not in TASK_ONLY"),
        }
    }

    /// Rejects the flags of the other task, naming them.
    fn check_task_flags(&self) -> Result<()> {
        for (flag, only) in TASK_ONLY {
            if only != self.task && self.given(flag) {
                let (this, that) = match self.task {
                    TaskFlag::Lm => ("lm", "translate"),
                    TaskFlag::Translate => ("translate", "lm"),
                };
                bail!("{flag} applies to --task {that} only, not to --task {this}");
            }
        }
        Ok(())
    }

    /// The run directory.
    fn out(&self) -> PathBuf {
        if let Some(out) = &self.out {
            return out.clone();
        }
        let name = match self.task {
            TaskFlag::Lm if self.config.is_some() => "custom".to_string(),
            TaskFlag::Lm => self.preset.clone().unwrap_or_else(|| "recall".into()),
            TaskFlag::Translate => format!(
                "translate-{}",
                self.translation.as_deref().unwrap_or("numbers")
            ),
        };
        PathBuf::from("runs").join(name)
    }

    fn start(&self) -> Start {
        match (self.resume, self.overwrite) {
            (true, _) => Start::Resume,
            (false, true) => Start::Overwrite,
            (false, false) => Start::Fresh,
        }
    }

    /// The language-model config: the preset, `--config` file or (with `--resume`) the run's
    /// `config.json`, then every flag given.
    pub fn lm_config(&self, out: &Path) -> Result<TrainConfig> {
        let from_file = |path: &Path| -> Result<TrainConfig> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(TrainConfig::from_json(&text)?)
        };
        let mut c = match (&self.config, self.resume) {
            (Some(path), _) => from_file(path)?,
            (None, true) if self.preset.is_none() => from_file(&out.join("config.json"))
                .context("--resume reads the run's config.json")?,
            (None, _) => TrainConfig::preset(self.preset.as_deref().unwrap_or("recall"))?,
        };
        let choice = match self.tokenizer {
            Some(TokenizerFlag::Char) => Some(TokenizerChoice::Char),
            Some(TokenizerFlag::Bpe) => Some(TokenizerChoice::Bpe {
                vocab_size: self.bpe_vocab.unwrap_or(512),
            }),
            None => None,
        };
        if self.bpe_vocab.is_some() && !matches!(choice, Some(TokenizerChoice::Bpe { .. })) {
            bail!("--bpe-vocab applies to --tokenizer bpe");
        }
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
                    bail!(
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
        if self.time_limit.is_some() {
            c.time_limit_s = self.time_limit;
        }
        if let Some(precision) = self.dtype {
            c.precision = precision;
        }
        if self.max_iters.is_some() && self.lr_decay_iters.is_none() {
            c.lr_decay_iters = c.max_iters;
        }
        Ok(c)
    }

    /// The translation config: the task's recipe or (with `--resume`) the run's
    /// `translate.json`, then every flag given.
    pub fn translate_config(&self, out: &Path) -> Result<TranslateConfig> {
        let mut c = if self.resume {
            qkv_trainer::translate::read_config(out)
                .context("--resume reads the run's translate.json")?
        } else {
            let task: TranslationTask = self.translation.as_deref().unwrap_or("numbers").parse()?;
            TranslateConfig::for_task(task)
        };
        if let Some(task) = &self.translation {
            c.task = task.clone();
        }
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { c.$field = v; })* };
        }
        set!(
            max_iters,
            batch_size,
            lr,
            min_lr,
            warmup_iters,
            weight_decay,
            grad_clip,
            eval_interval,
            eval_sentences,
            n_layers,
            n_heads,
            d_model,
            dropout,
            seed,
            label_smoothing
        );
        if self.time_limit.is_some() {
            c.time_limit_s = self.time_limit;
        }
        Ok(c)
    }
}

/// Runs `cargo xtask train`.
pub fn run(args: TrainArgs) -> Result<()> {
    args.check_task_flags()?;
    let out = args.out();
    let devices = open_devices(&args)?;
    let device = devices[0].1.clone();
    match args.task {
        TaskFlag::Lm => {
            let config = args.lm_config(&out)?;
            let task = LanguageModel::open(config.clone(), &args.cache_dir)?;
            println!(
                "training {} on {}: {} layers, {} heads, {} wide, block {}, {} steps, batch {} -> {}",
                task.title(),
                args.backend,
                config.model.n_layers,
                config.model.n_heads,
                config.model.d_model,
                config.model.block_size,
                config.max_iters,
                config.batch_size * config.grad_accum,
                out.display()
            );
            let (trainer, summary) = train(task, &out, &devices, args.start())?;
            if let Some(eval) = &summary.final_eval
                && config.data.recall().is_some()
            {
                println!(
                    "held-out accuracy: {:.2}% of answers",
                    eval.val_accuracy * 100.0
                );
            }
            if summary.stopped.is_none() && config.data.recall().is_none() {
                write_sample(&trainer, &out, config.seed)?;
            }
        }
        TaskFlag::Translate => {
            let config = args.translate_config(&out)?;
            let task = TranslationRun::new(config.clone())?;
            println!(
                "training {} on {}: {} + {} layers, {} heads, {} wide, {} steps, batch {} -> {}",
                task.title(),
                args.backend,
                config.n_layers,
                config.n_layers,
                config.n_heads,
                config.d_model,
                config.max_iters,
                config.batch_size,
                out.display()
            );
            let (_, summary) = train(task, &out, &devices, args.start())?;
            if let Some(eval) = &summary.final_eval {
                println!(
                    "held-out exact match: {:.2}% of {} sentences",
                    eval.val_accuracy * 100.0,
                    config.eval_sentences
                );
            }
            let translator = load_translator(&out, &device)?;
            let examples = match translator.task {
                TranslationTask::Numbers => {
                    ["three hundred and forty-two", "nine thousand and nine"]
                }
                TranslationTask::Dates => {
                    ["seventh of march 2024", "thirty-first of december 1999"]
                }
            };
            for (text, (answer, _)) in examples.iter().zip(translator.translate(&examples, 1)?) {
                println!("  {text:?} -> {answer:?}");
            }
        }
    }
    Ok(())
}

/// The devices to train on, opened and probed: `--devices`, or the backend's one device.
/// Names are as the user wrote them, for messages.
fn open_devices(args: &TrainArgs) -> Result<Vec<(String, burn::prelude::Device)>> {
    let Some(list) = &args.devices else {
        return Ok(vec![(args.backend.to_string(), args.backend.check()?)]);
    };
    let specs = DeviceSpec::parse_list(list).map_err(anyhow::Error::msg)?;
    let mut devices = Vec::with_capacity(specs.len());
    for spec in specs {
        let device = spec.open(args.backend)?;
        devices.push((spec.to_string(), device));
    }
    if devices.len() > 1 {
        let names: Vec<&str> = devices.iter().map(|(name, _)| name.as_str()).collect();
        println!(
            "data-parallel on {} devices: {} (the model and optimizer on {})",
            devices.len(),
            names.join(", "),
            names[0]
        );
    }
    Ok(devices)
}

/// Trains any task into `out` on `devices` (the first holds the model): one Ctrl-C handler,
/// one progress line, one report.
fn train<T: Task>(
    task: T,
    out: &Path,
    devices: &[(String, burn::prelude::Device)],
    start: Start,
) -> Result<(Trainer<T>, RunSummary)> {
    let device = &devices[0].1;
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let mut trainer = Trainer::new(task, out, &device.clone().autodiff(), start)?.with_devices(
        devices
            .iter()
            .map(|(name, device)| (name.clone(), device.clone().autodiff()))
            .collect(),
    )?;
    // The model lives on the first device. When that one is remote, its failure (the server
    // gone) surfaces as a panic anywhere in the loop, not in a worker.
    let remote_main = matches!(
        devices[0].0.parse::<DeviceSpec>(),
        Ok(DeviceSpec::Remote { .. })
    );
    if !trainer.workers().is_empty() || remote_main {
        // A worker's panic (a remote device whose server went away) is caught and reported
        // as an error naming the device; printing it as a crash as well would only confuse.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !(qkv_trainer::parallel::in_worker() || remote_main) {
                previous(info);
            }
        }));
    }
    println!(
        "{:.2}M parameters",
        qkv_trainer::checkpoint::optimizer_names(&trainer.model)
            .values()
            .sum::<usize>() as f64
            / 1e6
    );
    if trainer.step > 0 {
        println!("resuming at step {}", trainer.step);
    }
    let tty = std::io::stderr().is_terminal();
    let max = trainer.task.recipe().max_iters;
    let mut report = |event: &Event| match event {
        Event::Step(r) if tty => {
            let filled = (r.step * 30 / max.max(1)).min(30);
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
        Event::Step(_) | Event::Checkpoint { .. } => {}
        Event::LossScaleCut { step, scale } => {
            if tty {
                eprintln!();
            }
            println!(
                "step {step:>5}: f16 gradients overflowed; update skipped, loss scale now {scale}, \
                 step taken again"
            );
        }
        Event::Eval { step, evaluation } => {
            if tty {
                eprintln!();
            }
            let train = evaluation
                .train_loss
                .map(|l| format!("train loss {l:.4}, "))
                .unwrap_or_default();
            println!(
                "step {step:>5}: {train}val loss {:.4}, val accuracy {:.2}%",
                evaluation.val_loss,
                evaluation.val_accuracy * 100.0
            );
        }
        Event::Stopped { step, reason } => {
            let why = match reason {
                StopReason::Interrupted => "interrupted",
                StopReason::TimeLimit => "time limit reached",
            };
            println!("\n{why}: checkpoint saved at step {step}; continue with --resume");
        }
    };
    let summary = if remote_main {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            trainer.run(&interrupt, None, &mut report)
        }));
        match run {
            Ok(result) => result?,
            Err(panic) => return Err(main_device_failed(&devices[0].0, panic.as_ref(), out)),
        }
    } else {
        trainer.run(&interrupt, None, &mut report)?
    };
    println!(
        "{} steps in {:.1} s: {:.1} ms/iteration, {:.0} tokens/s",
        summary.step, summary.wall_s, summary.ms_per_iter, summary.tokens_per_s
    );
    if let Some(eval) = &summary.final_eval
        && let Some(train_loss) = eval.train_loss
    {
        println!(
            "final: train loss {train_loss:.4}, val loss {:.4}",
            eval.val_loss
        );
    }
    Ok((trainer, summary))
}

/// The error for a remote first device that failed mid-run, naming it and the checkpoint
/// the run keeps.
fn main_device_failed(name: &str, panic: &(dyn std::any::Any + Send), out: &Path) -> anyhow::Error {
    let reason = qkv_trainer::parallel::panic_text(panic);
    let kept = match qkv_trainer::checkpoint::Checkpoint::load(out) {
        Ok(checkpoint) => format!(
            "the last good checkpoint (step {}) was kept",
            checkpoint.state.step
        ),
        Err(_) => "no checkpoint had been written yet".into(),
    };
    anyhow::anyhow!(
        "device {name} failed: {reason}; training stopped and {kept}. Bring the device back \
         (or train on another with --devices) and continue with --resume"
    )
}

/// Writes 300 tokens sampled from a trained text model to `out/sample.txt` and prints them.
fn write_sample(trainer: &Trainer<LanguageModel>, out: &Path, seed: u64) -> Result<()> {
    let tokenizer = trainer.task.source.tokenizer();
    let model = burn::module::Module::valid(&trainer.model);
    let prompt = tokenizer.encode("\n").unwrap_or_else(|_| vec![0]);
    let generation = GenerationConfig {
        sampling: Sampling::Random {
            temperature: 0.8,
            top_k: Some(200),
            top_p: None,
            seed,
        },
        ..GenerationConfig::greedy(300)
    };
    let out_tokens = model.generate(&[prompt], &generation, |_, _| {})?;
    let text = tokenizer.decode(&out_tokens.tokens[0])?;
    std::fs::write(out.join("sample.txt"), &text).context("writing sample.txt")?;
    println!("\nsample (300 characters, temperature 0.8):\n{text}");
    Ok(())
}
