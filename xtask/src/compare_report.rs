//! `compare`'s outputs: `compare.json`, the tables of `compare.md`, and four plots.

use std::path::Path;

use anyhow::{Context, Result};
use qkv_plot::{LinePlot, Series};
use serde_json::Value;

use crate::compare::ModelKind;

/// Writes the report and its plots to `out`, one line per model in `models`.
pub(crate) fn write_outputs(out: &Path, models: &[ModelKind], report: &Value) -> Result<()> {
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    write(
        "compare.json",
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    write("compare.md", markdown(report).as_bytes())?;
    let rows = report["recall"].as_array().cloned().unwrap_or_default();
    let series_of = |points: &dyn Fn(&str) -> Vec<(f64, f64)>| -> Vec<Series> {
        models
            .iter()
            .map(|&kind| Series {
                name: kind.name().into(),
                color: kind.color(),
                points: points(kind.name()),
            })
            .collect()
    };
    let plots = [
        (
            "recall-accuracy.png",
            LinePlot {
                title: "held-out recall accuracy vs gap".into(),
                x_label: "filler tokens between pairs and queries".into(),
                y_label: "accuracy".into(),
                series: series_of(&|m| {
                    rows.iter()
                        .filter(|r| r["model"] == m)
                        .map(|r| {
                            (
                                r["gap"].as_f64().unwrap_or(0.0),
                                r["accuracy"].as_f64().unwrap_or(0.0),
                            )
                        })
                        .collect()
                }),
            },
        ),
        (
            "recall-distance.png",
            LinePlot {
                title: format!(
                    "accuracy vs distance to the pair, gap {}",
                    report["gradients"]["gap"]
                ),
                x_label: "tokens between the pair and its query".into(),
                y_label: "accuracy".into(),
                series: series_of(&|m| {
                    rows.iter()
                        .filter(|r| r["model"] == m && r["gap"] == report["gradients"]["gap"])
                        .flat_map(|r| r["by_distance"].as_array().cloned().unwrap_or_default())
                        .map(|b| {
                            let c = b["correct"].as_f64().unwrap_or(0.0);
                            let t = b["total"].as_f64().unwrap_or(1.0).max(1.0);
                            (b["distance"].as_f64().unwrap_or(0.0), c / t)
                        })
                        .collect()
                }),
            },
        ),
        (
            "gradients.png",
            LinePlot {
                title: "log10 gradient norm at the embeddings, trained".into(),
                x_label: "position".into(),
                y_label: "log10 |dloss/dx|".into(),
                series: series_of(&|m| {
                    report["gradients"]["norms"][m]["trained"][0]
                        .as_array()
                        .map(|row| {
                            row.iter()
                                .enumerate()
                                .filter_map(|(t, g)| {
                                    let g = g.as_f64()?;
                                    (g > 0.0).then(|| (t as f64, g.log10()))
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                }),
            },
        ),
        (
            "step-time.png",
            LinePlot {
                title: "forward + backward time vs sequence length".into(),
                x_label: "sequence length".into(),
                y_label: "ms".into(),
                series: series_of(&|m| {
                    report["timing"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|t| t["model"] == m)
                        .flat_map(|t| t["times"].as_array().cloned().unwrap_or_default())
                        .map(|p| {
                            (
                                p["seq"].as_f64().unwrap_or(0.0),
                                p["ms"].as_f64().unwrap_or(0.0),
                            )
                        })
                        .collect()
                }),
            },
        ),
    ];
    for (name, plot) in plots {
        write(name, &plot.render().png_bytes())?;
    }
    Ok(())
}

/// The tables of `compare.md`.
fn markdown(report: &Value) -> String {
    let machine = &report["machine"];
    let mut s = format!(
        "Machine: {} ({}), {} threads, backend {}\n\n| gap | seq | model | held-out accuracy | val loss | ms/step |\n|---:|---:|---|---:|---:|---:|\n",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["simd"].as_str().unwrap_or("?"),
        machine["threads"],
        report["backend"].as_str().unwrap_or("?"),
    );
    for r in report["recall"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {} | {} | {:.1}% | {:.3} | {:.1} |\n",
            r["gap"],
            r["sequence"],
            r["model"].as_str().unwrap_or("?"),
            r["accuracy"].as_f64().unwrap_or(0.0) * 100.0,
            r["val_loss"].as_f64().unwrap_or(0.0),
            r["ms_per_step"].as_f64().unwrap_or(0.0),
        );
    }
    let norms = &report["gradients"]["norms"];
    s += &format!(
        "\nGradient norm reaching the embeddings (gap {}), first position / last pair position / last position:\n\n| model | init | trained |\n|---|---|---|\n",
        report["gradients"]["gap"]
    );
    let pairs = report["settings"]["pairs"].as_u64().unwrap_or(1) as usize;
    if let Some(models) = norms.as_object() {
        for (model, g) in models {
            let cell = |which: &str| {
                let row = &g[which][0];
                let at = |i: usize| row[i].as_f64().unwrap_or(f64::NAN);
                let last = row.as_array().map(|r| r.len()).unwrap_or(1) - 1;
                format!("{:.2e} / {:.2e} / {:.2e}", at(0), at(pairs - 1), at(last))
            };
            s += &format!("| {model} | {} | {} |\n", cell("init"), cell("trained"));
        }
    }
    s += "\nForward + backward, ms:\n\n| model | seq: ms |\n|---|---|\n";
    for t in report["timing"].as_array().into_iter().flatten() {
        let times: Vec<String> = t["times"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{}: {:.1}", p["seq"], p["ms"].as_f64().unwrap_or(0.0)))
            .collect();
        s += &format!(
            "| {} | {} |\n",
            t["model"].as_str().unwrap_or("?"),
            times.join(", ")
        );
    }
    if let Some(rows) = report["shakespeare"].as_array().filter(|r| !r.is_empty()) {
        s += "\nTiny Shakespeare:\n\n| model | steps | val loss | ms/step | wall s |\n|---|---:|---:|---:|---:|\n";
        for r in rows {
            s += &format!(
                "| {} | {} | {:.4} | {:.1} | {:.1} |\n",
                r["model"].as_str().unwrap_or("?"),
                r["steps"],
                r["val_loss"].as_f64().unwrap_or(0.0),
                r["ms_per_step"].as_f64().unwrap_or(0.0),
                r["wall_s"].as_f64().unwrap_or(0.0)
            );
        }
    }
    s
}
