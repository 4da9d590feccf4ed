//! `compare` and `spectra` through the real command line, at toy sizes: they exit 0, write
//! every figure they promise, and refuse bad flags with a message.

use std::path::Path;

use qkv_test_support::temp_dir;

mod common;
use common::{text, tiny_recall, xtask};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A toy model and schedule, shared by `compare` and `lengths`.
const TOY: [&str; 12] = [
    "--steps",
    "3",
    "--batch-size",
    "4",
    "--n-layers",
    "1",
    "--d-model",
    "8",
    "--n-heads",
    "2",
    "--eval-examples",
    "8",
];

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG"))
}

#[test]
fn compare_writes_every_figure() {
    let dir = temp_dir("cli-compare");
    let out = dir.join("compare");
    let run = xtask(
        &[
            &[
                "compare", "--gaps", "0,3", "--pairs", "2", "--models", "gpt,gru",
            ][..],
            &TOY[..],
            &[
                "--seq-lens",
                "4,8",
                "--timing-batch",
                "2",
                "--out",
                out.to_str().unwrap(),
            ][..],
        ]
        .concat(),
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let report = json(&out.join("compare.json"));
    let recall = report["recall"].as_array().unwrap();
    assert_eq!(recall.len(), 4, "2 gaps × 2 models");
    for row in recall {
        let acc = row["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{row}");
        // Every answer of every scored example is counted once, at its distance.
        let pairs = 2;
        let counted: u64 = row["by_distance"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["total"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, 8 * pairs, "{row}");
    }
    // Gradients of the longest task (2 pairs and a gap of 3: 10 positions), embeddings plus 1
    // layer output.
    for model in ["gpt", "gru"] {
        for when in ["init", "trained"] {
            let norms = report["gradients"]["norms"][model][when]
                .as_array()
                .unwrap();
            assert_eq!(norms.len(), 2, "{model} {when}");
            assert!(norms.iter().all(|l| l.as_array().unwrap().len() == 10));
        }
    }
    let timing = report["timing"].as_array().unwrap();
    assert_eq!(timing.len(), 2);
    assert!(
        timing
            .iter()
            .all(|t| t["times"].as_array().unwrap().len() == 2)
    );
    for png in [
        "recall-accuracy.png",
        "recall-distance.png",
        "gradients.png",
        "step-time.png",
    ] {
        assert!(is_png(&out.join(png)), "{png}");
    }
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| 3 | 10 | gru |"), "{md}");
}

#[test]
fn compare_refuses_bad_flags() {
    for (flags, needle) in [
        (vec!["--pairs", "0"], "--pairs"),
        (vec!["--gaps", "5000"], "--gaps"),
        (vec!["--steps", "0"], "--steps"),
        (vec!["--seq-lens", "0"], "--seq-lens"),
        (vec!["--lr=-1"], "--lr"),
    ] {
        let mut args = vec!["compare"];
        args.extend(flags);
        let out = xtask(&args);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(needle), "{}", text(&out.stderr));
    }
}

#[test]
fn spectra_of_a_trained_run_and_its_initialisation() {
    let dir = temp_dir("cli-spectra");
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    let trained = xtask(&tiny_recall(run_s, "20", "20"));
    assert!(trained.status.success(), "{}", text(&trained.stderr));
    let out = xtask(&["spectra", "--checkpoint", run_s]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("| blocks.0.attn.1 |"),
        "{}",
        text(&out.stdout)
    );
    let report = json(&run.join("spectra/spectra.json"));
    for which in ["trained", "init"] {
        let heads = report["heads"][which].as_array().unwrap();
        assert_eq!(heads.len(), 2, "1 layer × 2 heads");
        for h in heads {
            assert_eq!(h["sigma_q"].as_array().unwrap().len(), 8, "d_head 8");
            let s = h["symmetry"].as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&s));
        }
    }
    assert_ne!(report["heads"]["trained"], report["heads"]["init"]);
    assert!(is_png(&run.join("spectra/spectra-heads.png")));
    assert!(is_png(&run.join("spectra/spectra-singular.png")));
    assert!(is_png(&run.join("spectra/spectra-eigen.png")));
    let missing = xtask(&[
        "spectra",
        "--checkpoint",
        dir.join("nothing").to_str().unwrap(),
    ]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("neither a qkv run"),
        "{}",
        text(&missing.stderr)
    );
}

#[test]
fn lengths_scores_every_encoding_at_every_length() {
    let dir = temp_dir("cli-lengths");
    let out = dir.join("lengths");
    let run = xtask(
        &[
            &["lengths", "--train-pairs", "2", "--eval-pairs", "2,4"][..],
            &TOY[..],
            &["--out", out.to_str().unwrap()][..],
        ]
        .concat(),
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let report = json(&out.join("lengths.json"));
    let encodings = report["encodings"].as_array().unwrap();
    let names: Vec<&str> = encodings
        .iter()
        .map(|e| e["encoding"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["learned", "sinusoidal", "rotary"]);
    for e in encodings {
        let scores = e["scores"].as_array().unwrap();
        let lengths: Vec<u64> = scores
            .iter()
            .map(|s| s["sequence"].as_u64().unwrap())
            .collect();
        assert_eq!(lengths, [7, 15]);
        for s in scores {
            let counted: u64 = s["by_distance"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["total"].as_u64().unwrap())
                .sum();
            assert_eq!(counted, 8 * s["sequence"].as_u64().unwrap().div_ceil(4));
        }
    }
    // The model was built for the longest evaluation (15 tokens), trained on 7.
    let config = json(&out.join("learned/config.json"));
    assert_eq!(config["model"]["block_size"], 15);
    assert!(is_png(&out.join("lengths.png")));

    // A translation run scored by source length, and its spectra (encoder, decoder self- and
    // cross-attention).
    let translate = dir.join("translate");
    let trained = xtask(&[
        "train",
        "--task",
        "translate",
        "--out",
        translate.to_str().unwrap(),
        "--max-iters",
        "2",
        "--eval-interval",
        "2",
        "--eval-sentences",
        "8",
        "--n-layers",
        "1",
        "--n-heads",
        "2",
        "--d-model",
        "16",
        "--batch-size",
        "8",
    ]);
    assert!(trained.status.success(), "{}", text(&trained.stderr));
    let out2 = dir.join("lengths2");
    let run = xtask(&[
        "lengths",
        "--encodings",
        "rotary",
        "--train-pairs",
        "2",
        "--eval-pairs",
        "2",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--n-layers",
        "1",
        "--d-model",
        "8",
        "--n-heads",
        "2",
        "--eval-examples",
        "4",
        "--translate",
        translate.to_str().unwrap(),
        "--translate-examples",
        "40",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let rows = json(&out2.join("lengths.json"))["translation"]["by_source_tokens"].clone();
    let total: u64 = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["total"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 40, "{rows}");
    let spectra = xtask(&["spectra", "--checkpoint", translate.to_str().unwrap()]);
    assert!(spectra.status.success(), "{}", text(&spectra.stderr));
    let stdout = text(&spectra.stdout);
    assert!(stdout.contains("decoder.0.cross_attn.1"), "{stdout}");

    let bad = xtask(&["lengths", "--eval-pairs", "17"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("--eval-pairs"),
        "{}",
        text(&bad.stderr)
    );
}
