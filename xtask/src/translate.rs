//! The encoder–decoder from the command line: `cargo xtask train --task translate` trains it
//! on a built-in task, `cargo xtask translate` uses it, and `cargo xtask attention` on a
//! translation run draws the cross-attention alignment (see [`cross_attention`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Args;
use qkv_backends::Backend;
use qkv_data::TranslationTask;
use qkv_data::translate::BOS;
use qkv_plot::Heatmap;
use qkv_trainer::translate::{
    TranslateConfig, TranslateEvent, Translator, load_translator, train_translation,
};

/// Whether `dir` holds a translation run (rather than a language model).
pub fn is_translation_run(dir: &Path) -> bool {
    dir.join("translate.json").is_file()
}

/// The flags of `cargo xtask train` that apply to a translation run.
#[derive(Debug, Default)]
pub struct TranslateOverrides {
    /// `--translation`: numbers or dates.
    pub task: Option<String>,
    /// `--max-iters`.
    pub max_iters: Option<usize>,
    /// `--batch-size`.
    pub batch_size: Option<usize>,
    /// `--lr`.
    pub lr: Option<f64>,
    /// `--min-lr`.
    pub min_lr: Option<f64>,
    /// `--warmup-iters`.
    pub warmup_iters: Option<usize>,
    /// `--weight-decay`.
    pub weight_decay: Option<f64>,
    /// `--grad-clip`.
    pub grad_clip: Option<f64>,
    /// `--eval-interval`.
    pub eval_interval: Option<usize>,
    /// `--n-layers`.
    pub n_layers: Option<usize>,
    /// `--n-heads`.
    pub n_heads: Option<usize>,
    /// `--d-model`.
    pub d_model: Option<usize>,
    /// `--dropout`.
    pub dropout: Option<f64>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `--label-smoothing`.
    pub label_smoothing: Option<f64>,
    /// `--time-limit` (seconds).
    pub time_limit_s: Option<f64>,
}

/// Trains a translation model (`cargo xtask train --task translate`).
pub fn train(o: TranslateOverrides, backend: Backend, out: Option<PathBuf>) -> Result<()> {
    let task: TranslationTask = o.task.as_deref().unwrap_or("numbers").parse()?;
    let mut c = TranslateConfig::for_task(task);
    macro_rules! set {
        ($($field:ident),*) => { $(if let Some(v) = o.$field { c.$field = v; })* };
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
        n_layers,
        n_heads,
        d_model,
        dropout,
        seed,
        label_smoothing
    );
    c.time_limit_s = o.time_limit_s;
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(format!("translate-{task}")));
    let base = backend.check()?;
    let device = base.clone().autodiff();
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    println!(
        "training translation ({task}) on {backend}: {} + {} layers, {} heads, {} wide, {} steps, batch {} -> {}",
        c.n_layers,
        c.n_layers,
        c.n_heads,
        c.d_model,
        c.max_iters,
        c.batch_size,
        out.display()
    );
    let tty = std::io::stderr().is_terminal();
    let max = c.max_iters;
    let summary = train_translation(&c, &out, &device, &interrupt, |event| match event {
        TranslateEvent::Step(r) if tty => {
            eprint!(
                "\r{}/{} loss {:.4} lr {:.2e} {:.1} ms/it   ",
                r.step, max, r.loss, r.lr, r.ms_per_iter
            );
        }
        TranslateEvent::Step(_) => {}
        TranslateEvent::Eval {
            step,
            val_loss,
            accuracy,
        } => {
            if tty {
                eprintln!();
            }
            println!(
                "step {step:>5}: held-out loss {val_loss:.4}, exact match {:.2}%",
                accuracy * 100.0
            );
        }
    })?;
    println!(
        "{} steps in {:.1} s; held-out exact match {:.2}% of {} sentences{}",
        summary.steps,
        summary.wall_s,
        summary.accuracy * 100.0,
        c.eval_sentences,
        if summary.stopped_early {
            " (stopped early; the model is saved)"
        } else {
            ""
        }
    );
    let translator = load_translator(&out, &base)?;
    let examples = match task {
        TranslationTask::Numbers => ["three hundred and forty-two", "nine thousand and nine"],
        TranslationTask::Dates => ["seventh of march 2024", "thirty-first of december 1999"],
    };
    for (text, (answer, _)) in examples.iter().zip(translator.translate(&examples, 1)?) {
        println!("  {text:?} -> {answer:?}");
    }
    Ok(())
}

/// Options of `cargo xtask translate`.
#[derive(Debug, Args)]
pub struct TranslateArgs {
    /// A run directory written by `cargo xtask train --task translate`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Beam width (1 = greedy).
    #[arg(long, default_value_t = 4)]
    beam: usize,
    /// Beam search's length penalty α: hypotheses rank by log p / ((5 + len) / 6)^α.
    #[arg(long, default_value_t = 0.6)]
    length_penalty: f64,
    /// Where to compute: flex, ndarray or wgpu.
    #[arg(long, default_value = "flex")]
    backend: Backend,
    /// The sentences to translate.
    #[arg(required = true)]
    text: Vec<String>,
}

/// Runs `cargo xtask translate`.
pub fn run(args: TranslateArgs) -> Result<()> {
    if !is_translation_run(&args.checkpoint) {
        bail!(
            "{} is not a translation run (it has no translate.json); train one with \
             cargo xtask train --task translate",
            args.checkpoint.display()
        );
    }
    if args.beam == 0 {
        bail!("--beam must be at least 1");
    }
    let device = args.backend.check()?;
    if !(args.length_penalty.is_finite() && args.length_penalty >= 0.0) {
        bail!(
            "--length-penalty must be a number ≥ 0, got {}",
            args.length_penalty
        );
    }
    let mut translator = load_translator(&args.checkpoint, &device)?;
    translator.length_penalty = args.length_penalty;
    for text in &args.text {
        match translator.translate(&[text.as_str()], args.beam) {
            Ok(mut out) => {
                let (answer, t) = out.remove(0);
                println!(
                    "{text} -> {answer}  (log p {:.3}{})",
                    t.log_prob,
                    if t.finished {
                        ""
                    } else {
                        ", hit the length limit"
                    }
                );
            }
            Err(e) => bail!("{text:?}: {e}"),
        }
    }
    Ok(())
}

/// `cargo xtask attention` on a translation run: translates `text`, then draws every
/// layer's and head's cross-attention (rows: target tokens as produced, columns: source
/// tokens) to `out/cross_attention.png`, with the numbers in `cross_attention.json`.
pub fn cross_attention(checkpoint: &Path, text: &str, out: &Path, backend: Backend) -> Result<()> {
    let device = backend.check()?;
    let translator: Translator = load_translator(checkpoint, &device)?;
    let source = translator
        .encode(text)
        .with_context(|| format!("{text:?}"))?;
    let (answer, translation) = translator.translate(&[text], 1)?.remove(0);
    let layers = translator
        .model
        .cross_attention(&source, &translation.tokens, BOS, &device)?;
    let vocab = &translator.vocab;
    let col_labels: Vec<String> = source.iter().map(|&t| vocab.token(t).to_string()).collect();
    let mut row_labels: Vec<String> = translation
        .tokens
        .iter()
        .map(|&t| vocab.token(t).to_string())
        .collect();
    row_labels.push("<eos>".into());
    let [n_heads, rows, cols] = layers[0].dims();
    let mut panels = Vec::new();
    let mut dump = Vec::new();
    for (l, probs) in layers.into_iter().enumerate() {
        let flat: Vec<f32> = probs.into_data().try_into_vec_as().expect("float probs");
        let heads: Vec<Vec<f32>> = flat.chunks(rows * cols).map(|c| c.to_vec()).collect();
        for (h, p) in heads.iter().enumerate() {
            panels.push((format!("layer {l} head {h}"), p.clone()));
        }
        dump.push(heads);
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let heatmap = Heatmap {
        title: format!("cross-attention: {text:?} -> {answer:?} (rows: output, columns: input)"),
        panels,
        columns: n_heads,
        row_labels: row_labels.clone(),
        col_labels: col_labels.clone(),
        cell: 22,
    };
    heatmap
        .render()
        .save(&out.join("cross_attention.png"))
        .context("writing cross_attention.png")?;
    let json = serde_json::json!({
        "source": col_labels, "target": row_labels, "translation": answer, "probs": dump,
    });
    std::fs::write(
        out.join("cross_attention.json"),
        serde_json::to_string(&json)?,
    )
    .context("writing cross_attention.json")?;
    println!("{text:?} -> {answer:?}");
    println!(
        "wrote {}/cross_attention.png and cross_attention.json",
        out.display()
    );
    // The alignment in words, from the layer whose heads are most decided (highest mean
    // of each row's largest head-averaged weight): for each output token, the source token
    // looked at most.
    let mean_rows = |heads: &Vec<Vec<f32>>| -> Vec<Vec<f32>> {
        (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|c| heads.iter().map(|h| h[r * cols + c]).sum::<f32>() / n_heads as f32)
                    .collect()
            })
            .collect()
    };
    let peak = |m: &Vec<Vec<f32>>| -> f32 {
        m.iter()
            .map(|r| r.iter().cloned().fold(0.0, f32::max))
            .sum::<f32>()
            / rows as f32
    };
    let (layer, mean) = dump
        .iter()
        .map(mean_rows)
        .enumerate()
        .max_by(|a, b| peak(&a.1).total_cmp(&peak(&b.1)))
        .expect("at least one layer");
    println!("alignment (layer {layer}, mean over heads):");
    for (label, row) in row_labels.iter().zip(&mean) {
        let (best, w) =
            row.iter().enumerate().fold(
                (0, 0.0f32),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            );
        println!(
            "  {label:>6} <- {:<10} ({:.0}%)",
            col_labels[best],
            w * 100.0
        );
    }
    Ok(())
}
