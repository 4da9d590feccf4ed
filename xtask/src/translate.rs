//! The encoder–decoder from the command line: `cargo xtask train --task translate` trains it
//! on a built-in task, `cargo xtask translate` uses it, and `cargo xtask attention` on a
//! translation run draws the cross-attention alignment (see [`cross_attention`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;
use qkv_backends::Backend;
use qkv_data::translate::BOS;
use qkv_plot::Heatmap;
use qkv_trainer::translate::{Translator, load_translator};
use qkv_transformer::interp::{DecoderPoint, EncoderPoint, Seq2SeqPoint};

/// Whether `dir` holds a translation run (rather than a language model).
pub fn is_translation_run(dir: &Path) -> bool {
    dir.join("translate.json").is_file()
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
    // Row i is the step that chose token i: the decoder read `<bos>` and the tokens before
    // it. A translation that ended with `<eos>` has one more row (the step that chose it); one
    // cut off at the length limit has none, and its last token was never read back.
    let read = match translation.finished {
        true => &translation.tokens[..],
        false => &translation.tokens[..translation.tokens.len().saturating_sub(1)],
    };
    let layers = translator
        .model
        .cross_attention(&source, read, BOS, &device)?;
    let vocab = &translator.vocab;
    let col_labels: Vec<String> = source.iter().map(|&t| vocab.token(t).to_string()).collect();
    let mut row_labels: Vec<String> = translation
        .tokens
        .iter()
        .map(|&t| vocab.token(t).to_string())
        .collect();
    if translation.finished {
        row_labels.push("<eos>".into());
    }
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
    // The encoder's and the decoder's self-attention too, through the hook points, on the
    // same source and the decoder input that produced the translation.
    let mut decoder_input = vec![BOS as i64];
    decoder_input.extend(read.iter().map(|&t| t as i64));
    let steps = decoder_input.len();
    let src = Tensor::<2, Int>::from_data(
        TensorData::new(
            source.iter().map(|&t| t as i64).collect::<Vec<_>>(),
            [1, source.len()],
        ),
        &device,
    );
    let tgt = Tensor::<2, Int>::from_data(TensorData::new(decoder_input, [1, steps]), &device);
    let model = &translator.model;
    let (n_enc, n_dec) = (model.encoder.len(), model.decoder.len());
    let points = (0..n_enc)
        .map(|l| Seq2SeqPoint::Encoder(l, EncoderPoint::Pattern))
        .chain((0..n_dec).map(|l| Seq2SeqPoint::Decoder(l, DecoderPoint::SelfPattern)));
    let (_, cache) = model.run_with_cache(src, tgt, points)?;
    let patterns = |point: Seq2SeqPoint| -> Vec<Vec<f32>> {
        let t = cache.per_head(point).expect("recorded");
        let [_, _, rows, cols] = t.dims();
        let flat: Vec<f32> = t.into_data().try_into_vec_as().expect("float probs");
        flat.chunks(rows * cols).map(|c| c.to_vec()).collect()
    };
    let mut inputs = vec!["<bos>".to_string()];
    inputs.extend(read.iter().map(|&t| vocab.token(t).to_string()));
    let view =
        |name: &str, queries: &[String], keys: &[String], probs| crate::page::AttentionView {
            name: name.into(),
            queries: queries.to_vec(),
            keys: keys.to_vec(),
            first_layer: 0,
            probs,
            q: Vec::new(),
            k: Vec::new(),
            d_head: 0,
        };
    let page = crate::page::Page {
        title: format!("qkv translation attention: {text:?} -> {answer:?}"),
        views: vec![
            view(
                "encoder self-attention",
                &col_labels,
                &col_labels,
                (0..n_enc)
                    .map(|l| patterns(Seq2SeqPoint::Encoder(l, EncoderPoint::Pattern)))
                    .collect(),
            ),
            view(
                "decoder self-attention (rows: the step that chose each token; columns: the decoder's input)",
                &row_labels,
                &inputs,
                (0..n_dec)
                    .map(|l| patterns(Seq2SeqPoint::Decoder(l, DecoderPoint::SelfPattern)))
                    .collect(),
            ),
            view(
                "cross-attention (rows: the step that chose each token; columns: the source)",
                &row_labels,
                &col_labels,
                dump.clone(),
            ),
        ],
        ..Default::default()
    };
    std::fs::write(out.join("cross_attention.html"), page.html()?)
        .context("writing cross_attention.html")?;
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
        "wrote {}/cross_attention.png, cross_attention.html and cross_attention.json",
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
