//! Where a command's model comes from: a local directory (`--checkpoint`) or a GPT-2 on the
//! Hugging Face Hub (`--model`), downloaded once into the Hugging Face cache.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use qkv_data::{Hub, HubRepo};

/// The model options of `sample`, `summarize`, `attention`, `lens`, `patch` and `attribute`.
#[derive(Debug, Clone, Args)]
pub struct ModelSource {
    /// A run directory (`runs/NAME`) or a Hugging Face GPT-2 directory (`config.json`,
    /// `model.safetensors`, optionally `tokenizer.json`).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub checkpoint: Option<PathBuf>,
    /// A GPT-2 on the Hugging Face Hub: gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2,
    /// or any owner/name of a GPT-2 repository. Downloaded on first use into the Hugging Face
    /// cache (HF_HOME, HF_HUB_CACHE), shared with Python; HF_HUB_OFFLINE=1 uses the cache
    /// only, HF_ENDPOINT names a mirror, HF_TOKEN opens gated repositories.
    #[arg(long)]
    pub model: Option<String>,
    /// The branch, tag or commit of --model.
    #[arg(long, default_value = "main")]
    pub revision: String,
}

impl ModelSource {
    /// The model's directory: `--checkpoint` as given, or the cache's snapshot of `--model`
    /// after fetching what is missing.
    pub fn dir(&self) -> Result<PathBuf> {
        match (&self.checkpoint, &self.model) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, Some(id)) => fetch_gpt2(id, &self.revision),
            (None, None) => bail!("give --checkpoint DIR or --model NAME"),
        }
    }

    /// Whether the model is a local directory (a qkv run can only be local).
    pub fn is_local(&self) -> bool {
        self.checkpoint.is_some()
    }

    /// How the model is named in titles and messages.
    pub fn label(&self) -> String {
        match (&self.checkpoint, &self.model) {
            (Some(dir), _) => dir.display().to_string(),
            (None, Some(id)) => format!("{id} (Hugging Face Hub)"),
            (None, None) => String::new(),
        }
    }

    /// Where `command` writes by default: `<checkpoint>/<command>`, or
    /// `runs/hub--<owner>--<name>/<command>` for a Hub model (the cache is not written to).
    pub fn default_out(&self, command: &str) -> PathBuf {
        match (&self.checkpoint, &self.model) {
            (Some(dir), _) => dir.join(command),
            (None, id) => PathBuf::from("runs")
                .join(format!(
                    "hub--{}",
                    id.as_deref().unwrap_or("model").replace('/', "--")
                ))
                .join(command),
        }
    }
}

/// Fetches `config.json`, `model.safetensors` and, if the repository has one,
/// `tokenizer.json` of a GPT-2 repository; returns the snapshot directory holding them.
pub fn fetch_gpt2(id: &str, revision: &str) -> Result<PathBuf> {
    let hub = Hub::from_env()?;
    let repo = HubRepo::new(id, revision)?;
    let mut progress = ProgressLine::default();
    let mut get = |file: &str| {
        hub.get(&repo, file, &mut |name, done, total| {
            progress.show(name, done, total)
        })
    };
    let config = get("config.json")?.ok_or_else(|| {
        anyhow!("{id} (revision {revision}) has no config.json: is it a model repository?")
    })?;
    let weights = get("model.safetensors")?.ok_or_else(|| {
        anyhow!(
            "{id} (revision {revision}) has no model.safetensors; qkv reads safetensors weights only (this repository may have only pytorch_model.bin)"
        )
    })?;
    let tokenizer = get("tokenizer.json")?;
    let dir = config.parent().expect("a snapshot file").to_path_buf();
    let same = |p: &PathBuf| p.parent() == Some(dir.as_path());
    if !same(&weights) || tokenizer.as_ref().is_some_and(|t| !same(t)) {
        bail!(
            "{id} changed on the Hub while its files were fetched (they come from different commits); run the command again, or pin --revision to a commit"
        );
    }
    Ok(dir)
}

/// A one-line download progress display on stderr: redrawn in place on a terminal, a line
/// at the start and the end otherwise.
#[derive(Default)]
struct ProgressLine {
    shown_percent: Option<u64>,
}

impl ProgressLine {
    fn show(&mut self, file: &str, done: u64, total: u64) {
        let mb = |b: u64| b as f64 / 1e6;
        let percent = (done * 100).checked_div(total).unwrap_or(100);
        if self.shown_percent == Some(percent) {
            return;
        }
        let first = self.shown_percent.is_none();
        self.shown_percent = Some(percent);
        let mut err = std::io::stderr();
        if err.is_terminal() {
            let _ = write!(
                err,
                "\r{file}: {:.1} / {:.1} MB ({percent}%)",
                mb(done),
                mb(total)
            );
        } else if first {
            let _ = write!(err, "downloading {file} ({:.1} MB)", mb(total));
            if done > 0 {
                let _ = write!(err, ", resuming at {:.1} MB", mb(done));
            }
            let _ = writeln!(err);
        }
        if done == total {
            if err.is_terminal() {
                let _ = writeln!(err);
            } else {
                let _ = writeln!(err, "downloaded {file}");
            }
            self.shown_percent = None;
        }
    }
}
