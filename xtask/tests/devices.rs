//! Data-parallel training through the command line: `train --devices` with several workers
//! on the CPU and with a remote device served on 127.0.0.1 by a child `serve-device`
//! process, which trains like one device; killing that process mid-run stops the run with a
//! message naming the device and leaves the last checkpoint to resume from; device lists
//! that cannot work are named errors.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qkv_test_support::temp_dir;

mod common;
use common::{text, tiny_recall, xtask};

/// A `serve-device` child process, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts `cargo xtask serve-device` on a port the system picks, and reads the port from
    /// its first line.
    fn start() -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["serve-device", "--backend", "flex", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting serve-device");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split("on port ")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Server { child, port }
    }

    fn address(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(step, loss, val loss)` of every record of a run's `metrics.jsonl`.
fn records(dir: &Path) -> Vec<(usize, f64, Option<f64>)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["step"].as_u64().unwrap() as usize,
                v["loss"].as_f64().unwrap(),
                v["val_loss"].as_f64(),
            )
        })
        .collect()
}

/// The step of the run's checkpoint, if one has been written.
fn checkpoint_step(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("checkpoint").join("state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["step"].as_u64().map(|s| s as usize)
}

/// A tiny recall run without dropout into `out`, with `extra` flags.
fn run(out: &Path, max_iters: &str, extra: &[&str]) -> std::process::Output {
    let out = out.to_str().unwrap();
    let mut args = tiny_recall(out, max_iters, "3");
    args.extend(["--dropout", "0"]);
    args.extend(extra);
    xtask(&args)
}

fn assert_same_run(one: &Path, many: &Path, what: &str) {
    let (a, b) = (records(one), records(many));
    assert_eq!(a.len(), b.len(), "{what}");
    for ((step, la, va), (_, lb, vb)) in a.iter().zip(&b) {
        assert!(
            (la - lb).abs() <= 1e-5 * la.abs(),
            "{what}, step {step}: loss {lb} against {la}"
        );
        if let (Some(va), Some(vb)) = (va, vb) {
            assert!(
                (va - vb).abs() <= 1e-5 * va.abs(),
                "{what}, step {step}: val loss {vb} against {va}"
            );
        }
    }
}

#[test]
fn workers_on_the_cpu_and_on_a_remote_device_train_like_one_device() {
    let root = temp_dir("devices");
    let one = root.join("one");
    let out = run(&one, "6", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let cpu = root.join("cpu");
    let out = run(&cpu, "6", &["--devices", "0,0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("data-parallel on 2 devices: 0, 0"),
        "{}",
        text(&out.stdout)
    );
    assert_same_run(&one, &cpu, "two workers on the CPU");

    let server = Server::start();
    let remote = root.join("remote");
    let devices = format!("0,{}", server.address());
    let out = run(&remote, "6", &["--devices", &devices]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_same_run(&one, &remote, "the CPU and a remote device");
}

/// Trains with `devices` (`{remote}` stands for the server's address), kills the server
/// once the run has checkpointed twice, and checks the clean stop and that the run resumes
/// from its checkpoint on the CPU alone.
fn kill_the_server_mid_run(devices: &str, name: &str) {
    let mut server = Server::start();
    let dir = temp_dir(name).join("run");
    let devices = devices.replace("{remote}", &server.address());
    let out_arg = dir.to_str().unwrap().to_string();
    let mut args = tiny_recall(&out_arg, "100000", "3");
    args.extend(["--dropout", "0", "--devices", &devices]);
    let mut train = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let started = Instant::now();
    while checkpoint_step(&dir).is_none_or(|s| s < 6) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{devices}: no checkpoint after two minutes"
        );
        assert!(
            train.try_wait().unwrap().is_none(),
            "{devices}: the run ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    // The run must stop by itself, and soon.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = train.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = train.kill();
            panic!("{devices}: the run did not stop within a minute of its remote device dying");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = train.wait_with_output().unwrap();
    let err = text(&output.stderr);
    assert_eq!(status.code(), Some(1), "{devices}: {err}");
    let kept = checkpoint_step(&dir).unwrap();
    assert!(
        err.contains(&format!("device {} failed", server.address()))
            && err.contains(&format!("the last good checkpoint (step {kept}) was kept"))
            && err.contains("--resume"),
        "{devices}: {err}"
    );
    assert!(!err.contains("panicked at"), "{devices}: {err}");

    // The checkpoint is whole: the run resumes from it on the CPU alone.
    let target = (kept + 2).to_string();
    let out = run(&dir, &target, &["--resume", "--lr-decay-iters", "100000"]);
    assert!(out.status.success(), "{devices}: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("resuming at step {kept}")),
        "{}",
        text(&out.stdout)
    );
    let steps: Vec<usize> = records(&dir).iter().map(|r| r.0).collect();
    assert_eq!(steps, (1..=kept + 2).collect::<Vec<_>>());
}

#[test]
fn killing_a_remote_worker_stops_the_run_and_keeps_its_checkpoint() {
    kill_the_server_mid_run("0,{remote}", "devices-kill-worker");
}

/// The remote device alone: it holds the model, so its failure comes from anywhere in the
/// loop (a step, an evaluation, a save), not from a worker.
#[test]
fn killing_the_remote_device_that_holds_the_model_stops_the_run_cleanly() {
    kill_the_server_mid_run("{remote}", "devices-kill-main");
}

#[test]
fn device_lists_that_cannot_work_are_named() {
    let dir = temp_dir("devices-bad");
    let out_dir = dir.join("run");
    let cases: [(&str, &str); 4] = [
        ("1", "the CPU backends have one device, 0"),
        ("0,gpu", "is neither a device index"),
        ("ws://127.0.0.1", "is not a remote device address"),
        // Nothing listens on port 1.
        (
            "0,ws://127.0.0.1:1",
            "the remote device ws://127.0.0.1:1 cannot be used",
        ),
    ];
    for (devices, expected) in cases {
        let out = run(&out_dir, "2", &["--devices", devices]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{devices}: {err}");
        assert!(err.contains(expected), "{devices}: {err}");
        assert!(!err.contains("panicked at"), "{devices}: {err}");
        assert!(
            !out_dir.join("checkpoint").exists(),
            "{devices}: nothing written"
        );
    }
}
