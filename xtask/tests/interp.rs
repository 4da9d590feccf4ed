//! `lens`, `patch` and `attribute` through the real command line, on a tiny trained recall
//! run: they exit 0, write what they say, agree with each other, and refuse bad input with a
//! message.

use std::path::Path;

use qkv_test_support::temp_dir;

mod common;
use common::{text, tiny_recall, xtask};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const PAIRS: &str = "c7 a2 k0 f5 b9 h3 ? a 2 ?";

#[test]
fn lens_patch_and_attribute_read_a_trained_run() {
    let dir = temp_dir("cli-interp");
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    let trained = xtask(&tiny_recall(run_s, "30", "30"));
    assert!(trained.status.success(), "{}", text(&trained.stderr));

    // The logit lens: one stage per layer plus the embeddings; the last stage's top token is
    // what the model predicts.
    let clean = format!("{PAIRS} k");
    let out = xtask(&[
        "lens",
        "--checkpoint",
        run_s,
        "--prompt",
        &clean,
        "--answer",
        "0",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("| block 0 |"),
        "{}",
        text(&out.stdout)
    );
    assert!(run.join("lens/lens.png").exists());
    let lens = json(&run.join("lens/lens.json"));
    let stages = lens["report"]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "embed and one block");
    let n_tokens = lens["ids"].as_array().unwrap().len();
    assert_eq!(lens["report"]["top"][1].as_array().unwrap().len(), n_tokens);

    // Direct attribution of the lens's top token at the last position adds up to its logit.
    let out = xtask(&["attribute", "--checkpoint", run_s, "--prompt", &clean]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let a = json(&run.join("attribute/attribute.json"))["attribution"].clone();
    let top = lens["report"]["top"][1][n_tokens - 1][0]["id"]
        .as_u64()
        .unwrap();
    assert_eq!(a["token"].as_u64().unwrap(), top);
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    let heads: f64 = a["heads"][0].as_array().unwrap().iter().map(f).sum();
    let parts =
        f(&a["embed"]) + heads + f(&a["attn_bias"][0]) + f(&a["mlps"][0]) + f(&a["final_bias"]);
    let logit = f(&a["logit"]);
    assert!(
        (parts - logit).abs() <= 1e-3 * logit.abs().max(1.0),
        "{parts} vs {logit}"
    );

    // Patching: one row of heads per layer, one column per position.
    let corrupted = format!("{PAIRS} b");
    let out = xtask(&[
        "patch",
        "--checkpoint",
        run_s,
        "--clean",
        &clean,
        "--corrupted",
        &corrupted,
        "--answer",
        "0",
        "--wrong",
        "9",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("the head that restores most"));
    for file in ["patch-heads.png", "patch-positions.png"] {
        assert!(run.join("patch").join(file).exists(), "{file}");
    }
    let p = json(&run.join("patch/patch.json"))["result"].clone();
    assert_eq!(p["heads"][0].as_array().unwrap().len(), 2);
    let positions = p["resid_pre"][0].as_array().unwrap();
    assert_eq!(positions.len(), n_tokens);
    // Only the last token differs, so patching the stream there restores all of it and
    // patching any other position nothing.
    assert!((f(&positions[n_tokens - 1]) - 1.0).abs() < 1e-4);
    assert!(positions[..n_tokens - 1].iter().all(|r| f(r).abs() < 1e-4));

    // Bad input: a message, exit code 1, nothing else.
    let bad = |args: &[&str], needle: &str| {
        let out = xtask(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    bad(
        &[
            "patch",
            "--checkpoint",
            run_s,
            "--clean",
            &clean,
            "--corrupted",
            PAIRS,
            "--answer",
            "0",
            "--wrong",
            "9",
        ],
        "same length",
    );
    bad(
        &[
            "patch",
            "--checkpoint",
            run_s,
            "--clean",
            &clean,
            "--corrupted",
            &clean,
            "--answer",
            "0",
            "--wrong",
            "9",
        ],
        "nothing to restore",
    );
    bad(
        &[
            "patch",
            "--checkpoint",
            run_s,
            "--clean",
            &clean,
            "--corrupted",
            &corrupted,
            "--answer",
            "0 1",
            "--wrong",
            "9",
        ],
        "give one token",
    );
    bad(
        &["lens", "--checkpoint", run_s, "--prompt-ids", "1,99999"],
        "outside the vocabulary",
    );
    bad(
        &[
            "lens",
            "--checkpoint",
            run_s,
            "--prompt",
            &clean,
            "--top",
            "0",
        ],
        "--top",
    );
    bad(
        &[
            "attribute",
            "--checkpoint",
            run_s,
            "--prompt",
            &clean,
            "--position",
            "40",
        ],
        "positions 0..",
    );
    bad(
        &[
            "attribute",
            "--checkpoint",
            run_s,
            "--prompt",
            &clean,
            "--token",
            "#abc",
        ],
        "token id",
    );
}

/// The page of the data between `<script id="data" type="application/json">` and `</script>`.
fn page_data(html: &str) -> serde_json::Value {
    let open = "type=\"application/json\">";
    let start = html.find(open).unwrap() + open.len();
    let end = html[start..].find("</script>").unwrap() + start;
    serde_json::from_str(&html[start..end]).unwrap()
}

#[test]
fn a_translation_run_gets_its_three_attentions_on_one_page() {
    let dir = temp_dir("cli-translate-page");
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    let trained = xtask(&[
        "train",
        "--task",
        "translate",
        "--out",
        run_s,
        "--max-iters",
        "2",
        "--eval-interval",
        "2",
        "--eval-sentences",
        "8",
        "--n-layers",
        "2",
        "--n-heads",
        "2",
        "--d-model",
        "32",
        "--batch-size",
        "8",
    ]);
    assert!(trained.status.success(), "{}", text(&trained.stderr));
    let out = xtask(&[
        "attention",
        "--checkpoint",
        run_s,
        "--prompt",
        "three hundred and four",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let html = std::fs::read_to_string(run.join("attention/cross_attention.html")).unwrap();
    let data = page_data(&html);
    let views = data["views"].as_array().unwrap();
    let names: Vec<&str> = views.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert!(names[0].starts_with("encoder self-attention"), "{names:?}");
    assert!(names[1].starts_with("decoder self-attention"), "{names:?}");
    assert!(names[2].starts_with("cross-attention"), "{names:?}");
    // The cross-attention on the page is the one in cross_attention.json.
    let json = json(&run.join("attention/cross_attention.json"));
    let as_f32 = |v: &serde_json::Value| -> Vec<f32> {
        let mut out = Vec::new();
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Array(items) => stack.extend(items.iter().rev()),
                n => out.push(n.as_f64().unwrap() as f32),
            }
        }
        out
    };
    assert_eq!(as_f32(&views[2]["probs"]), as_f32(&json["probs"]));
    for view in views {
        let (nq, nk) = (
            view["queries"].as_array().unwrap().len(),
            view["keys"].as_array().unwrap().len(),
        );
        let layers = view["probs"].as_array().unwrap();
        assert_eq!(layers.len(), 2, "two layers in {}", view["name"]);
        for head in layers.iter().flat_map(|l| l.as_array().unwrap()) {
            let p: Vec<f64> = head
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(p.len(), nq * nk, "{}", view["name"]);
            for row in p.chunks(nk) {
                let sum: f64 = row.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-4,
                    "{}: a row sums to {sum}",
                    view["name"]
                );
            }
        }
    }
    // The decoder's self-attention is causal: no step looks at a later input.
    let decoder = &views[1];
    let n = decoder["keys"].as_array().unwrap().len();
    for head in decoder["probs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l.as_array().unwrap())
    {
        let p = head.as_array().unwrap();
        for q in 0..n {
            for k in q + 1..n {
                assert_eq!(p[q * n + k].as_f64().unwrap(), 0.0);
            }
        }
    }
}
