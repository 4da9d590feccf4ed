//! `cargo xtask` (one package) and the README's test command (the whole workspace) must
//! build every dependency they share with the same features: otherwise cargo compiles those
//! dependencies twice, and the test command after a first `cargo xtask train` rebuilds Burn
//! and cubecl (about 18 minutes on 2 cores, measured on a fresh clone).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Features per package, from `cargo tree -e features` with `args`.
fn features(args: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--prefix", "none", "-e"])
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim_end_matches(" (*)");
        if let Some((name, feature)) = line.split_once(" feature \"") {
            map.entry(name.to_string())
                .or_default()
                .insert(feature.trim_end_matches('"').to_string());
        } else if let Some((name, _version)) = line.split_once(" v") {
            map.entry(name.to_string()).or_default();
        }
    }
    map
}

#[test]
fn the_cli_and_the_tests_build_shared_dependencies_with_the_same_features() {
    // What `cargo run --package xtask` builds: xtask's normal and build dependencies.
    let cli = features(&["features,normal,build", "--package", "xtask"]);
    // What `cargo test --workspace` builds: every member with its dev-dependencies.
    let tests = features(&["features", "--workspace"]);
    assert!(cli.contains_key("burn") && cli.contains_key("cubecl-common"));
    let mut differ = Vec::new();
    for (name, cli_features) in &cli {
        if let Some(test_features) = tests.get(name)
            && !name.starts_with("qkv-")
            && name != "xtask"
            && cli_features != test_features
        {
            differ.push(format!(
                "{name}: the CLI builds it with {cli_features:?}, the tests with {test_features:?}"
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
