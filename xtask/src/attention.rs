//! `cargo xtask attention`: see what every head attends to (PNG heatmaps, an interactive
//! HTML page with the head, model and neuron views and the logit lens, a JSON dump, and
//! Q/K/V/scores for one head), or measure each head's worth by ablation.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;
use qkv_data::{Split, Tokenizer};
use qkv_plot::Heatmap;
use qkv_transformer::interp::{HookPoint, logit_lens_report};
use qkv_transformer::{Gpt, SplitMix64, cross_entropy};

use crate::page::{AttentionView, LensSection, Page};

use crate::model::ModelSource;
use crate::sample::{load_model, load_run_data};
use qkv_backends::Backend;

/// Options of `cargo xtask attention`.
#[derive(Debug, Args)]
pub struct AttentionArgs {
    #[command(flatten)]
    source: ModelSource,
    /// The text whose attention to show (at most the model's block size in tokens).
    #[arg(long)]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    prompt_ids: Option<Vec<u32>>,
    /// Show only this layer.
    #[arg(long)]
    layer: Option<usize>,
    /// Show only this head; with `--layer`, also dump its Q, K, V and scores.
    #[arg(long)]
    head: Option<usize>,
    /// Where to write `attention.png`, `attention.html`, `attention.json` (default
    /// `<checkpoint>/attention`, or `runs/hub--<model>/attention`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Instead: zero one head at a time and print the change in validation loss.
    #[arg(long)]
    ablate: bool,
    /// Batches of validation data per ablation measurement.
    #[arg(long, default_value_t = 20)]
    ablate_batches: usize,
    /// Where to compute: flex, ndarray or wgpu.
    #[arg(long, default_value = "flex")]
    backend: Backend,
}

/// Runs `cargo xtask attention`.
pub fn run(args: AttentionArgs) -> Result<()> {
    let dir = args.source.dir()?;
    if crate::translate::is_translation_run(&dir) {
        if args.ablate || args.prompt_ids.is_some() || args.layer.is_some() || args.head.is_some() {
            bail!("on a translation run, attention takes --prompt TEXT (and --out) only");
        }
        let Some(text) = &args.prompt else {
            bail!("give the sentence to translate with --prompt");
        };
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| args.source.default_out("attention"));
        return crate::translate::cross_attention(&dir, text, &out, args.backend);
    }
    if args.ablate && args.ablate_batches == 0 {
        bail!("--ablate-batches must be at least 1: the loss of no batches is not a number");
    }
    let device = args.backend.check()?;
    if args.ablate && !args.source.is_local() {
        bail!(
            "--ablate measures the loss on a qkv run's validation data: give --checkpoint runs/NAME"
        );
    }
    let (model, tokenizer) = load_model(&dir, &device)?;
    if args.ablate {
        return ablate(&args, &dir, &model, &device);
    }
    let ids = crate::interp::prompt(
        &model,
        tokenizer.as_ref(),
        args.prompt.as_deref(),
        args.prompt_ids.as_deref(),
        "prompt",
    )?;
    // Every layer's and head's probabilities are kept, [T, T] each, in the model and again
    // in the page and the JSON.
    let heads = model.blocks.first().map_or(0, |b| b.attn.n_heads);
    let cells = (model.n_layers() * heads * ids.len() * ids.len()) as u64;
    qkv_transformer::limits::ensure_fits(
        cells.saturating_mul(4 * 3),
        &format!("the attention maps of a {}-token prompt", ids.len()),
        "give a shorter prompt, or --layer and --head",
    )?;
    let seq = ids.len();
    // What will be drawn and written, bounded before anything is computed: the page's
    // weights, and the overview PNG's side.
    let shown_layers = if args.layer.is_some() {
        1
    } else {
        model.n_layers()
    };
    let page_weights = shown_layers * heads * seq * seq;
    if page_weights > crate::page::MAX_PAGE_WEIGHTS {
        bail!(
            "the page would hold {page_weights} attention weights ({shown_layers} layers × {heads} heads × {seq} × {seq} tokens); it takes at most {}: give a shorter prompt, or --layer (and --head)",
            crate::page::MAX_PAGE_WEIGHTS
        );
    }
    let columns = if args.head.is_some() { 1 } else { heads };
    let panel_rows = shown_layers;
    let cell = overview_cell(seq, columns, panel_rows).with_context(|| {
        format!(
            "an overview of {panel_rows} × {columns} heads over {seq} tokens does not fit a readable PNG of at most {MAX_PNG_SIDE} pixels a side: give a shorter prompt, or --layer (and --head)"
        )
    })?;
    let labels: Vec<String> = ids
        .iter()
        .map(|&id| token_label(tokenizer.as_ref(), id))
        .collect();
    let x = Tensor::<2, Int>::from_data(
        TensorData::new(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, seq]),
        &device,
    );
    if let Some(layer) = args.layer
        && layer >= model.n_layers()
    {
        bail!(
            "--layer {layer}: this model has layers 0..{}",
            model.n_layers()
        );
    }
    let n_heads = model.blocks.first().map_or(0, |b| b.attn.n_heads);
    if let Some(head) = args.head
        && head >= n_heads
    {
        bail!("--head {head}: this model has heads 0..{n_heads}");
    }
    // The shown layers' patterns, queries and keys, through the hook points.
    let shown = |l: &usize| args.layer.is_none_or(|x| x == *l);
    let points = (0..model.n_layers()).filter(shown).flat_map(|l| {
        [
            HookPoint::Pattern(l),
            HookPoint::Query(l),
            HookPoint::Key(l),
        ]
    });
    let (_, cache) = model.run_with_cache(x.clone(), points)?;
    // [layer][head] = rows × width, row-major.
    let per_head = |point: HookPoint| -> Vec<Vec<f32>> {
        let t = cache.per_head(point).expect("recorded");
        let [_, heads, rows, width] = t.dims();
        let flat: Vec<f32> = t.into_data().try_into_vec_as().expect("floats");
        debug_assert_eq!(heads * rows * width, flat.len());
        flat.chunks(rows * width).map(|c| c.to_vec()).collect()
    };
    let layers = 0..model.n_layers();
    // Indexed by layer; layers not shown are not recorded and stay empty.
    let probs: Vec<Vec<Vec<f32>>> = layers
        .clone()
        .map(|l| {
            if shown(&l) {
                per_head(HookPoint::Pattern(l))
            } else {
                Vec::new()
            }
        })
        .collect();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.source.default_out("attention"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let keep =
        |l: usize, h: usize| args.layer.is_none_or(|x| x == l) && args.head.is_none_or(|x| x == h);
    let panels: Vec<(String, Vec<f32>)> = probs
        .iter()
        .enumerate()
        .flat_map(|(l, heads)| heads.iter().enumerate().map(move |(h, p)| (l, h, p)))
        .filter(|&(l, h, _)| keep(l, h))
        .map(|(l, h, p)| (format!("layer {l} head {h}"), p.clone()))
        .collect();

    let heatmap = Heatmap {
        title: format!(
            "attention: rows are queries, columns the keys they look at ({} tokens)",
            seq
        ),
        panels,
        columns,
        row_labels: labels.iter().map(|l| short(l)).collect(),
        col_labels: labels.iter().map(|l| short(l)).collect(),
        cell,
    };
    heatmap
        .render()
        .save(&out.join("attention.png"))
        .context("writing attention.png")?;
    let title = format!("qkv attention: {}", args.source.label());
    let first_layer = args.layer.unwrap_or(0);
    let d_head = model.blocks.first().map_or(0, |b| b.attn.d_head());
    let view = AttentionView {
        name: "self-attention".into(),
        queries: labels.clone(),
        keys: labels.clone(),
        first_layer,
        probs: layers
            .clone()
            .filter(shown)
            .map(|l| probs[l].clone())
            .collect(),
        q: layers
            .clone()
            .filter(shown)
            .map(|l| per_head(HookPoint::Query(l)))
            .collect(),
        k: layers
            .clone()
            .filter(shown)
            .map(|l| per_head(HookPoint::Key(l)))
            .collect(),
        d_head,
    };
    let targets: Vec<Option<u32>> = ids[1..].iter().map(|&t| Some(t)).chain([None]).collect();
    let report = logit_lens_report(&model, &ids, &targets, 1)?;
    let lens = LensSection::from_report(&report, labels.clone(), |id| {
        token_label(tokenizer.as_ref(), id)
    });
    let page = Page {
        title: title.clone(),
        views: vec![view],
        lens: Some(lens),
        patch: None,
    };
    std::fs::write(out.join("attention.html"), page.html()?).context("writing attention.html")?;
    let shown_probs: Vec<&Vec<Vec<f32>>> =
        layers.clone().filter(shown).map(|l| &probs[l]).collect();
    let json = serde_json::json!({
        "tokens": labels,
        "ids": ids,
        "first_layer": first_layer,
        "probs": shown_probs,
    });
    std::fs::write(out.join("attention.json"), serde_json::to_string(&json)?)
        .context("writing attention.json")?;
    if let (Some(layer), Some(head)) = (args.layer, args.head) {
        write_head_dump(
            &model,
            x,
            layer,
            head,
            &labels,
            &out.join(format!("layer{layer}-head{head}.json")),
        )?;
    }
    println!(
        "wrote {}/attention.png, attention.html, attention.json",
        out.display()
    );
    println!(
        "\nwhere the last token ({:?}) looks, per head:",
        labels[seq - 1]
    );
    for (l, heads) in probs.iter().enumerate() {
        for (h, p) in heads.iter().enumerate() {
            if !keep(l, h) {
                continue;
            }
            let row = &p[(seq - 1) * seq..seq * seq];
            let (best, w) = row
                .iter()
                .enumerate()
                .fold((0, 0.0f32), |b, (j, &w)| if w > b.1 { (j, w) } else { b });
            println!(
                "  layer {l} head {h}: {:>5.1}% on token {best} {:?}",
                w * 100.0,
                labels[best]
            );
        }
    }
    Ok(())
}

/// Q, K, V, raw scores and probabilities of one head, as JSON.
fn write_head_dump(
    model: &Gpt,
    x: Tensor<2, Int>,
    layer: usize,
    head: usize,
    labels: &[String],
    path: &Path,
) -> Result<()> {
    let seen = model.inspect_layer(x, layer)?;
    let pick = |t: Tensor<4>| -> Vec<Vec<f32>> {
        let [_, _, rows, cols] = t.dims();
        let flat: Vec<f32> = t
            .slice(s![0..1, head..head + 1, .., ..])
            .into_data()
            .try_into_vec_as()
            .expect("floats");
        (0..rows)
            .map(|r| flat[r * cols..(r + 1) * cols].to_vec())
            .collect()
    };
    let json = serde_json::json!({
        "layer": layer, "head": head, "tokens": labels,
        "q": pick(seen.q), "k": pick(seen.k), "v": pick(seen.v),
        "scores_scaled_unmasked": pick(seen.scores), "probs": pick(seen.probs),
    });
    std::fs::write(path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// A token's text, or `#id` without a tokenizer.
pub(crate) fn token_label(tokenizer: Option<&Tokenizer>, id: u32) -> String {
    tokenizer
        .and_then(|t| t.decode(&[id]).ok())
        .unwrap_or_else(|| format!("#{id}"))
}

/// The longest side of the overview PNG, in pixels.
pub(crate) const MAX_PNG_SIDE: usize = 8192;

/// The side of one heatmap cell for `panel_rows × columns` panels of `seq × seq` cells: a
/// 640-pixel panel when that allows 8 to 28 pixels a cell, smaller so the whole image stays
/// within [`MAX_PNG_SIDE`], and `None` below 2 pixels (no longer readable).
pub(crate) fn overview_cell(seq: usize, columns: usize, panel_rows: usize) -> Option<usize> {
    // Per panel besides its cells: labels of up to 6 characters (about 48 px), margins.
    const PANEL_EXTRA: usize = 48 + 32;
    let fit =
        |panels: usize| (MAX_PNG_SIDE / panels.max(1)).saturating_sub(PANEL_EXTRA) / seq.max(1);
    let cell = (640 / seq.max(1))
        .clamp(8, 28)
        .min(fit(columns))
        .min(fit(panel_rows));
    (cell >= 2).then_some(cell)
}

/// A label for the heatmap axes: visible whitespace, at most 6 characters.
pub(crate) fn short(label: &str) -> String {
    let shown = label.replace('\n', "\\n").replace(' ', "_");
    shown.chars().take(6).collect()
}

/// Zeroes each head in turn and prints the change in validation loss.
fn ablate(args: &AttentionArgs, dir: &Path, model: &Gpt, device: &Device) -> Result<()> {
    let (config, source) = load_run_data(dir, "--ablate")?;
    let batches: Vec<_> = {
        let mut rng = SplitMix64::new(0xab1a7e);
        (0..args.ablate_batches)
            .map(|_| {
                source.batch(
                    Split::Val,
                    config.batch_size,
                    config.model.block_size,
                    &mut |n| rng.below(n),
                )
            })
            .collect()
    };
    let loss_of = |m: &Gpt| -> f64 {
        let total: f64 = batches
            .iter()
            .map(|b| {
                let (x, y) = qkv_trainer::tensors(b, device);
                cross_entropy(m.forward(x), y, Some(qkv_data::IGNORE)).into_scalar::<f32>() as f64
            })
            .sum();
        total / batches.len() as f64
    };
    let base = loss_of(model);
    let n_heads = model.blocks[0].attn.n_heads;
    println!(
        "validation loss with every head: {base:.4} ({} batches of {})\n",
        batches.len(),
        config.batch_size
    );
    println!("| layer | head | val loss without it | change |");
    println!("|---:|---:|---:|---:|");
    for layer in 0..model.n_layers() {
        for head in 0..n_heads {
            let ablated = model.clone().ablate_head(layer, head)?;
            let loss = loss_of(&ablated);
            println!("| {layer} | {head} | {loss:.4} | {:+.4} |", loss - base);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{MAX_PNG_SIDE, overview_cell};

    #[test]
    fn the_overview_png_stays_within_its_side_or_is_refused() {
        // A small model keeps the comfortable 640-pixel panels.
        assert_eq!(overview_cell(10, 4, 2), Some(28));
        assert_eq!(overview_cell(64, 4, 4), Some(10));
        // GPT-2's 12 × 12 heads at 64 tokens: smaller cells, inside the side limit.
        let cell = overview_cell(64, 12, 12).unwrap();
        assert!(cell >= 2 && 12 * (64 * cell + 80) <= MAX_PNG_SIDE, "{cell}");
        // One layer's 12 heads over 300 tokens still fit; the whole model over 1024 does not.
        assert_eq!(overview_cell(300, 12, 1), Some(2));
        assert_eq!(overview_cell(1024, 12, 12), None);
    }
}
