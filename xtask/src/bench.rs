//! `cargo xtask bench`: the benchmark suite of `qkv-benches` on chosen backends, optionally
//! beside the PyTorch peer (`benches/pytorch/bench.py`), printed as one markdown table and
//! written as JSON with a description of the machine.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;
use qkv_backends::{Backend, MachineInfo, parse_list};
use qkv_benches::{Stats, Workload};
use qkv_trainer::Precision;
use serde_json::{Value, json};

/// Arguments of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Backends to time, comma-separated: flex, ndarray, wgpu.
    #[arg(long, default_value = "flex,ndarray")]
    backends: String,
    /// Also time the PyTorch peer (needs `python3` with torch: `pip install torch`).
    #[arg(long)]
    with_pytorch: bool,
    /// The PyTorch device: cpu, or cuda beside `--backends wgpu` on an NVIDIA GPU.
    #[arg(long, default_value = "cpu")]
    pytorch_device: String,
    /// The Python interpreter that has torch.
    #[arg(long, default_value = "python3")]
    python: String,
    /// With --with-pytorch: time PyTorch on each benchmark right after qkv, one Python
    /// process per benchmark, instead of on all of them after qkv has finished. On a shared
    /// machine whose speed drifts over minutes, each ratio's two timings are then seconds
    /// apart; it costs PyTorch's start-up once per benchmark.
    #[arg(long, requires = "with_pytorch")]
    interleave: bool,
    /// Only the benchmarks whose id contains one of these (comma-separated), for example
    /// `train_step` or `attention_fwd/d128`.
    #[arg(long)]
    only: Option<String>,
    /// Fewer timed iterations: a rough figure in a fraction of the time.
    #[arg(long)]
    quick: bool,
    /// On GPU backends only: count the kernels of the first and of the second iteration and
    /// time only the second, with no warm-up or repeated samples (for a slow software driver,
    /// where the kernel count is the figure of interest).
    #[arg(long)]
    kernels_only: bool,
    /// The float type of the training-step benchmarks (`f32`, `f16`, `bf16`; f32 weights and
    /// AdamW whatever it is, as `cargo xtask train --dtype`). Other benchmarks are f32 and
    /// are refused beside another type; PyTorch's peer stays f32.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// Where to write the JSON results.
    #[arg(long, default_value = "runs/bench.json")]
    json: PathBuf,
    /// Instead of the suite: GPT-2 at full size from this Hugging Face directory (make a
    /// random one without a download: `python3 benches/pytorch/gpt2.py make --size small
    /// --out DIR`), on the first of --backends, beside transformers with --with-pytorch.
    #[arg(long)]
    gpt2: Option<PathBuf>,
    /// GPT-2: prompt tokens.
    #[arg(long, default_value_t = 512)]
    gpt2_prompt: usize,
    /// GPT-2: new tokens per prompt.
    #[arg(long, default_value_t = 256)]
    gpt2_new: usize,
    /// GPT-2: batch sizes, comma-separated.
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    gpt2_batches: Vec<usize>,
}

/// One row of the report: a workload's timings on each backend (with the kernels one
/// iteration launches on a GPU backend) and on PyTorch.
struct Row {
    workload: Workload,
    qkv: Vec<(Backend, Stats, Option<f64>)>,
    /// On GPU backends, the kernels the process's first iteration launched: with autotuning,
    /// its candidates too, unless an earlier run's results were found on disk.
    first_iteration_kernels: Vec<(Backend, usize)>,
    pytorch: Option<Stats>,
}

/// Iterations whose kernel launches are counted (after the timed ones, so autotuning is over
/// and each iteration launches the same kernels).
const COUNTED_ITERATIONS: usize = 1;

/// The CubeCL kernels one iteration launches, averaged over [`COUNTED_ITERATIONS`]: a figure
/// for the GPU backends only (the CPU backends launch none).
fn kernels_per_iteration(backend: Backend, iteration: &mut dyn FnMut()) -> Option<f64> {
    if backend.is_cpu() {
        return None;
    }
    let ((), launches) = qkv_backends::count_launches(|| {
        for _ in 0..COUNTED_ITERATIONS {
            iteration();
        }
    });
    for (kernel, count) in launches.most_launched(8) {
        eprintln!("  {count:>5} × {kernel}");
    }
    Some(launches.total() as f64 / COUNTED_ITERATIONS as f64)
}

/// Runs `cargo xtask bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    let backends = parse_list(&args.backends)?;
    if let Some(dir) = &args.gpt2 {
        if args.gpt2_batches.is_empty() || args.gpt2_batches.contains(&0) {
            bail!("--gpt2-batches takes batch sizes of at least 1");
        }
        let machine = MachineInfo::detect();
        let bench = crate::bench_gpt2::Gpt2Bench {
            prompt_len: args.gpt2_prompt,
            new_tokens: args.gpt2_new,
            batches: args.gpt2_batches.clone(),
            repeat: if args.quick { 1 } else { 3 },
        };
        let pytorch = args
            .with_pytorch
            .then_some((args.python.as_str(), machine.threads));
        let result = crate::bench_gpt2::run(dir, backends[0], &bench, pytorch)?;
        println!(
            "\nMachine: {} ({}), {} logical CPUs, {} threads, {}",
            machine.cpu, machine.simd, machine.logical_cpus, machine.threads, machine.os
        );
        let report = json!({
            "machine": {"cpu": machine.cpu, "simd": machine.simd, "threads": machine.threads},
            "gpt2": result,
        });
        return write_json(&args.json, &report);
    }
    let filters: Vec<String> = args
        .only
        .as_deref()
        .map(|s| {
            s.split(',')
                .filter(|f| !f.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let workloads: Vec<Workload> = Workload::suite()
        .into_iter()
        .filter(|w| filters.is_empty() || filters.iter().any(|f| w.id().contains(f.as_str())))
        .collect();
    if workloads.is_empty() {
        bail!(
            "--only {:?} matches no benchmark; ids look like attention_fwd/d128/seq64, \
             attention_fwd_bwd/d768/seq1024, train_step/4x4x128_b12_t64, generate/kv_cache",
            args.only.unwrap_or_default()
        );
    }
    if args.dtype != Precision::F32
        && let Some(w) = workloads
            .iter()
            .find(|w| !matches!(w, Workload::TrainStep(_)))
    {
        bail!(
            "--dtype {} applies to the training steps only, and {} is not one: add --only train_step",
            args.dtype,
            w.id()
        );
    }
    if args.kernels_only
        && let Some(cpu) = backends.iter().find(|b| b.is_cpu())
    {
        bail!(
            "--kernels-only counts GPU kernels, and {cpu} launches none: use wgpu, vulkan or cuda"
        );
    }
    let machine = MachineInfo::detect();
    let devices = backends
        .iter()
        .map(|b| b.check().map(|d| (*b, d)))
        .collect::<Result<Vec<_>, _>>()?;
    for (backend, device) in &devices {
        if let Some(dtype) = args.dtype.compute_dtype()
            && !device.supports_dtype(dtype)
        {
            bail!(
                "{backend} cannot compute in {} here: use --dtype f32",
                args.dtype
            );
        }
    }

    let mut rows: Vec<Row> = Vec::new();
    // PyTorch's report (the last one, when interleaved: each names the same version, device
    // and threads).
    let mut pytorch: Option<Value> = None;
    for &workload in &workloads {
        let mut qkv = Vec::new();
        let mut first_iteration_kernels = Vec::new();
        for (backend, device) in &devices {
            let mut iteration = workload.prepare_in(device, args.dtype);
            if !backend.is_cpu() {
                let ((), first) = qkv_backends::count_launches(&mut iteration);
                first_iteration_kernels.push((*backend, first.total()));
            }
            let (stats, kernels) = if args.kernels_only {
                let started = std::time::Instant::now();
                let kernels = kernels_per_iteration(*backend, &mut iteration);
                let ms = started.elapsed().as_secs_f64() * 1e3;
                (Stats::from_samples(vec![ms]), kernels)
            } else {
                let stats = qkv_benches::measure(workload.plan(args.quick), &mut iteration);
                (stats, kernels_per_iteration(*backend, &mut iteration))
            };
            eprintln!(
                "{backend} {}: {:.2} ms{}",
                workload.id(),
                stats.median_ms,
                kernels
                    .map(|k| format!(", {k:.0} kernels"))
                    .unwrap_or_default()
            );
            qkv.push((*backend, stats, kernels));
        }
        let mut row = Row {
            workload,
            qkv,
            first_iteration_kernels,
            pytorch: None,
        };
        if args.interleave {
            let report = run_pytorch(&args, &[workload], machine.threads)?;
            row.pytorch = pytorch_stats(&report, &workload)?;
            if let Some(stats) = &row.pytorch {
                eprintln!("pytorch {}: {:.2} ms", workload.id(), stats.median_ms);
            }
            pytorch = Some(report);
        }
        rows.push(row);
    }

    if args.with_pytorch && !args.interleave {
        let report = run_pytorch(&args, &workloads, machine.threads)?;
        for row in &mut rows {
            row.pytorch = pytorch_stats(&report, &row.workload)?;
        }
        pytorch = Some(report);
    }

    let gpu = gpu_description();
    println!(
        "{}",
        markdown(
            &rows,
            &backends,
            pytorch.as_ref(),
            &machine,
            gpu.as_deref(),
            args.dtype
        )
    );
    let report = json!({
        "machine": {
            "cpu": machine.cpu,
            "simd": machine.simd,
            "logical_cpus": machine.logical_cpus,
            "threads": machine.threads,
            "os": machine.os,
            "gpu": gpu,
        },
        "backends": backends.iter().map(|b| b.name()).collect::<Vec<_>>(),
        "dtype": args.dtype.name(),
        "quick": args.quick,
        "interleaved": args.interleave,
        "pytorch": pytorch.as_ref().map(|p| json!({
            "torch_version": p["torch_version"],
            "device": p["device"],
            "threads": p["threads"],
            "gpu": p["gpu"],
        })),
        "results": rows.iter().map(|r| json!({
            "id": r.workload.id(),
            "tokens_per_iter": r.workload.tokens_per_iter(),
            "qkv": r.qkv.iter().map(|(b, s, _)| (b.name().to_string(), stats_json(s)))
                .collect::<serde_json::Map<_, _>>(),
            "kernels_per_iter": r.qkv.iter()
                .filter_map(|(b, _, k)| k.map(|k| (b.name().to_string(), json!(k))))
                .collect::<serde_json::Map<_, _>>(),
            "first_iteration_kernels": r.first_iteration_kernels.iter()
                .map(|(b, k)| (b.name().to_string(), json!(k)))
                .collect::<serde_json::Map<_, _>>(),
            "pytorch": r.pytorch.as_ref().map(stats_json),
        })).collect::<Vec<_>>(),
    });
    write_json(&args.json, &report)
}

fn write_json(path: &std::path::Path, report: &Value) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("results written to {}", path.display());
    Ok(())
}

/// A script of `benches/pytorch/`: from the repository root (where `cargo xtask` runs),
/// else beside this crate's sources.
pub fn pytorch_script(name: &str) -> Result<PathBuf> {
    [
        PathBuf::from("benches/pytorch").join(name),
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../benches/pytorch")
            .join(name),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| {
        format!("benches/pytorch/{name} not found: run cargo xtask bench from the qkv repository")
    })
}

/// Runs the PyTorch peer on the same workloads and thread count; returns its JSON report.
fn run_pytorch(args: &BenchArgs, workloads: &[Workload], threads: usize) -> Result<Value> {
    let script = pytorch_script("bench.py")?;
    let out = std::env::temp_dir().join(format!("qkv-bench-pytorch-{}.json", std::process::id()));
    let ids: Vec<String> = workloads.iter().map(Workload::id).collect();
    let mut cmd = Command::new(&args.python);
    cmd.arg(&script)
        .args(["--threads", &threads.to_string()])
        .args(["--device", &args.pytorch_device])
        .args(["--ids", &ids.join(",")])
        .arg("--json-out")
        .arg(&out);
    if args.quick {
        cmd.arg("--quick");
    }
    let status = cmd.status().with_context(|| {
        format!(
            "could not start {:?} for --with-pytorch; install Python 3 and PyTorch \
             (pip install torch) or name the interpreter with --python",
            args.python
        )
    })?;
    if !status.success() {
        bail!(
            "the PyTorch benchmark ({}) failed with {status}; check that `{} -c 'import torch'` \
             works (pip install torch)",
            script.display(),
            args.python
        );
    }
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("reading the PyTorch results {}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    serde_json::from_str(&text).context("the PyTorch benchmark wrote invalid JSON")
}

/// PyTorch's timing of `workload` in its report, if it ran it.
fn pytorch_stats(report: &Value, workload: &Workload) -> Result<Option<Stats>> {
    report["results"]
        .get(workload.id())
        .map(stats_from_json)
        .transpose()
}

fn stats_from_json(v: &Value) -> Result<Stats> {
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("PyTorch result lacks {k}"))
    };
    Ok(Stats {
        median_ms: num("median_ms")?,
        min_ms: num("min_ms")?,
        max_ms: num("max_ms")?,
        samples: num("samples")? as usize,
    })
}

fn stats_json(s: &Stats) -> Value {
    json!({
        "median_ms": s.median_ms,
        "min_ms": s.min_ms,
        "max_ms": s.max_ms,
        "samples": s.samples,
    })
}

/// The GPU's name and driver from `nvidia-smi`, when there is one.
fn gpu_description() -> Option<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name,driver_version", "--format=csv,noheader"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// `12.3 ms`, plus tokens/s for generation and GFLOP/s for matrix products.
fn cell(w: &Workload, s: &Stats) -> String {
    if let Some(flops) = w.flops_per_iter() {
        return format!(
            "{:.3} ms ({:.0} GFLOP/s)",
            s.median_ms,
            flops / (s.median_ms / 1e3) / 1e9
        );
    }
    match w {
        Workload::Generate { .. } => format!(
            "{:.1} ms ({:.0} tok/s)",
            s.median_ms,
            w.tokens_per_iter() as f64 / (s.median_ms / 1e3)
        ),
        _ if s.median_ms >= 100.0 => format!("{:.0} ms", s.median_ms),
        _ => format!("{:.2} ms", s.median_ms),
    }
}

/// The report: one row per benchmark, one column per backend, PyTorch, and the ratio of the
/// best qkv backend's time to PyTorch's (below 1: qkv is faster).
fn markdown(
    rows: &[Row],
    backends: &[Backend],
    pytorch: Option<&Value>,
    machine: &MachineInfo,
    gpu: Option<&str>,
    dtype: Precision,
) -> String {
    let mut s = format!(
        "Machine: {} ({}), {} logical CPUs, {} threads, {}{}\n",
        machine.cpu,
        machine.simd,
        machine.logical_cpus,
        machine.threads,
        machine.os,
        gpu.map(|g| format!(", GPU {g}")).unwrap_or_default()
    );
    if let Some(p) = pytorch {
        s += &format!(
            "PyTorch {} on {}\n",
            p["torch_version"].as_str().unwrap_or("?"),
            p["device"].as_str().unwrap_or("?")
        );
    }
    if dtype != Precision::F32 {
        s += &format!(
            "qkv's training steps compute in {dtype} (f32 weights and AdamW); PyTorch's in f32\n"
        );
    }
    s += "Median time per iteration; on a GPU backend also the CubeCL kernels one iteration \
          launches.\n\n| benchmark |";
    for b in backends {
        s += &format!(" {b} |");
    }
    if pytorch.is_some() {
        s += " PyTorch | best qkv ÷ PyTorch |";
    }
    s += "\n|---|";
    s += &"---:|".repeat(backends.len() + if pytorch.is_some() { 2 } else { 0 });
    s += "\n";
    for row in rows {
        s += &format!("| {} |", row.workload.id());
        for (_, stats, kernels) in &row.qkv {
            let launches = kernels
                .map(|k| format!(", {k:.0} kernels"))
                .unwrap_or_default();
            s += &format!(" {}{launches} |", cell(&row.workload, stats));
        }
        if pytorch.is_some() {
            let best = row
                .qkv
                .iter()
                .min_by(|a, b| a.1.median_ms.total_cmp(&b.1.median_ms));
            match (&row.pytorch, best) {
                (Some(p), Some((b, q, _))) => {
                    s += &format!(
                        " {} | {:.2}× ({b}) |",
                        cell(&row.workload, p),
                        q.median_ms / p.median_ms
                    )
                }
                (Some(p), None) => s += &format!(" {} | |", cell(&row.workload, p)),
                (None, _) => s += " n/a | |",
            }
        }
        s += "\n";
    }
    s
}
