//! Runs through the real command line: a run directory is never overwritten without being
//! asked, a training process killed with SIGKILL at any moment resumes and finishes, every
//! reader finds the last complete checkpoint, and translation runs resume.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use qkv_test_support::temp_dir;

mod common;
use common::{text, tiny_recall, xtask};

fn metric_steps(dir: &Path) -> Vec<usize> {
    qkv_trainer::metrics::read(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect()
}

#[test]
fn a_run_directory_is_not_overwritten_without_resume_or_overwrite() {
    let dir = temp_dir("cli-no-overwrite");
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    let first = xtask(&tiny_recall(out_s, "4", "2"));
    assert!(first.status.success(), "{}", text(&first.stderr));
    let config = std::fs::read(out.join("config.json")).unwrap();
    let weights = std::fs::read(out.join("checkpoint/model.safetensors")).unwrap();

    let mut again = tiny_recall(out_s, "4", "2");
    again.extend(["--lr", "5e-4"]);
    let second = xtask(&again);
    assert_eq!(second.status.code(), Some(1));
    let err = text(&second.stderr);
    assert!(
        err.contains("already holds a run") && err.contains("--overwrite"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(out.join("config.json")).unwrap(), config);
    assert_eq!(
        std::fs::read(out.join("checkpoint/model.safetensors")).unwrap(),
        weights
    );

    again.push("--overwrite");
    let third = xtask(&again);
    assert!(third.status.success(), "{}", text(&third.stderr));
    assert!(text(&std::fs::read(out.join("config.json")).unwrap()).contains("0.0005"));
}

#[test]
fn sigkill_at_any_moment_then_resume_finishes_the_run() {
    let dir = temp_dir("cli-sigkill");
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    // A checkpoint after every step, so that kills land inside saves as often as outside.
    let base = tiny_recall(out_s, "600", "1");
    let (mut kills, mut inside_save) = (0, 0);
    for attempt in 0..14u64 {
        let mut args = base.clone();
        let resumable = qkv_trainer::checkpoint::latest(&out).is_ok();
        if resumable {
            args.push("--resume");
        } else if attempt > 0 {
            args.push("--overwrite");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Staggered delays, so the kills fall at different points of steps and saves.
        std::thread::sleep(Duration::from_millis(40 + attempt * 37 % 200));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
            let _ = child.try_wait();
            std::thread::sleep(Duration::from_millis(5));
            if out.join("checkpoint.tmp").exists() || out.join("checkpoint.old").exists() {
                inside_save += 1;
            }
        }
        let status = child.wait_with_output().unwrap();
        if let Some(0) = status.status.code() {
            break;
        }
        let err = text(&status.stderr);
        assert!(!err.contains("panicked"), "attempt {attempt}: {err}");
        // Whatever the moment, a complete checkpoint is on disk once one was ever written.
        if resumable {
            let dir = qkv_trainer::checkpoint::latest(&out).expect("a complete checkpoint");
            assert!(dir.join("model.safetensors").is_file());
        }
    }
    assert!(kills >= 10, "only {kills} kills landed while training ran");
    eprintln!("{kills} kills, {inside_save} in the middle of a save");
    assert!(
        inside_save >= 1,
        "no kill landed inside a save ({kills} kills)"
    );
    let mut args = base.clone();
    args.push("--resume");
    let last = xtask(&args);
    assert!(last.status.success(), "{}", text(&last.stderr));
    assert!(
        text(&last.stdout).contains("600 steps"),
        "{}",
        text(&last.stdout)
    );
    assert_eq!(metric_steps(&out), (1..=600).collect::<Vec<_>>());
}

#[test]
fn every_reader_finds_the_checkpoint_left_by_a_crash_between_renames() {
    let dir = temp_dir("cli-readers");
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    let trained = xtask(&tiny_recall(out_s, "2", "2"));
    assert!(trained.status.success(), "{}", text(&trained.stderr));
    std::fs::rename(out.join("checkpoint"), out.join("checkpoint.old")).unwrap();
    let sample = xtask(&[
        "sample",
        "--checkpoint",
        out_s,
        "--prompt-ids",
        "1,2",
        "--tokens",
        "3",
        "--greedy",
        "--print-ids",
    ]);
    assert!(sample.status.success(), "{}", text(&sample.stderr));
    let attention = xtask(&["attention", "--checkpoint", out_s, "--prompt-ids", "1,2,3"]);
    assert!(attention.status.success(), "{}", text(&attention.stderr));
    let mut resume = tiny_recall(out_s, "4", "2");
    resume.push("--resume");
    let resumed = xtask(&resume);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(text(&resumed.stdout).contains("resuming at step 2"));
    assert!(out.join("checkpoint/state.json").is_file() && !out.join("checkpoint.old").exists());

    // No checkpoint at all: a named error, not a panic.
    let empty = dir.join("empty");
    std::fs::create_dir_all(empty.join("checkpoint.tmp")).unwrap();
    std::fs::write(empty.join("model_config.json"), "{}").unwrap();
    let err = xtask(&[
        "sample",
        "--checkpoint",
        empty.to_str().unwrap(),
        "--prompt-ids",
        "1",
    ]);
    assert_eq!(err.status.code(), Some(1));
    let err = text(&err.stderr);
    assert!(
        err.contains("model_config.json") || err.contains("no complete checkpoint"),
        "{err}"
    );
}

#[test]
fn a_translation_run_resumes_through_the_cli() {
    let dir = temp_dir("cli-translate");
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    let args = |max: &'static str| {
        vec![
            "train",
            "--task",
            "translate",
            "--out",
            out_s,
            "--max-iters",
            max,
            "--eval-interval",
            "2",
            "--eval-sentences",
            "8",
            "--n-layers",
            "1",
            "--n-heads",
            "2",
            "--d-model",
            "32",
            "--batch-size",
            "8",
        ]
    };
    let first = xtask(&args("2"));
    assert!(first.status.success(), "{}", text(&first.stderr));
    let mut more = args("4");
    more.push("--resume");
    let second = xtask(&more);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains("resuming at step 2"),
        "{}",
        text(&second.stdout)
    );
    assert_eq!(metric_steps(&out), vec![1, 2, 3, 4]);
    let translated = xtask(&["translate", "--checkpoint", out_s, "--beam", "1", "seven"]);
    assert!(translated.status.success(), "{}", text(&translated.stderr));
    assert!(text(&translated.stdout).starts_with("seven -> "));
}
