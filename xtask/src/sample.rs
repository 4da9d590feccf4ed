//! `cargo xtask sample`: generation from a qkv run, a Hugging Face GPT-2 directory or a
//! GPT-2 on the Hub, streamed as text with stop strings and a time limit.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;
use qkv_data::{TextStream, Tokenizer};
use qkv_transformer::{GenerationConfig, Gpt, GptConfig, Sampling};

use qkv_backends::Backend;

use crate::model::ModelSource;

/// Options of `cargo xtask sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    #[command(flatten)]
    source: ModelSource,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated: `--prompt-ids 464,2068,7586`.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// Pick the most likely token at each step.
    #[arg(long)]
    greedy: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep the most likely tokens up to this probability mass.
    #[arg(long)]
    top_p: Option<f64>,
    /// Sampling seed.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Stop after any of these token ids.
    #[arg(long, value_delimiter = ',')]
    stop_ids: Vec<u32>,
    /// Stop where the output first contains this text, which is not printed; repeatable.
    /// `\n`, `\t` and `\\` stand for a newline, a tab and a backslash:
    /// `--stop '\n\n' --stop "THE END"`.
    #[arg(long)]
    stop: Vec<String>,
    /// Stop after this many seconds of generation (the prompt's encoding included).
    #[arg(long)]
    max_time: Option<f64>,
    /// Print token ids instead of text.
    #[arg(long)]
    print_ids: bool,
    /// Recompute the whole context at every step instead of using the KV cache.
    #[arg(long)]
    no_cache: bool,
    /// Where to compute: flex, ndarray or wgpu.
    #[arg(long, default_value = "flex")]
    backend: Backend,
}

/// A model and, when there is one, its tokenizer.
pub fn load_model(dir: &Path, device: &Device) -> Result<(Gpt, Option<Tokenizer>)> {
    if dir.join("model_config.json").exists() {
        let text = std::fs::read_to_string(dir.join("model_config.json"))?;
        let config: GptConfig = serde_json::from_str(&text).context("reading model_config.json")?;
        // The config is checked (and its sizes bounded) before the checkpoint is looked for.
        let model = config.try_init(device)?;
        let weights = qkv_trainer::checkpoint::latest(dir)?.join("model.safetensors");
        let model = model.load_safetensors(&weights)?;
        let tokenizer = Tokenizer::load(&dir.join("tokenizer.json"))
            .context("reading the run's tokenizer.json")?;
        Ok((model, Some(tokenizer)))
    } else if dir.join("config.json").exists() && dir.join("model.safetensors").exists() {
        let (model, _) = qkv_transformer::gpt2::load_hf_gpt2(dir, device)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.exists() {
            Some(Tokenizer::load(&tokenizer_path)?)
        } else {
            None
        };
        Ok((model, tokenizer))
    } else {
        bail!(
            "{} is neither a qkv run directory (model_config.json, checkpoint/) nor a Hugging Face GPT-2 directory (config.json, model.safetensors)",
            dir.display()
        )
    }
}

/// The training config of a run directory and its data, opened as training saw it;
/// `purpose` names the command for the error when `dir` is not a run directory.
pub fn load_run_data(
    dir: &Path,
    purpose: &str,
) -> Result<(qkv_trainer::TrainConfig, qkv_trainer::BatchSource)> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "{purpose} needs a qkv run directory with config.json ({})",
            config_path.display()
        )
    })?;
    let config = qkv_trainer::TrainConfig::from_json(&text)?;
    // The run's own tokenizer, not one rebuilt from today's copy of the data.
    let tokenizer =
        Tokenizer::load(&dir.join("tokenizer.json")).context("reading the run's tokenizer.json")?;
    let source = qkv_trainer::BatchSource::open(&config, Path::new("data"), Some(tokenizer))?;
    Ok((config, source))
}

/// `\n`, `\t` and `\\` in a command-line string as a newline, a tab and a backslash;
/// any other backslash stays as it is.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some('t')) => {
                out.push('\t');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// A `--max-time` in seconds as a duration, refusing what is not a positive number.
pub fn max_time(seconds: Option<f64>) -> Result<Option<Duration>> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => bail!("--max-time {s} is not a positive number of seconds"),
    }
}

/// Runs `cargo xtask sample`.
pub fn run(args: SampleArgs) -> Result<()> {
    let device = args.backend.check()?;
    let limit = max_time(args.max_time)?;
    let (model, tokenizer) = load_model(&args.source.dir()?, &device)?;
    let prompt: Vec<u32> = match (&args.prompt_ids, &args.prompt, &tokenizer) {
        (Some(ids), _, _) => ids.clone(),
        (None, Some(text), Some(tokenizer)) => tokenizer.encode(text)?,
        (None, Some(_), None) => {
            bail!("this checkpoint has no tokenizer.json: give the prompt as --prompt-ids")
        }
        (None, None, Some(tokenizer)) => {
            tokenizer.encode("\n").or_else(|_| tokenizer.encode(" "))?
        }
        (None, None, None) => bail!("give a --prompt or --prompt-ids"),
    };
    let sampling = if args.greedy {
        Sampling::Greedy
    } else {
        Sampling::Random {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        }
    };
    let config = GenerationConfig {
        max_new_tokens: args.tokens,
        stop_tokens: args.stop_ids.clone(),
        sampling,
        use_cache: !args.no_cache,
        keep_logits: false,
        record_attention: false,
    };
    let print_ids = args.print_ids || tokenizer.is_none();
    if print_ids && !args.stop.is_empty() {
        bail!(
            "--stop works on text; with {} the output is token ids: use --stop-ids",
            if args.print_ids {
                "--print-ids"
            } else {
                "no tokenizer.json"
            }
        );
    }
    let mut stdout = std::io::stdout();
    if !print_ids && let (Some(tok), Some(_)) = (&tokenizer, &args.prompt) {
        write!(stdout, "{}", tok.decode(&prompt)?)?;
    }
    let mut stream = match (&tokenizer, print_ids) {
        (Some(tok), false) => {
            let stops: Vec<String> = args.stop.iter().map(|s| unescape(s)).collect();
            Some(TextStream::new(tok, &stops))
        }
        _ => None,
    };
    let started = Instant::now();
    let mut first = true;
    let mut failure = None;
    model.generate_with(&[prompt], &config, |_, token| {
        let mut flow = ControlFlow::Continue(());
        if let Some(stream) = &mut stream {
            match stream.push(token) {
                Ok(piece) => {
                    let _ = write!(stdout, "{}", piece.text);
                    if piece.stopped {
                        flow = ControlFlow::Break(());
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    flow = ControlFlow::Break(());
                }
            }
        } else {
            let _ = write!(stdout, "{}{token}", if first { "" } else { "," });
        }
        first = false;
        let _ = stdout.flush();
        if limit.is_some_and(|limit| started.elapsed() >= limit) {
            flow = ControlFlow::Break(());
        }
        flow
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    if let Some(stream) = &mut stream {
        write!(stdout, "{}", stream.finish()?)?;
    }
    writeln!(stdout)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn stop_strings_take_newline_tab_and_backslash_escapes() {
        assert_eq!(unescape(r"\n\n"), "\n\n");
        assert_eq!(unescape(r"a\tb\\n"), "a\tb\\n");
        assert_eq!(unescape(r"C:\dir"), r"C:\dir");
        assert_eq!(unescape("plain"), "plain");
    }
}
