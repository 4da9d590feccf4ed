//! `cargo xtask train`: one command for every task. Flags resolve to the task's config in one
//! place ([`TrainArgs::lm_config`], [`TrainArgs::translate_config`], with the table
//! [`args::TASK_ONLY`] of flags that belong to one task, all in `train/args.rs`), and one generic [`train`] runs any
//! [`Task`] with one Ctrl-C handler and one progress display.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use qkv_backends::DeviceSpec;
use qkv_data::TranslationTask;
use qkv_trainer::translate::{TranslationRun, load_translator};
use qkv_trainer::{Event, LanguageModel, RunSummary, Start, StopReason, Task, Trainer};
use qkv_transformer::{GenerationConfig, Sampling};

mod args;

pub use args::{TaskFlag, TrainArgs};

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
