//! The command line end to end, as a user meets it: bad backend names and a wgpu backend
//! with no driver give clear errors (no panic, no backtrace), `bench` runs a workload
//! and writes its JSON report, `--interleave` times the PyTorch peer after each benchmark,
//! and `QKV_SIMD` narrows the kernels' SIMD level.

use std::process::Output;

use qkv_test_support::temp_dir;

mod common;
use common::xtask_env;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unknown_backend_is_named_with_the_choices() {
    for command in ["train", "sample", "eval", "attention"] {
        let out = xtask_env(&[command, "--backend", "tpu"], &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{command}");
        assert!(err.contains("unknown backend \"tpu\""), "{command}: {err}");
        assert!(err.contains("flex, ndarray, wgpu"), "{command}: {err}");
    }
    let out = xtask_env(&["bench", "--backends", "flex,tpu"], &[]);
    assert!(
        stderr(&out).contains("unknown backend \"tpu\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn wgpu_without_a_driver_says_what_to_install_without_a_backtrace() {
    let dir = temp_dir("xtask-no-driver");
    let out_dir = dir.join("run");
    let out = xtask_env(
        &[
            "train",
            "--backend",
            "wgpu",
            "--max-iters",
            "1",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[
            // A Vulkan loader that finds no driver, and an EGL that finds no vendor (wgpu
            // falls back to OpenGL through EGL when Vulkan has no adapter).
            ("VK_DRIVER_FILES", "/nonexistent/icd.json"),
            ("VK_ICD_FILENAMES", "/nonexistent/icd.json"),
            ("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent/egl.json"),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the wgpu backend cannot start"), "{err}");
    assert!(err.contains("mesa-vulkan-drivers"), "{err}");
    assert!(
        !err.contains("panicked at"),
        "a panic reached the user: {err}"
    );
    assert!(
        !out_dir.join("checkpoint").exists(),
        "nothing trained, nothing saved"
    );
}

#[test]
fn bench_runs_a_workload_and_writes_json() {
    let dir = temp_dir("xtask-bench");
    let json = dir.join("bench.json");
    let out = xtask_env(
        &[
            "bench",
            "--backends",
            "flex",
            "--only",
            "attention_fwd/d128/seq64",
            "--quick",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| benchmark | flex |"), "{table}");
    assert!(table.contains("| attention_fwd/d128/seq64 |"), "{table}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    let median = results[0]["qkv"]["flex"]["median_ms"].as_f64().unwrap();
    assert!(median > 0.0 && median.is_finite());
    assert!(report["machine"]["logical_cpus"].as_u64().unwrap() >= 1);

    let out = xtask_env(&["bench", "--only", "no_such_benchmark"], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("matches no benchmark"),
        "{}",
        stderr(&out)
    );
}

/// `QKV_SIMD` narrows the kernels' SIMD level: the report says so, and a misspelt level is
/// an error before anything runs.
#[test]
fn qkv_simd_narrows_the_kernels_and_a_bad_level_is_named() {
    let dir = temp_dir("xtask-bench-simd");
    let json = dir.join("bench.json");
    let args = [
        "bench",
        "--backends",
        "flex",
        "--only",
        "attention_fwd_bwd/d128/seq64",
        "--quick",
        "--json",
        json.to_str().unwrap(),
    ];
    let out = xtask_env(&args, &[("QKV_SIMD", "scalar")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let simd = report["machine"]["simd"].as_str().unwrap().to_string();
    if cfg!(target_arch = "x86_64") {
        // Every x86-64 CPU this project runs on has AVX2 at least, so the limit narrows.
        assert!(simd.starts_with("SSE2 (QKV_SIMD; the CPU has "), "{simd}");
    }
    let median = report["results"][0]["qkv"]["flex"]["median_ms"]
        .as_f64()
        .unwrap();
    assert!(median > 0.0 && median.is_finite());

    let out = xtask_env(&args, &[("QKV_SIMD", "avx3")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("unknown SIMD level \"avx3\""), "{err}");
    assert!(err.contains("avx512, avx2, neon or scalar"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn translation_commands_name_their_mistakes() {
    let out = xtask_env(&["train", "--task", "poetry"], &[]);
    assert!(
        stderr(&out).contains("invalid value 'poetry'") && stderr(&out).contains("lm, translate"),
        "{}",
        stderr(&out)
    );
    let out = xtask_env(
        &["train", "--task", "translate", "--translation", "klingon"],
        &[],
    );
    assert!(
        stderr(&out).contains("choose numbers or dates"),
        "{}",
        stderr(&out)
    );
    let out = xtask_env(&["train", "--task", "translate", "--block-size", "8"], &[]);
    assert!(
        stderr(&out).contains("--block-size applies to --task lm only"),
        "{}",
        stderr(&out)
    );
    let out = xtask_env(&["train", "--label-smoothing", "0.1"], &[]);
    assert!(
        stderr(&out).contains("--task translate only"),
        "{}",
        stderr(&out)
    );
    let dir = temp_dir("xtask-not-translation");
    let out = xtask_env(
        &[
            "translate",
            "--checkpoint",
            dir.to_str().unwrap(),
            "forty-two",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("not a translation run"), "{err}");
    assert!(!err.contains("panicked at"), "{err}");
}

#[test]
fn gpu_backends_not_in_this_build_say_how_to_build_them() {
    let dir = temp_dir("not-built").join("run");
    for backend in ["cuda", "vulkan"] {
        let run = dir.to_str().unwrap();
        let out = xtask_env(
            &[
                "train",
                "--backend",
                backend,
                "--max-iters",
                "1",
                "--out",
                run,
            ],
            &[],
        );
        assert!(!dir.exists(), "{backend}: nothing is written");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{backend}: {err}");
        assert!(
            err.contains(&format!("the {backend} backend is not in this build"))
                && err.contains(&format!("--features {backend}"))
                && !err.contains("panicked"),
            "{backend}: {err}"
        );
    }
}

/// A stand-in for the Python interpreter: it takes `bench.py`'s arguments, logs the ids it
/// was asked for (one line per call) and reports each at 2.5 ms.
#[cfg(unix)]
fn fake_python(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join("calls.log");
    let script = dir.join("fake-python");
    let body = format!(
        r#"#!/bin/sh
ids=""; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ids) ids="$2"; shift 2 ;;
    --json-out) out="$2"; shift 2 ;;
    *) shift ;;
  esac
done
echo "$ids" >> '{log}'
{{
printf '{{"torch_version":"fake","device":"cpu","threads":2,"gpu":null,"results":{{'
sep=""
for id in $(echo "$ids" | tr ',' ' '); do
  printf '%s"%s":{{"median_ms":2.5,"min_ms":2.0,"max_ms":3.0,"samples":5}}' "$sep" "$id"
  sep=","
done
printf '}}}}'
}} > "$out"
"#,
        log = log.display()
    );
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

/// `--interleave` times the PyTorch peer once per benchmark, right after qkv's timing of it;
/// without it the peer runs once, on every benchmark, at the end. Both fill in PyTorch's
/// column; `--interleave` alone is refused.
#[cfg(unix)]
#[test]
fn interleave_runs_the_pytorch_peer_after_each_benchmark() {
    let dir = temp_dir("xtask-bench-interleave");
    let (python, log) = fake_python(&dir);
    let json = dir.join("bench.json");
    let ids = ["attention_fwd/d128/seq64", "attention_fwd/d128/seq256"];
    let only = ids.join(",");
    let run = |interleave: bool| {
        let _ = std::fs::remove_file(&log);
        let mut args = vec![
            "bench",
            "--backends",
            "flex",
            "--only",
            &only,
            "--quick",
            "--with-pytorch",
            "--python",
            python.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ];
        if interleave {
            args.push("--interleave");
        }
        let out = xtask_env(&args, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["interleaved"].as_bool(), Some(interleave));
        assert_eq!(report["pytorch"]["torch_version"].as_str(), Some("fake"));
        let results = report["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        for (row, id) in results.iter().zip(ids) {
            assert_eq!(row["id"].as_str(), Some(id));
            assert_eq!(row["pytorch"]["median_ms"].as_f64(), Some(2.5), "{row}");
            assert!(row["qkv"]["flex"]["median_ms"].as_f64().unwrap() > 0.0);
        }
        std::fs::read_to_string(&log).unwrap()
    };
    assert_eq!(run(true), format!("{}\n{}\n", ids[0], ids[1]));
    assert_eq!(run(false), format!("{only}\n"));

    let out = xtask_env(&["bench", "--interleave"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--with-pytorch"), "{}", stderr(&out));
}
