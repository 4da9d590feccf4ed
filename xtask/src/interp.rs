//! `cargo xtask lens`, `patch` and `attribute`: the logit lens, activation patching and
//! direct logit attribution of a trained GPT (a run directory or a Hugging Face GPT-2
//! directory), printed as tables and written as PNG heatmaps and JSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use qkv_backends::Backend;
use qkv_data::Tokenizer;
use qkv_plot::Heatmap;
use qkv_transformer::Gpt;
use qkv_transformer::interp::{activation_patching, direct_logit_attribution, logit_lens_report};

use crate::attention::{short, token_label};
use crate::model::ModelSource;
use crate::page::{LensSection, Page, PatchSection};
use crate::sample::load_model;

/// The model and prompt options every inspection command takes.
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(flatten)]
    source: ModelSource,
    /// Where to compute: flex, ndarray or wgpu.
    #[arg(long, default_value = "flex")]
    backend: Backend,
    /// Where to write the PNG and JSON files (default `<checkpoint>/<command>`, or
    /// `runs/hub--<model>/<command>`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Options of `cargo xtask lens`.
#[derive(Debug, Args)]
pub struct LensArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to read.
    #[arg(long)]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    prompt_ids: Option<Vec<u32>>,
    /// The token expected after the prompt (text of one token, or `#id`); each earlier
    /// position's target is the prompt's next token.
    #[arg(long)]
    answer: Option<String>,
    /// How many of the most probable tokens to print per stage.
    #[arg(long, default_value_t = 3)]
    top: usize,
}

/// Options of `cargo xtask patch`.
#[derive(Debug, Args)]
pub struct PatchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The clean prompt (text).
    #[arg(long)]
    clean: Option<String>,
    /// The clean prompt as token ids.
    #[arg(long, value_delimiter = ',', conflicts_with = "clean")]
    clean_ids: Option<Vec<u32>>,
    /// The corrupted prompt (text), as long in tokens as the clean one.
    #[arg(long)]
    corrupted: Option<String>,
    /// The corrupted prompt as token ids.
    #[arg(long, value_delimiter = ',', conflicts_with = "corrupted")]
    corrupted_ids: Option<Vec<u32>>,
    /// The clean prompt's answer (text of one token, or `#id`).
    #[arg(long)]
    answer: String,
    /// The corrupted prompt's answer, the token the logit difference is measured against.
    #[arg(long)]
    wrong: String,
}

/// Options of `cargo xtask attribute`.
#[derive(Debug, Args)]
pub struct AttributeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to read.
    #[arg(long)]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    prompt_ids: Option<Vec<u32>>,
    /// The token whose logit to split (text of one token, or `#id`; default: the model's
    /// most likely next token).
    #[arg(long)]
    token: Option<String>,
    /// The position to read (default: the last).
    #[arg(long)]
    position: Option<usize>,
}

/// Longest prompt the patching command takes: it runs `n_layers · (n_heads + seq + 2) + 2`
/// forward passes.
const MAX_PATCH_TOKENS: usize = 256;

struct Loaded {
    model: Gpt,
    tokenizer: Option<Tokenizer>,
    out: PathBuf,
}

fn load(args: &ModelArgs, command: &str) -> Result<Loaded> {
    let dir = args.source.dir()?;
    if crate::translate::is_translation_run(&dir) {
        bail!(
            "{command} reads GPT models; {} is a translation run (see `attention` for its cross-attention)",
            dir.display()
        );
    }
    let device = args.backend.check()?;
    let (model, tokenizer) = load_model(&dir, &device)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.source.default_out(command));
    Ok(Loaded {
        model,
        tokenizer,
        out,
    })
}

/// The prompt's token ids from `--<flag>` or `--<flag>-ids`, checked against the model: not
/// empty, within its block size and its vocabulary. `attention` takes its prompt this way too.
pub(crate) fn prompt(
    model: &Gpt,
    tokenizer: Option<&Tokenizer>,
    text: Option<&str>,
    ids: Option<&[u32]>,
    flag: &str,
) -> Result<Vec<u32>> {
    let ids = match (ids, text, tokenizer) {
        (Some(ids), _, _) => ids.to_vec(),
        (None, Some(text), Some(tok)) => tok.encode(text)?,
        (None, Some(_), None) => bail!("this checkpoint has no tokenizer.json: give --{flag}-ids"),
        (None, None, _) => bail!("give --{flag} (or --{flag}-ids)"),
    };
    if ids.is_empty() {
        bail!("--{flag} is empty");
    }
    if ids.len() > model.block_size {
        bail!(
            "--{flag} has {} tokens; this model sees at most {} (its block size)",
            ids.len(),
            model.block_size
        );
    }
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= model.vocab_size) {
        bail!(
            "--{flag}: token id {bad} is outside the vocabulary (vocab_size {})",
            model.vocab_size
        );
    }
    Ok(ids)
}

/// One token from `#id` or from text that the tokenizer turns into exactly one token.
fn one_token(loaded: &Loaded, spec: &str, flag: &str) -> Result<u32> {
    let id = if let Some(id) = spec.strip_prefix('#') {
        id.parse::<u32>()
            .with_context(|| format!("--{flag} {spec:?}: after '#' comes a token id"))?
    } else {
        let Some(tok) = &loaded.tokenizer else {
            bail!("this checkpoint has no tokenizer.json: give --{flag} as #<token id>");
        };
        let ids = tok.encode(spec)?;
        match ids.as_slice() {
            [id] => *id,
            _ => bail!(
                "--{flag} {spec:?} is {} tokens ({ids:?}); give one token, or #<token id>",
                ids.len()
            ),
        }
    };
    if id as usize >= loaded.model.vocab_size {
        bail!(
            "--{flag}: token id {id} is outside the vocabulary (vocab_size {})",
            loaded.model.vocab_size
        );
    }
    Ok(id)
}

fn label(loaded: &Loaded, id: u32) -> String {
    token_label(loaded.tokenizer.as_ref(), id).replace('\n', "\\n")
}

fn write(out: &Path, name: &str, bytes: impl AsRef<[u8]>) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn save_png(out: &Path, name: &str, heatmap: &Heatmap) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    heatmap
        .render()
        .save(&out.join(name))
        .with_context(|| format!("writing {}", out.join(name).display()))
}

/// Runs `cargo xtask lens`.
pub fn lens(args: LensArgs) -> Result<()> {
    let loaded = load(&args.model, "lens")?;
    let ids = prompt(
        &loaded.model,
        loaded.tokenizer.as_ref(),
        args.prompt.as_deref(),
        args.prompt_ids.as_deref(),
        "prompt",
    )?;
    if args.top == 0 {
        bail!("--top must be at least 1");
    }
    let answer = args
        .answer
        .as_deref()
        .map(|a| one_token(&loaded, a, "answer"))
        .transpose()?;
    let targets: Vec<Option<u32>> = ids[1..].iter().map(|&t| Some(t)).chain([answer]).collect();
    let report = logit_lens_report(&loaded.model, &ids, &targets, args.top)?;
    let labels: Vec<String> = ids.iter().map(|&id| label(&loaded, id)).collect();
    let seq = ids.len();

    println!("logit lens: the stream after each stage, read as the next token\n");
    println!("| stage | top at the last position | rank of the target there |");
    println!("|---|---|---:|");
    for (s, stage) in report.stages.iter().enumerate() {
        let top: Vec<String> = report.top[s][seq - 1]
            .iter()
            .map(|t| format!("{:?} {:.1}%", label(&loaded, t.id), t.prob * 100.0))
            .collect();
        let rank = match report.target[s][seq - 1] {
            Some((rank, p)) => format!("{rank} ({:.1}%)", p * 100.0),
            None => "-".into(),
        };
        println!("| {stage} | {} | {rank} |", top.join(", "));
    }
    // [stage × position]: the probability of each position's target.
    let cells: Vec<f32> = report
        .target
        .iter()
        .flat_map(|row| row.iter().map(|t| t.map_or(0.0, |(_, p)| p)))
        .collect();
    let heatmap = Heatmap {
        title: "logit lens: probability of the next token, per stage (rows) and position".into(),
        panels: vec![("target probability".into(), cells)],
        columns: 1,
        row_labels: report
            .stages
            .iter()
            .map(|s| s.replace("block ", "L"))
            .collect(),
        col_labels: labels.iter().map(|l| short(l)).collect(),
        cell: (640 / seq).clamp(8, 28),
    };
    save_png(&loaded.out, "lens.png", &heatmap)?;
    let page = Page {
        title: format!("qkv logit lens: {}", args.model.source.label()),
        lens: Some(LensSection::from_report(&report, labels.clone(), |id| {
            label(&loaded, id)
        })),
        ..Page::default()
    };
    write(&loaded.out, "lens.html", page.html()?)?;
    let json = serde_json::json!({ "tokens": labels, "ids": ids, "report": report });
    write(&loaded.out, "lens.json", serde_json::to_string(&json)?)?;
    println!(
        "\nwrote {}/lens.png, lens.html, lens.json",
        loaded.out.display()
    );
    Ok(())
}

/// Runs `cargo xtask patch`.
pub fn patch(args: PatchArgs) -> Result<()> {
    let loaded = load(&args.model, "patch")?;
    let clean = prompt(
        &loaded.model,
        loaded.tokenizer.as_ref(),
        args.clean.as_deref(),
        args.clean_ids.as_deref(),
        "clean",
    )?;
    let corrupted = prompt(
        &loaded.model,
        loaded.tokenizer.as_ref(),
        args.corrupted.as_deref(),
        args.corrupted_ids.as_deref(),
        "corrupted",
    )?;
    if clean.len() > MAX_PATCH_TOKENS {
        bail!(
            "the prompts have {} tokens; patching takes at most {MAX_PATCH_TOKENS} (one forward pass per position and layer)",
            clean.len()
        );
    }
    let answer = one_token(&loaded, &args.answer, "answer")?;
    let wrong = one_token(&loaded, &args.wrong, "wrong")?;
    let result = activation_patching(&loaded.model, &clean, &corrupted, answer, wrong)?;
    let labels: Vec<String> = clean.iter().map(|&id| label(&loaded, id)).collect();
    let n_layers = loaded.model.n_layers();
    let n_heads = result.heads.first().map_or(0, Vec::len);

    println!(
        "logit({:?}) − logit({:?}) at the last position: clean {:.3}, corrupted {:.3}",
        label(&loaded, answer),
        label(&loaded, wrong),
        result.clean_difference,
        result.corrupted_difference
    );
    println!("fraction of that gap each patch restores (1 = all of it):\n");
    let mut header = "| layer | attention | MLP |".to_string();
    for h in 0..n_heads {
        header.push_str(&format!(" head {h} |"));
    }
    println!("{header}");
    println!("{}", "|---:".repeat(3 + n_heads) + "|");
    for l in 0..n_layers {
        let mut line = format!(
            "| {l} | {:.3} | {:.3} |",
            result.attn_out[l], result.mlp_out[l]
        );
        for r in &result.heads[l] {
            line.push_str(&format!(" {r:.3} |"));
        }
        println!("{line}");
    }
    let (best, value) = result
        .heads
        .iter()
        .enumerate()
        .flat_map(|(l, hs)| hs.iter().enumerate().map(move |(h, &r)| ((l, h), r)))
        .fold(((0, 0), f32::MIN), |b, x| if x.1 > b.1 { x } else { b });
    println!(
        "\nthe head that restores most: layer {} head {} ({value:.3})",
        best.0, best.1
    );

    // Fractions are shown clamped to [0, 1]; the JSON holds the exact values.
    let clamp = |v: &f32| v.clamp(0.0, 1.0);
    let heads = Heatmap {
        title: "patching: fraction restored by each head (rows: layers)".into(),
        panels: vec![(
            "heads".into(),
            result.heads.iter().flatten().map(clamp).collect(),
        )],
        columns: 1,
        row_labels: (0..n_layers).map(|l| format!("L{l}")).collect(),
        col_labels: (0..n_heads).map(|h| format!("H{h}")).collect(),
        cell: 28,
    };
    save_png(&loaded.out, "patch-heads.png", &heads)?;
    let stream = Heatmap {
        title: "patching: the stream entering each block (rows) at each position".into(),
        panels: vec![(
            "resid_pre".into(),
            result.resid_pre.iter().flatten().map(clamp).collect(),
        )],
        columns: 1,
        row_labels: (0..n_layers).map(|l| format!("L{l}")).collect(),
        col_labels: labels.iter().map(|l| short(l)).collect(),
        cell: (640 / clean.len()).clamp(8, 28),
    };
    save_png(&loaded.out, "patch-positions.png", &stream)?;
    let page = Page {
        title: format!("qkv activation patching: {}", args.model.source.label()),
        patch: Some(PatchSection {
            tokens: labels.clone(),
            metric: format!(
                "logit({:?}) − logit({:?})",
                label(&loaded, answer),
                label(&loaded, wrong)
            ),
            heads: result.heads.clone(),
            resid_pre: result.resid_pre.clone(),
        }),
        ..Page::default()
    };
    write(&loaded.out, "patch.html", page.html()?)?;
    let json = serde_json::json!({
        "tokens": labels, "clean": clean, "corrupted": corrupted,
        "answer": answer, "wrong": wrong, "result": result,
    });
    write(&loaded.out, "patch.json", serde_json::to_string(&json)?)?;
    println!(
        "wrote {}/patch-heads.png, patch-positions.png, patch.html, patch.json",
        loaded.out.display()
    );
    Ok(())
}

/// Runs `cargo xtask attribute`.
pub fn attribute(args: AttributeArgs) -> Result<()> {
    let loaded = load(&args.model, "attribute")?;
    let ids = prompt(
        &loaded.model,
        loaded.tokenizer.as_ref(),
        args.prompt.as_deref(),
        args.prompt_ids.as_deref(),
        "prompt",
    )?;
    let position = args.position.unwrap_or(ids.len() - 1);
    if position >= ids.len() {
        bail!(
            "--position {position}: the prompt has positions 0..{}",
            ids.len()
        );
    }
    let token = match &args.token {
        Some(spec) => one_token(&loaded, spec, "token")?,
        None => {
            let report = logit_lens_report(&loaded.model, &ids, &vec![None; ids.len()], 1)?;
            report.top[loaded.model.n_layers()][position][0].id
        }
    };
    let a = direct_logit_attribution(&loaded.model, &ids, position, token)?;
    println!(
        "the logit of {:?} after {:?} (position {position}): {:.3}",
        label(&loaded, token),
        label(&loaded, ids[position]),
        a.logit
    );
    println!("\n| part | contribution |");
    println!("|---|---:|");
    println!("| embeddings | {:+.3} |", a.embed);
    for (l, heads) in a.heads.iter().enumerate() {
        for (h, c) in heads.iter().enumerate() {
            println!("| layer {l} head {h} | {c:+.3} |");
        }
        println!("| layer {l} attention bias | {:+.3} |", a.attn_bias[l]);
        println!("| layer {l} MLP | {:+.3} |", a.mlps[l]);
    }
    println!("| final LayerNorm bias | {:+.3} |", a.final_bias);
    println!("| **sum** | {:+.3} |", a.total());
    let json = serde_json::json!({
        "tokens": ids.iter().map(|&id| label(&loaded, id)).collect::<Vec<_>>(),
        "ids": ids, "attribution": a,
    });
    write(&loaded.out, "attribute.json", serde_json::to_string(&json)?)?;
    println!("\nwrote {}/attribute.json", loaded.out.display());
    Ok(())
}
