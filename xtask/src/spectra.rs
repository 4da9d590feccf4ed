//! `cargo xtask spectra`: the spectra of every head's Query and Key matrices, for a trained
//! model and for a random initialisation of the same architecture, to test the claim that
//! "the eigenvalues and eigenvectors of Q and K tend to be similar" (see
//! `qkv_transformer::interp::spectra` for what each figure means).
//!
//! Accepts a GPT run (`train`), an encoder–decoder run (`train --task translate`), a Hugging
//! Face GPT-2 directory, or a GPT-2 on the Hub (`--model gpt2`). Writes `spectra.json` (every
//! head's singular values, cosines and eigenvalues), `spectra.md` (the table) and three plots.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::prelude::*;
use clap::Args;
use qkv_backends::Backend;
use qkv_plot::{Heatmap, LinePlot, Rgb, Series};
use qkv_trainer::Task;
use qkv_trainer::translate::{TranslationRun, load_translator};
use qkv_transformer::GptConfig;
use qkv_transformer::interp::spectra::{
    HeadSpectrum, SpectraSummary, gpt_spectra, mean_of, seq2seq_spectra,
};
use serde_json::json;

use crate::model::ModelSource;
use crate::sample::load_model;

/// Options of `cargo xtask spectra`.
#[derive(Debug, Args)]
pub struct SpectraArgs {
    #[command(flatten)]
    source: ModelSource,
    /// Seed of the random initialisation measured beside the model.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Where to compute: flex, ndarray, wgpu, vulkan, cuda.
    #[arg(long, default_value = "flex")]
    backend: Backend,
    /// Where to write (default `<checkpoint>/spectra`, or `runs/hub--<model>/spectra`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The heads of the model and of a fresh initialisation of it, and what it is.
struct Measured {
    trained: Vec<HeadSpectrum>,
    init: Vec<HeadSpectrum>,
    what: String,
}

fn measure(dir: &Path, seed: u64, device: &Device) -> Result<Measured> {
    if dir.join("translate.json").is_file() {
        let translator = load_translator(dir, device)?;
        let task = TranslationRun::new(translator.config.clone())?;
        device.seed(seed);
        let init = task.init_model(device)?;
        return Ok(Measured {
            trained: seq2seq_spectra(&translator.model),
            init: seq2seq_spectra(&init),
            what: format!("encoder-decoder ({:?})", translator.task),
        });
    }
    let (model, _) = load_model(dir, device)?;
    let config: GptConfig = if dir.join("model_config.json").is_file() {
        serde_json::from_str(&std::fs::read_to_string(dir.join("model_config.json"))?)
            .context("reading model_config.json")?
    } else {
        qkv_transformer::gpt2::gpt2_config_from_hf(&dir.join("config.json"))?
    };
    device.seed(seed);
    let init = config.try_init(device)?;
    Ok(Measured {
        trained: gpt_spectra(&model),
        init: gpt_spectra(&init),
        what: format!(
            "GPT, {} layers, {} heads, {} wide, {:?} positions",
            config.n_layers, config.n_heads, config.d_model, config.positional
        ),
    })
}

/// Runs `cargo xtask spectra`.
pub fn run(args: SpectraArgs) -> Result<()> {
    let device = args.backend.check()?;
    let dir = args.source.dir()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.source.default_out("spectra"));
    let m = measure(&dir, args.seed, &device)?;
    let (trained, init) = (SpectraSummary::of(&m.trained), SpectraSummary::of(&m.init));
    let d_ratio = m
        .trained
        .first()
        .map(|h| h.sigma_q.len() as f64 / h.d_model as f64)
        .unwrap_or(0.0);

    let mut table = format!(
        "{}: {}\n\n| head | σ_Q top | σ_K top | spectrum distance | mean cos | top-vector cos | symmetry | positive mass | Re λ > 0 mass |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        args.source.label(),
        m.what
    );
    for h in &m.trained {
        table += &format!(
            "| {}.{} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} | {:.3} | {:.3} |\n",
            h.module,
            h.head,
            h.sigma_q.first().copied().unwrap_or(0.0),
            h.sigma_k.first().copied().unwrap_or(0.0),
            h.spectrum_distance,
            mean_of(&h.principal_cosines),
            h.top_vector_alignment,
            h.symmetry,
            h.positive_mass,
            h.positive_eigen_mass
        );
    }
    table += "\nMeans over heads:\n\n| weights | spectrum distance | mean cos | top-vector cos | symmetry | positive mass | Re λ > 0 mass |\n|---|---:|---:|---:|---:|---:|---:|\n";
    for (name, s) in [("trained", trained), ("random init", init)] {
        table += &format!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:+.3} | {:.3} | {:.3} |\n",
            s.spectrum_distance,
            s.mean_principal_cosine,
            s.top_vector_alignment,
            s.symmetry,
            s.positive_mass,
            s.positive_eigen_mass
        );
    }
    table += &format!(
        "\nTwo random subspaces of these sizes have a root-mean-square cosine of √(d_head/d_model) = {:.3}.\n",
        d_ratio.sqrt()
    );
    print!("{table}");

    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        std::fs::write(out.join(name), bytes)
            .with_context(|| format!("writing {}", out.join(name).display()))
    };
    write("spectra.md", table.as_bytes())?;
    let report = json!({
        "model": args.source.label(),
        "what": m.what,
        "seed": args.seed,
        "summary": {"trained": trained, "init": init},
        "heads": {"trained": m.trained, "init": m.init},
    });
    write(
        "spectra.json",
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    write("spectra-heads.png", &heads_heatmap(&m).render().png_bytes())?;
    write(
        "spectra-singular.png",
        &singular_plot(&m).render().png_bytes(),
    )?;
    write(
        "spectra-eigen.png",
        &eigen_plot(&m).render_points().png_bytes(),
    )?;
    println!(
        "wrote spectra.md, spectra.json, spectra-heads.png, spectra-singular.png, spectra-eigen.png to {}",
        out.display()
    );
    Ok(())
}

/// Layers × heads panels of symmetry, positive mass and mean cosine, trained and random.
fn heads_heatmap(m: &Measured) -> Heatmap {
    let modules: Vec<String> = {
        let mut v: Vec<String> = m.trained.iter().map(|h| h.module.clone()).collect();
        v.dedup();
        v
    };
    let heads = m.trained.iter().map(|h| h.head + 1).max().unwrap_or(1);
    let grid = |set: &[HeadSpectrum], f: &dyn Fn(&HeadSpectrum) -> f64| -> Vec<f32> {
        let mut cells = vec![0.0f32; modules.len() * heads];
        for h in set {
            if let Some(row) = modules.iter().position(|m| *m == h.module) {
                cells[row * heads + h.head] = f(h).clamp(0.0, 1.0) as f32;
            }
        }
        cells
    };
    let symmetry = |h: &HeadSpectrum| (h.symmetry + 1.0) / 2.0;
    let positive = |h: &HeadSpectrum| h.positive_mass;
    let cosine = |h: &HeadSpectrum| mean_of(&h.principal_cosines);
    Heatmap {
        title: "per head: (symmetry+1)/2, positive mass, mean Q-K cosine".into(),
        panels: vec![
            ("trained (sym+1)/2".into(), grid(&m.trained, &symmetry)),
            ("trained positive".into(), grid(&m.trained, &positive)),
            ("trained mean cos".into(), grid(&m.trained, &cosine)),
            ("init (sym+1)/2".into(), grid(&m.init, &symmetry)),
            ("init positive".into(), grid(&m.init, &positive)),
            ("init mean cos".into(), grid(&m.init, &cosine)),
        ],
        columns: 3,
        row_labels: modules,
        col_labels: (0..heads).map(|h| format!("h{h}")).collect(),
        cell: 28,
    }
}

/// Singular values of W_Q and W_K, each scaled by its largest and averaged over heads.
fn singular_plot(m: &Measured) -> LinePlot {
    let mean_spectrum = |set: &[HeadSpectrum], of: &dyn Fn(&HeadSpectrum) -> &Vec<f64>| {
        let n = set.first().map(|h| of(h).len()).unwrap_or(0);
        (0..n)
            .map(|i| {
                let v: Vec<f64> = set
                    .iter()
                    .map(|h| of(h)[i] / of(h)[0].max(f64::MIN_POSITIVE))
                    .collect();
                ((i + 1) as f64, mean_of(&v))
            })
            .collect()
    };
    let series = |name: &str, color: Rgb, points| Series {
        name: name.into(),
        color,
        points,
    };
    LinePlot {
        title: "singular values of W_Q and W_K (scaled by the largest), mean over heads".into(),
        x_label: "index".into(),
        y_label: "sigma_i / sigma_1".into(),
        series: vec![
            series(
                "Q trained",
                Rgb(31, 119, 180),
                mean_spectrum(&m.trained, &|h| &h.sigma_q),
            ),
            series(
                "K trained",
                Rgb(214, 39, 40),
                mean_spectrum(&m.trained, &|h| &h.sigma_k),
            ),
            series(
                "Q init",
                Rgb(150, 190, 230),
                mean_spectrum(&m.init, &|h| &h.sigma_q),
            ),
            series(
                "K init",
                Rgb(240, 160, 160),
                mean_spectrum(&m.init, &|h| &h.sigma_k),
            ),
        ],
    }
}

/// Every head's eigenvalues of `W_Q W_Kᵀ` in the complex plane, each head's scaled by its
/// largest modulus: on the positive real axis for a similarity, on the imaginary axis for an
/// antisymmetric form.
fn eigen_plot(m: &Measured) -> LinePlot {
    let points = |set: &[HeadSpectrum]| -> Vec<(f64, f64)> {
        set.iter()
            .flat_map(|h| {
                let top = h
                    .eigenvalues
                    .iter()
                    .map(|&(re, im)| re.hypot(im))
                    .fold(f64::MIN_POSITIVE, f64::max);
                h.eigenvalues
                    .iter()
                    .map(move |&(re, im)| (re / top, im / top))
            })
            .collect()
    };
    LinePlot {
        title: "eigenvalues of W_Q W_K^T, each head scaled by its largest".into(),
        x_label: "real part".into(),
        y_label: "imaginary part".into(),
        series: vec![
            Series {
                name: "random init".into(),
                color: Rgb(240, 160, 160),
                points: points(&m.init),
            },
            Series {
                name: "trained".into(),
                color: Rgb(31, 119, 180),
                points: points(&m.trained),
            },
        ],
    }
}
