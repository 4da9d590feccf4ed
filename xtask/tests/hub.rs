//! `--model` end to end: the real `xtask` binary fetches a tiny GPT-2 from a fake Hugging
//! Face Hub on 127.0.0.1 into a private cache, then samples (streamed text, stop strings,
//! a time limit), summarises and draws attention from it; offline, with faults.

mod common;

use std::path::{Path, PathBuf};

use common::{text, xtask_env};
use qkv_data::{BpeTokenizer, Tokenizer};
use qkv_test_support::hub::{FakeHub, Fault, tiny_gpt2};

const REPO: &str = "someone/tiny-gpt2";
const COMMIT: &str = "feedfacefeedfacefeedfacefeedfacefeedface";

fn tokenizer() -> Tokenizer {
    let corpus = "the cat sat on the mat. le café est fermé. 東京 🦀 crabs and cats\n".repeat(30);
    Tokenizer::Bpe(Box::new(BpeTokenizer::train(&corpus, 300).unwrap()))
}

/// A fake Hub serving a tiny random GPT-2 with a tokenizer, and a fresh cache directory.
fn setup(name: &str) -> (FakeHub, PathBuf, Tokenizer) {
    let tokenizer = tokenizer();
    let mut files: Vec<(String, Vec<u8>, bool)> = tiny_gpt2(tokenizer.vocab_size(), 64, 5)
        .into_iter()
        .map(|(name, bytes)| {
            let lfs = name.ends_with(".safetensors");
            (name, bytes, lfs)
        })
        .collect();
    files.push((
        "tokenizer.json".into(),
        tokenizer.to_json().unwrap().into_bytes(),
        false,
    ));
    let hub = FakeHub::start(REPO, COMMIT, files);
    let home = std::env::temp_dir().join(format!("qkv-hub-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    (hub, home, tokenizer)
}

fn env<'a>(hub: &'a FakeHub, home: &'a Path) -> Vec<(&'a str, &'a str)> {
    vec![
        ("HF_ENDPOINT", hub.endpoint()),
        ("HF_HOME", home.to_str().unwrap()),
        ("HF_HUB_ETAG_TIMEOUT", "2"),
        ("HF_HUB_DOWNLOAD_TIMEOUT", "2"),
        ("HF_HUB_OFFLINE", "0"),
        ("HF_TOKEN", ""),
    ]
}

fn sample(hub: &FakeHub, home: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["sample", "--model", REPO, "--tokens", "40", "--seed", "3"];
    args.extend_from_slice(extra);
    xtask_env(&args, &env(hub, home))
}

#[test]
fn sample_downloads_once_then_streams_whole_characters() {
    let (hub, home, tokenizer) = setup("sample");
    let out = sample(&hub, &home, &["--print-ids", "--prompt-ids", "5,6,7"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("downloading model.safetensors"));
    let ids: Vec<u32> = text(&out.stdout)
        .trim()
        .split(',')
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 40);
    // Python's layout in HF_HOME/hub.
    let snapshot = home
        .join("hub/models--someone--tiny-gpt2/snapshots")
        .join(COMMIT);
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(snapshot.join(file).is_file(), "{file}");
    }
    // As text: the prompt, then exactly the one-shot decoding of the same tokens (a token
    // by token decoding would differ wherever a character spans two tokens).
    let requests = hub.request_count();
    let offline: Vec<(&str, &str)> = env(&hub, &home)
        .into_iter()
        .map(|(k, v)| {
            if k == "HF_HUB_OFFLINE" {
                (k, "1")
            } else {
                (k, v)
            }
        })
        .collect();
    let mut args = vec!["sample", "--model", REPO, "--tokens", "40", "--seed", "3"];
    args.extend_from_slice(&["--prompt-ids", "5,6,7"]);
    let out = xtask_env(&args, &offline);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(hub.request_count(), requests, "offline asks nothing");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", tokenizer.decode(&ids).unwrap())
    );
    // Online again with everything cached: metadata requests only, no download.
    let out = sample(&hub, &home, &["--prompt", "the cat"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("the cat"));
    assert!(
        !hub.requests()[requests..]
            .iter()
            .any(|r| r.starts_with("GET")),
        "{:?}",
        hub.requests()
    );
}

#[test]
fn stop_strings_and_the_time_limit_end_generation() {
    let (hub, home, tokenizer) = setup("stop");
    let free = sample(&hub, &home, &["--prompt-ids", "5,6,7", "--print-ids"]);
    assert!(free.status.success(), "{}", text(&free.stderr));
    let ids: Vec<u32> = text(&free.stdout)
        .trim()
        .split(',')
        .map(|t| t.parse().unwrap())
        .collect();
    let whole = tokenizer.decode(&ids).unwrap();
    // A stop string taken from the middle of the free output: the output ends just before it.
    let chars: Vec<char> = whole.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = &whole[..whole.find(&stop).unwrap()];
    let out = sample(&hub, &home, &["--prompt-ids", "5,6,7", "--stop", &stop]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{cut}\n"));
    // --max-time: a limit shorter than one step stops after the first token.
    let out = sample(
        &hub,
        &home,
        &[
            "--prompt-ids",
            "5,6,7",
            "--print-ids",
            "--max-time",
            "0.000001",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), ids[0].to_string());
    let out = sample(&hub, &home, &["--prompt-ids", "5", "--max-time", "0"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--max-time"));
}

#[test]
fn summarize_and_attention_take_a_hub_model() {
    let (hub, home, _) = setup("summarize");
    let article = home.with_extension("txt");
    std::fs::write(&article, "the cat sat on the mat. ".repeat(40)).unwrap();
    let env = env(&hub, &home);
    let summarize = |extra: &[&str]| {
        let mut args = vec![
            "summarize",
            "--model",
            REPO,
            article.to_str().unwrap(),
            "--tokens",
            "12",
        ];
        args.extend_from_slice(extra);
        xtask_env(&args, &env)
    };
    let out = summarize(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // 240 article tokens do not fit a 64-token window: the beginning is read, and said so.
    assert!(
        text(&out.stderr).contains("reads its first"),
        "{}",
        text(&out.stderr)
    );
    let out = summarize(&["--prompt-template", "no placeholder"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("{text}"));
    let dir = home.join("attention-out");
    let out = xtask_env(
        &[
            "attention",
            "--model",
            REPO,
            "--prompt",
            "the cat sat",
            "--out",
            dir.to_str().unwrap(),
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.join("attention.html").is_file() && dir.join("attention.png").is_file());
}

#[test]
fn hub_failures_are_clear_errors() {
    let (hub, home, _) = setup("failures");
    let fail = |hub: &FakeHub, home: &Path, model: &str, offline: &str| {
        let env: Vec<(&str, &str)> = env(hub, home)
            .into_iter()
            .map(|(k, v)| {
                if k == "HF_HUB_OFFLINE" {
                    (k, offline)
                } else {
                    (k, v)
                }
            })
            .collect();
        let out = xtask_env(
            &[
                "sample",
                "--model",
                model,
                "--prompt-ids",
                "1",
                "--tokens",
                "2",
            ],
            &env,
        );
        assert!(!out.status.success());
        text(&out.stderr)
    };
    let err = fail(&hub, &home, REPO, "1");
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("config.json"),
        "{err}"
    );
    let err = fail(&hub, &home, "someone/other", "0");
    assert!(err.contains("no such repository"), "{err}");
    let err = fail(&hub, &home, "../etc", "0");
    assert!(err.contains("not a Hugging Face model id"), "{err}");
    hub.set_fault("model.safetensors", Fault::Corrupt);
    let err = fail(&hub, &home, REPO, "0");
    assert!(err.contains("corrupt") && err.contains("deleted"), "{err}");
    hub.set_fault("model.safetensors", Fault::Missing);
    let err = fail(&hub, &home, REPO, "0");
    assert!(err.contains("no model.safetensors"), "{err}");
    hub.set_fault("model.safetensors", Fault::Hang);
    let started = std::time::Instant::now();
    let err = fail(&hub, &home, REPO, "0");
    assert!(err.contains("cannot reach"), "{err}");
    assert!(started.elapsed().as_secs() < 60);
    hub.set_fault("model.safetensors", Fault::Truncate(1000));
    let err = fail(&hub, &home, REPO, "0");
    assert!(err.contains("resume"), "{err}");
    // Nothing half-written is ever used: the snapshot has no weights.
    let snapshot = home
        .join("hub/models--someone--tiny-gpt2/snapshots")
        .join(COMMIT);
    assert!(!snapshot.join("model.safetensors").exists());
    // And with the server well again, the download resumes and the model runs.
    hub.set_fault("model.safetensors", Fault::None);
    let out = sample(&hub, &home, &["--prompt-ids", "1", "--print-ids"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("resuming at"),
        "{}",
        text(&out.stderr)
    );
}
