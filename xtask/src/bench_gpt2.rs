//! `cargo xtask bench --gpt2 DIR`: GPT-2 at full size on 2 CPU threads, beside Hugging Face
//! transformers on the very same weights (`benches/pytorch/gpt2.py`): load time, the prefill
//! of a prompt (one pass building the key/value cache, next-token logits of the last
//! position), greedy generation of a fixed number of new tokens with the cache, and peak
//! resident memory.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use qkv_backends::Backend;
use qkv_transformer::{GenerationConfig, Gpt, SplitMix64};
use serde_json::{Value, json};

/// The workload's shape: prompt length, new tokens, batch sizes, timed repeats.
#[derive(Debug, Clone)]
pub struct Gpt2Bench {
    /// Tokens of each prompt.
    pub prompt_len: usize,
    /// New tokens generated after each prompt.
    pub new_tokens: usize,
    /// Batch sizes, each timed in turn.
    pub batches: Vec<usize>,
    /// Timed repeats after one warm-up (the median is reported).
    pub repeat: usize,
}

/// One batch size's figures, on qkv or PyTorch.
#[derive(Debug, Clone, serde::Serialize)]
struct Figures {
    batch: usize,
    load_s: f64,
    prefill_s: f64,
    generate_s: f64,
    peak_rss_mb: Option<f64>,
}

impl Figures {
    fn prefill_tok_s(&self, prompt: usize) -> f64 {
        (self.batch * prompt) as f64 / self.prefill_s
    }
    /// New tokens per second after the prompt: `batch · new / (generate − prefill)`; `None`
    /// when timing noise leaves no decoding time to divide by.
    fn decode_tok_s(&self, new: usize) -> Option<f64> {
        let decoding = self.generate_s - self.prefill_s;
        (decoding > 0.0).then(|| (self.batch * new) as f64 / decoding)
    }
}

/// Runs the GPT-2 rows on `backend` (and PyTorch if asked); prints a table, returns its JSON.
pub fn run(
    dir: &Path,
    backend: Backend,
    bench: &Gpt2Bench,
    pytorch: Option<(&str, usize)>,
) -> Result<Value> {
    if !dir.join("config.json").is_file() || !dir.join("model.safetensors").is_file() {
        bail!(
            "--gpt2 {} needs a Hugging Face GPT-2 directory (config.json, model.safetensors); make a random one with `python3 benches/pytorch/gpt2.py make --size small --out {}`",
            dir.display(),
            dir.display()
        );
    }
    let device = backend.check()?;
    let started = Instant::now();
    let (model, _) = qkv_transformer::gpt2::load_hf_gpt2(dir, &device)?;
    let load_s = started.elapsed().as_secs_f64();
    if bench.prompt_len + bench.new_tokens > model.block_size || bench.prompt_len == 0 {
        bail!(
            "a {}-token prompt and {} new tokens do not fit GPT-2's {}-token window",
            bench.prompt_len,
            bench.new_tokens,
            model.block_size
        );
    }
    let mut qkv = Vec::new();
    for &batch in &bench.batches {
        let figures = time_qkv(&model, &device, bench, batch, load_s)?;
        eprintln!(
            "qkv {backend} gpt2 batch {batch}: prefill {:.3} s, generate {:.3} s",
            figures.prefill_s, figures.generate_s
        );
        qkv.push(figures);
    }
    let mut torch = Vec::new();
    if let Some((python, threads)) = pytorch {
        for &batch in &bench.batches {
            torch.push(time_pytorch(python, threads, dir, bench, batch)?);
        }
    }
    print_table(bench, backend, &qkv, &torch);
    Ok(json!({
        "model": dir.display().to_string(),
        "prompt_len": bench.prompt_len,
        "new_tokens": bench.new_tokens,
        "qkv_backend": backend.name(),
        "qkv": qkv,
        "pytorch": torch,
    }))
}

fn prompts(vocab: usize, batch: usize, len: usize) -> Vec<Vec<u32>> {
    let mut rng = SplitMix64::new(0);
    (0..batch)
        .map(|_| (0..len).map(|_| rng.below(vocab) as u32).collect())
        .collect()
}

fn time_qkv(
    model: &Gpt,
    device: &Device,
    bench: &Gpt2Bench,
    batch: usize,
    load_s: f64,
) -> Result<Figures> {
    let prompts = prompts(model.vocab_size, batch, bench.prompt_len);
    let flat: Vec<i64> = prompts.iter().flatten().map(|&t| t as i64).collect();
    let tokens =
        Tensor::<2, Int>::from_data(TensorData::new(flat, [batch, bench.prompt_len]), device);
    let prefill = || -> Result<()> {
        let mut caches = model.new_caches();
        let out = model.forward_last(tokens.clone(), Some(&mut caches), false)?;
        let _ = out.logits.into_data();
        Ok(())
    };
    let config = GenerationConfig::greedy(bench.new_tokens);
    let generate = || -> Result<()> {
        let out = model.generate(&prompts, &config, |_, _| {})?;
        if out.tokens.iter().any(|t| t.len() != bench.new_tokens) {
            bail!("generation stopped early");
        }
        Ok(())
    };
    // The untimed warm-up run of each surfaces any error; then the suite's own timing loop:
    // `repeat` timed runs, the median.
    let plan = qkv_benches::Plan::new(0, bench.repeat.max(1), std::time::Duration::ZERO);
    prefill()?;
    let prefill_s = qkv_benches::measure(plan, || prefill().expect("ran above")).median_ms / 1e3;
    generate()?;
    let generate_s = qkv_benches::measure(plan, || generate().expect("ran above")).median_ms / 1e3;
    Ok(Figures {
        batch,
        load_s,
        prefill_s,
        generate_s,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// The process's peak resident memory so far (`VmHWM`, Linux only).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn time_pytorch(
    python: &str,
    threads: usize,
    dir: &Path,
    bench: &Gpt2Bench,
    batch: usize,
) -> Result<Figures> {
    let script = crate::bench::pytorch_script("gpt2.py")?;
    let out = std::env::temp_dir().join(format!("qkv-gpt2-pytorch-{}.json", std::process::id()));
    let status = Command::new(python)
        .arg(&script)
        .arg("run")
        .arg("--model")
        .arg(dir)
        .args(["--threads", &threads.to_string()])
        .args(["--prompt-len", &bench.prompt_len.to_string()])
        .args(["--new", &bench.new_tokens.to_string()])
        .args(["--batch", &batch.to_string()])
        .args(["--repeat", &bench.repeat.max(1).to_string()])
        .arg("--json-out")
        .arg(&out)
        // Its JSON comes back through the file; its console copy would only interleave.
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("could not start {python:?} for the PyTorch GPT-2 peer"))?;
    if !status.success() {
        bail!(
            "the PyTorch GPT-2 peer ({}) failed with {status}; it needs torch and transformers (pip install torch transformers)",
            script.display()
        );
    }
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    let v: Value = serde_json::from_str(&text)?;
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("gpt2.py's result lacks {k}"))
    };
    Ok(Figures {
        batch,
        load_s: num("load_s")?,
        prefill_s: num("prefill_s")?,
        generate_s: num("generate_s")?,
        peak_rss_mb: v["peak_rss_mb"].as_f64(),
    })
}

fn print_table(bench: &Gpt2Bench, backend: Backend, qkv: &[Figures], torch: &[Figures]) {
    let (p, n) = (bench.prompt_len, bench.new_tokens);
    println!(
        "\nGPT-2 ({p}-token prompt, {n} new tokens, greedy, KV cache); qkv on {backend}{}\n",
        if torch.is_empty() {
            ""
        } else {
            ", beside Hugging Face transformers (PyTorch)"
        }
    );
    println!(
        "| batch | side | load | prefill | prefill tok/s | generate | decode tok/s | peak RSS |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let row = |side: &str, f: &Figures| {
        println!(
            "| {} | {side} | {:.2} s | {:.3} s | {:.0} | {:.2} s | {} | {} |",
            f.batch,
            f.load_s,
            f.prefill_s,
            f.prefill_tok_s(p),
            f.generate_s,
            f.decode_tok_s(n)
                .map_or("n/a".into(), |r| format!("{r:.1}")),
            f.peak_rss_mb.map_or("n/a".into(), |m| format!("{m:.0} MB"))
        );
    };
    for (i, q) in qkv.iter().enumerate() {
        row("qkv", q);
        if let Some(t) = torch.get(i) {
            row("PyTorch", t);
            println!(
                "| | qkv ÷ PyTorch | {:.2}× | {:.2}× time | | | {} | {} |",
                q.load_s / t.load_s,
                q.prefill_s / t.prefill_s,
                match (q.decode_tok_s(n), t.decode_tok_s(n)) {
                    (Some(a), Some(b)) => format!("{:.2}× tok/s", a / b),
                    _ => "n/a".into(),
                },
                match (q.peak_rss_mb, t.peak_rss_mb) {
                    (Some(a), Some(b)) => format!("{:.2}×", a / b),
                    _ => String::new(),
                }
            );
        }
    }
}
