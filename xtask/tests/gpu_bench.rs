//! `cargo xtask bench` on the GPU backend (wgpu; Mesa's software Vulkan driver in CI): it
//! reports the kernels an iteration launches, and autotune results persist between runs, so a
//! second process launches fewer kernels on its first iteration (no autotune candidates).

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `xtask bench` on wgpu for one small matrix product in `dir` (a Cargo workspace root,
/// where CubeCL keeps its caches under `target/environment`) and returns the JSON report.
fn bench_in(dir: &Path, json: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(dir)
        .args([
            "bench",
            "--backends",
            "wgpu",
            "--only",
            "matmul/768x512x128",
        ])
        .args(["--quick", "--json", json])
        .output()
        .expect("running xtask");
    assert!(
        out.status.success(),
        "bench failed: {}",
        common::text(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join(json)).expect("bench JSON");
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn kernels_are_counted_and_autotune_results_persist_between_runs() {
    let dir = qkv_test_support::temp_dir("autotune-cache");
    std::fs::write(dir.join("Cargo.toml"), "").expect("workspace marker");
    let first = bench_in(&dir, "first.json");
    let second = bench_in(&dir, "second.json");
    let row = |report: &Value, key: &str| report["results"][0][key]["wgpu"].as_f64();

    let per_iteration = row(&first, "kernels_per_iter").expect("kernels per iteration");
    assert!(per_iteration >= 1.0, "a matrix product launched no kernel");
    assert_eq!(row(&second, "kernels_per_iter"), Some(per_iteration));

    let cache = dir.join("target/environment/default.db");
    let size = std::fs::metadata(&cache).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "no autotune cache at {}", cache.display());
    let cold = row(&first, "first_iteration_kernels").expect("first iteration, cold");
    let warm = row(&second, "first_iteration_kernels").expect("first iteration, warm");
    assert!(
        warm < cold,
        "the second run's first iteration launched {warm} kernels, the first run's {cold}: \
         autotuning ran again"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
