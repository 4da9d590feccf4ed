//! Helpers shared by the command-line tests: run the real `xtask` binary, and the flags of a
//! tiny recall run.

// Each test binary that includes this module uses only some of its helpers.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs the `xtask` binary with `args` and `env`, and waits for it.
pub fn xtask_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running xtask")
}

/// Output bytes as text (invalid UTF-8 replaced).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the `xtask` binary with `args`, and waits for it.
pub fn xtask(args: &[&str]) -> Output {
    xtask_env(args, &[])
}

/// The flags of a tiny recall run into `out`: one layer, 16 wide, batches of 8, a checkpoint
/// every `eval` steps.
pub fn tiny_recall<'a>(out: &'a str, max_iters: &'a str, eval: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--out",
        out,
        "--max-iters",
        max_iters,
        "--eval-interval",
        eval,
        "--eval-iters",
        "1",
        "--n-layers",
        "1",
        "--n-heads",
        "2",
        "--d-model",
        "16",
        "--batch-size",
        "8",
    ]
}
