//! `cargo xtask sample`: generation from a qkv run or a Hugging Face GPT-2 directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;
use qkv_data::Tokenizer;
use qkv_transformer::{GenerationConfig, Gpt, GptConfig, Sampling};

use qkv_backends::Backend;

/// Options of `cargo xtask sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A run directory (`runs/NAME`) or a Hugging Face GPT-2 directory (`config.json`,
    /// `model.safetensors`, optionally `tokenizer.json`).
    #[arg(long)]
    checkpoint: PathBuf,
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

/// Runs `cargo xtask sample`.
pub fn run(args: SampleArgs) -> Result<()> {
    let device = args.backend.check()?;
    let (model, tokenizer) = load_model(&args.checkpoint, &device)?;
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
    let mut stdout = std::io::stdout();
    if !print_ids && let (Some(tok), Some(_)) = (&tokenizer, &args.prompt) {
        write!(stdout, "{}", tok.decode(&prompt)?)?;
    }
    let mut first = true;
    model.generate(&[prompt], &config, |_, token| {
        if print_ids {
            let _ = write!(stdout, "{}{token}", if first { "" } else { "," });
        } else if let Some(tok) = &tokenizer {
            let _ = write!(stdout, "{}", tok.decode(&[token]).unwrap_or_default());
        }
        first = false;
        let _ = stdout.flush();
    })?;
    writeln!(stdout)?;
    Ok(())
}
