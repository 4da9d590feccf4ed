//! Each class of bad input, through the real command line: a clear error and exit code 1,
//! never a panic, a hang or an allocation abort, and nothing of an existing run lost.

use std::path::Path;
use std::sync::OnceLock;

use qkv_test_support::temp_dir;

mod common;
use common::{tiny_recall, xtask};

/// Runs `args`, expects exit code 1 and an error containing every needle.
fn fails_with(args: &[&str], needles: &[&str]) {
    let out = xtask(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    }
}

/// A tiny trained recall run, shared by the tests that need one.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<std::path::PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = temp_dir("bad-input-run").join("run");
        let o = xtask(&tiny_recall(out.to_str().unwrap(), "2", "2"));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    })
}

#[test]
fn sizes_are_bounded_before_anything_is_allocated() {
    let dir = temp_dir("bad-sizes");
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    let huge = "1000000000000";
    fails_with(
        &["train", "--out", out, "--block-size", huge],
        &["block_size is 1000000000000, above the limit"],
    );
    fails_with(
        &["train", "--out", out, "--batch-size", huge],
        &["batch_size (--batch-size) is 1000000000000, above the limit"],
    );
    fails_with(
        &["train", "--out", out, "--n-layers", huge],
        &["n_layers is 1000000000000, above the limit"],
    );
    // Within every bound, but more than any machine of ours has: named with the amount.
    fails_with(
        &[
            "train",
            "--out",
            out,
            "--batch-size",
            "1000000",
            "--d-model",
            "4096",
            "--n-heads",
            "8",
        ],
        &[
            "one training step of this config needs about",
            "GiB",
            "lower --batch-size",
        ],
    );
    fails_with(
        &[
            "train",
            "--task",
            "translate",
            "--out",
            out,
            "--eval-sentences",
            huge,
        ],
        &["eval_sentences (--eval-sentences) is 1000000000000"],
    );
    assert!(!dir.join("run/checkpoint").exists(), "nothing was trained");

    // A model_config.json that claims 10^12 layers.
    let fake = dir.join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    let config = serde_json::json!({
        "vocab_size": 10, "block_size": 8, "n_layers": 1_000_000_000_000u64, "n_heads": 2,
        "d_model": 16, "mlp_ratio": 4, "dropout": 0.0, "bias": true, "tie_embeddings": true,
        "positional": "Learned", "activation": "Gelu", "layer_norm_eps": 1e-5
    });
    std::fs::write(fake.join("model_config.json"), config.to_string()).unwrap();
    for command in ["sample", "attention"] {
        fails_with(
            &[
                command,
                "--checkpoint",
                fake.to_str().unwrap(),
                "--prompt-ids",
                "1",
            ],
            &["n_layers is 1000000000000, above the limit"],
        );
    }
}

#[test]
fn configs_that_validation_accepts_terminate() {
    let dir = temp_dir("bad-recall");
    let config = dir.join("one-key.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(trained_run().join("config.json")).unwrap())
            .unwrap();
    json["data"] = serde_json::json!({"kind": "recall", "n_pairs": 1, "n_keys": 1, "n_values": 1});
    json["model"]["block_size"] = 3.into();
    std::fs::write(&config, json.to_string()).unwrap();
    fails_with(
        &[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--out",
            dir.join("run").to_str().unwrap(),
        ],
        &["0.0% of examples are held out", "Use more keys or values"],
    );
}

#[test]
fn numeric_flags_are_checked_for_degenerate_values() {
    let run = trained_run().to_str().unwrap();
    fails_with(
        &[
            "attention",
            "--checkpoint",
            run,
            "--ablate",
            "--ablate-batches",
            "0",
        ],
        &["--ablate-batches must be at least 1"],
    );
    fails_with(
        &["eval", "--checkpoint", run, "--batch-size", "0"],
        &["--batch-size must be at least 1"],
    );
    fails_with(
        &[
            "sample",
            "--checkpoint",
            run,
            "--prompt-ids",
            "1",
            "--temperature",
            "0",
        ],
        &["temperature must be a positive number"],
    );
    fails_with(
        &[
            "sample",
            "--checkpoint",
            run,
            "--prompt-ids",
            "1",
            "--top-p",
            "1.5",
        ],
        &["top_p must be in (0, 1]"],
    );
    fails_with(
        &["train", "--out", run, "--resume", "--time-limit=-1"],
        &["time limit must be a positive number of seconds"],
    );
    fails_with(
        &["train", "--task", "translate", "--out", run, "--lr", "NaN"],
        &["learning rate must be a positive number", "(--lr)"],
    );
    // A vanishing temperature is greedy decoding in the limit, not token 0 forever.
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            run,
            "--prompt-ids",
            "5,1",
            "--tokens",
            "8",
            "--print-ids",
        ];
        args.extend(extra);
        let out = xtask(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(sample(&["--temperature", "1e-310"]), sample(&["--greedy"]));
}
