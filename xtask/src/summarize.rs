//! `cargo xtask summarize`: a summary of a text file by a GPT, with the GPT-2 paper's
//! zero-shot recipe ("TL;DR:" after the article, top-k 2, 100 tokens, the first 3 sentences).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use qkv_backends::Backend;
use qkv_transformer::{GenerationConfig, Sampling};

use crate::model::ModelSource;
use crate::sample::load_model;

/// The largest text file `summarize` reads.
const MAX_FILE_BYTES: u64 = 10 << 20;

/// Options of `cargo xtask summarize`.
#[derive(Debug, Args)]
pub struct SummarizeArgs {
    #[command(flatten)]
    source: ModelSource,
    /// The text file to summarise (UTF-8). Only its beginning is read when it is longer than
    /// the model's window allows.
    file: PathBuf,
    /// The prompt around the text; `{text}` marks where the text goes.
    #[arg(long, default_value = "{text}\nTL;DR:")]
    prompt_template: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 100)]
    tokens: usize,
    /// Sample from the k most likely tokens (the paper's 2).
    #[arg(long, default_value_t = 2)]
    top_k: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Keep this many sentences of the generated text (0: all of it).
    #[arg(long, default_value_t = 3)]
    sentences: usize,
    /// Where to compute: flex, ndarray or wgpu.
    #[arg(long, default_value = "flex")]
    backend: Backend,
}

/// Runs `cargo xtask summarize`.
pub fn run(args: SummarizeArgs) -> Result<()> {
    if args.prompt_template.matches("{text}").count() != 1 {
        bail!(
            "--prompt-template must contain {{text}} exactly once (where the text goes), for example \"{{text}}\\nTL;DR:\""
        );
    }
    if args.tokens == 0 || args.top_k == 0 {
        bail!("--tokens and --top-k must be at least 1");
    }
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?
        .len();
    if size > MAX_FILE_BYTES {
        bail!(
            "{} is {size} bytes; summarize reads text files up to {MAX_FILE_BYTES} bytes (and the model sees only its beginning anyway)",
            args.file.display()
        );
    }
    let bytes = std::fs::read(&args.file)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 text (first bad byte at offset {})",
            args.file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let device = args.backend.check()?;
    let (model, tokenizer) = load_model(&args.source.dir()?, &device)?;
    let Some(tokenizer) = tokenizer else {
        bail!("this model has no tokenizer.json, and summarize works on text");
    };
    let (before, after) = args
        .prompt_template
        .split_once("{text}")
        .expect("checked above");
    let head = tokenizer.encode(before)?;
    let tail = tokenizer.encode(after)?;
    let body = tokenizer.encode(text.trim())?;
    let room = model
        .block_size
        .checked_sub(head.len() + tail.len() + args.tokens)
        .filter(|&room| room > 0)
        .with_context(|| {
            format!(
                "the model's window is {} tokens: too small for the template and {} new tokens; ask for fewer --tokens",
                model.block_size,
                args.tokens
            )
        })?;
    if body.len() > room {
        eprintln!(
            "note: the text is {} tokens; the model reads its first {room} (its window is {} tokens, {} of them for the summary)",
            body.len(),
            model.block_size,
            args.tokens
        );
    }
    let prompt: Vec<u32> = [&head[..], &body[..body.len().min(room)], &tail[..]].concat();
    let config = GenerationConfig {
        sampling: Sampling::Random {
            temperature: 1.0,
            top_k: Some(args.top_k),
            top_p: None,
            seed: args.seed,
        },
        ..GenerationConfig::greedy(args.tokens)
    };
    let generated = model.generate(&[prompt], &config, |_, _| {})?;
    let summary = tokenizer.decode(&generated.tokens[0])?;
    println!("{}", first_sentences(summary.trim(), args.sentences));
    Ok(())
}

/// The first `n` sentences of `text` (all of it for 0): up to and including the `n`-th
/// `.`, `!` or `?` that ends the text or is followed by whitespace.
pub fn first_sentences(text: &str, n: usize) -> &str {
    if n == 0 {
        return text;
    }
    let mut seen = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let ends = matches!(c, '.' | '!' | '?')
            && chars.peek().is_none_or(|&(_, next)| next.is_whitespace());
        if ends {
            seen += 1;
            if seen == n {
                return &text[..i + c.len_utf8()];
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::first_sentences;

    #[test]
    fn sentences_end_at_stops_followed_by_space() {
        let text = "It rained. Mr. Smith left at 3.30 p.m. today! Why? Because.";
        assert_eq!(first_sentences(text, 1), "It rained.");
        assert_eq!(first_sentences(text, 2), "It rained. Mr.");
        // A naive splitter: "Mr." and "p.m." end sentences too; "3.30" does not.
        assert_eq!(
            first_sentences(text, 3),
            "It rained. Mr. Smith left at 3.30 p.m."
        );
        assert_eq!(
            first_sentences(text, 5),
            "It rained. Mr. Smith left at 3.30 p.m. today! Why?"
        );
        assert_eq!(first_sentences(text, 9), text);
        assert_eq!(first_sentences(text, 0), text);
        assert_eq!(first_sentences("no stop at all", 3), "no stop at all");
    }
}
