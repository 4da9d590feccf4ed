//! Tests of the model: PyTorch parity, cached generation, weights, configuration.

mod generation;
mod model;
mod pytorch_parity;
mod weights;

use std::path::PathBuf;

/// The directory of committed fixtures (made by `fixtures/make_fixtures.py`).
pub(crate) fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The fixture JSON with the reference batch, losses and generation.
pub(crate) fn reference_json() -> serde_json::Value {
    let text =
        std::fs::read_to_string(fixtures().join("gpt2-tiny-reference.json")).expect("fixture json");
    serde_json::from_str(&text).expect("valid json")
}

/// A fresh temporary directory for one test.
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    // Unique per call: the same test body runs on several backends at once.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "{}-{name}-{}-{n}",
        env!("CARGO_PKG_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
