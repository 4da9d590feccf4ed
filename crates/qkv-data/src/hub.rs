//! Files of Hugging Face Hub repositories, downloaded into the Hugging Face cache: resumable,
//! verified against the size and hash the Hub publishes, with time limits, and usable offline.
//!
//! The cache is the one Python's `huggingface_hub` keeps (`models--owner--name/blobs`,
//! `snapshots/<commit>/<file>` linking to a blob, `refs/<revision>`), so files downloaded by
//! either side are reused by the other, and the environment variables mean what Python users
//! expect: `HF_HUB_CACHE` / `HF_HOME` (where), `HF_ENDPOINT` (from where), `HF_HUB_OFFLINE`
//! (cache only), `HF_TOKEN` (gated and private repositories), `HF_HUB_ETAG_TIMEOUT` and
//! `HF_HUB_DOWNLOAD_TIMEOUT` (seconds of silence before giving up).
//!
//! The cache itself (its layout, reading a revision's snapshot, writing refs) goes through the
//! `hf-hub` crate. The transfer is this module's own: `hf-hub` 0.4's blocking client has no
//! time limits (a server that stops answering hangs it forever), does not check what it
//! downloaded against the published hash, and panics on some malformed answers.
//!
//! The protocol, as the Hub serves it: a `HEAD` of `{endpoint}/{repo}/resolve/{revision}/{file}`
//! answers with the commit (`X-Repo-Commit`), the file's identity (`X-Linked-Etag` for large
//! files, the SHA-256 of the content; else `ETag`, the git blob SHA-1) and its size
//! (`X-Linked-Size`, else `Content-Length`); a `GET` of the same address (redirected to a CDN
//! for large files) serves the bytes, from an offset with `Range`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::fetch::hex;

/// The Hub's address when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Called as bytes arrive: `(file name, bytes so far, total bytes)`.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// A model repository on the Hub at one revision: `gpt2`, `openai-community/gpt2-medium`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    id: String,
    revision: String,
}

impl HubRepo {
    /// Checks `id` (`name` or `owner/name`: letters, digits, `-`, `_`, `.`) and `revision` (a
    /// branch, tag or commit) and makes the repository's handle.
    pub fn new(id: &str, revision: &str) -> Result<Self, DataError> {
        let part_ok = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.len() <= 96
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let parts: Vec<&str> = id.split('/').collect();
        if parts.len() > 2 || !parts.iter().all(|p| part_ok(p)) {
            return Err(DataError::Invalid(format!(
                "{id:?} is not a Hugging Face model id: give `name` or `owner/name` (letters, digits, '-', '_', '.'), for example gpt2 or openai-community/gpt2-medium"
            )));
        }
        let revision_ok =
            !revision.is_empty() && revision.len() <= 256 && revision.split('/').all(part_ok);
        if !revision_ok {
            return Err(DataError::Invalid(format!(
                "{revision:?} is not a revision: give a branch, tag or commit hash (default main)"
            )));
        }
        Ok(Self {
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    /// The repository id, `owner/name` or `name`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The branch, tag or commit.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    fn cache_handle(&self) -> hf_hub::Repo {
        hf_hub::Repo::with_revision(
            self.id.clone(),
            hf_hub::RepoType::Model,
            self.revision.clone(),
        )
    }
}

/// A client for the Hub's files and the local cache of them.
#[derive(Debug, Clone)]
pub struct Hub {
    endpoint: String,
    cache: hf_hub::Cache,
    offline: bool,
    token: Option<String>,
    etag_timeout: Duration,
    download_timeout: Duration,
}

/// What the Hub says about a file before it is downloaded.
#[derive(Debug, Clone)]
struct Metadata {
    commit: String,
    etag: String,
    size: u64,
}

/// Why a request for metadata failed: the network (the cache may still serve), or an answer.
enum MetaError {
    Network(String),
    Answer(DataError),
}

impl Hub {
    /// A client from the environment, as Python's `huggingface_hub` reads it:
    /// - the cache: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    ///   `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`;
    /// - `HF_ENDPOINT` (default [`DEFAULT_ENDPOINT`]); `HF_HUB_OFFLINE=1` for the cache only;
    /// - `HF_TOKEN`, else the token file `huggingface-cli login` writes (`$HF_HOME/token`);
    /// - `HF_HUB_ETAG_TIMEOUT` and `HF_HUB_DOWNLOAD_TIMEOUT`: seconds (default 10) a server
    ///   may stay silent before the request fails.
    pub fn from_env() -> Result<Self, DataError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from);
        let hf_home = match (var("HF_HOME"), var("XDG_CACHE_HOME"), &home) {
            (Some(h), _, _) => PathBuf::from(h),
            (None, Some(xdg), _) => PathBuf::from(xdg).join("huggingface"),
            (None, None, Some(home)) => home.join(".cache").join("huggingface"),
            (None, None, None) => {
                return Err(DataError::Invalid(
                    "cannot find the Hugging Face cache: neither HF_HOME nor HOME is set; set HF_HOME to a writable directory".into(),
                ));
            }
        };
        let cache_dir = var("HF_HUB_CACHE").map_or_else(|| hf_home.join("hub"), PathBuf::from);
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
        });
        let seconds = |name: &str| -> Result<Duration, DataError> {
            match var(name) {
                None => Ok(Duration::from_secs(10)),
                Some(v) => match v.parse::<f64>() {
                    Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
                    _ => Err(DataError::Invalid(format!(
                        "{name}={v:?} is not a number of seconds between 0 and 86400"
                    ))),
                },
            }
        };
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(hf_home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Ok(Self::new(
            var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()),
            cache_dir,
        )
        .offline(offline)
        .token(token)
        .timeouts(
            seconds("HF_HUB_ETAG_TIMEOUT")?,
            seconds("HF_HUB_DOWNLOAD_TIMEOUT")?,
        ))
    }

    /// A client of `endpoint` caching into `cache_dir` (the `hub` directory itself), online,
    /// without a token, with 10-second time limits.
    pub fn new(endpoint: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            cache: hf_hub::Cache::new(cache_dir.into()),
            offline: false,
            token: None,
            etag_timeout: Duration::from_secs(10),
            download_timeout: Duration::from_secs(10),
        }
    }

    /// Cache only (`HF_HUB_OFFLINE`): nothing is asked of the network.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// The access token sent as `Authorization: Bearer …`.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// How long a server may stay silent: answering a metadata request (`etag`), and
    /// between any two reads of a download (`download`).
    pub fn timeouts(mut self, etag: Duration, download: Duration) -> Self {
        self.etag_timeout = etag;
        self.download_timeout = download;
        self
    }

    /// The cache directory (the `hub` directory).
    pub fn cache_dir(&self) -> &Path {
        self.cache.path()
    }

    /// Whether the client uses the cache only.
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// The local path of `file` in `repo`, downloading it into the cache unless the cache
    /// already holds the revision's copy. `Ok(None)`: the repository has no such file.
    ///
    /// Offline, only the cache is read. Online, when the Hub cannot be reached, a cached copy
    /// of the revision is used if there is one. A download that stops part-way leaves a
    /// `.incomplete` file that the next call resumes from; one that arrives whole but does
    /// not match the published size or hash is deleted and reported.
    pub fn get(
        &self,
        repo: &HubRepo,
        file: &str,
        progress: Progress<'_>,
    ) -> Result<Option<PathBuf>, DataError> {
        check_file_name(file)?;
        // The revision's cached copy, else an error saying why the network was not used.
        let cached_or = |reason: String| match self.cached(repo, file) {
            Some(path) => Ok(Some(path)),
            None => Err(self.error(repo, file, reason)),
        };
        if self.offline {
            return cached_or(format!(
                "HF_HUB_OFFLINE is set and the cache ({}) has no copy of this revision's file; unset HF_HUB_OFFLINE to download it, or set HF_HOME to the cache that has it",
                self.cache_dir().display()
            ));
        }
        let meta = match self.metadata(repo, file) {
            Ok(Some(meta)) => meta,
            Ok(None) => return Ok(None),
            Err(MetaError::Answer(e)) => return Err(e),
            Err(MetaError::Network(reason)) => {
                return cached_or(format!(
                    "cannot reach {} ({reason}) and the cache ({}) has no copy; check the network, HF_ENDPOINT, or a proxy (HTTPS_PROXY)",
                    self.endpoint,
                    self.cache_dir().display()
                ));
            }
        };
        let folder = self.cache.path().join(repo.cache_handle().folder_name());
        let blob = folder.join("blobs").join(&meta.etag);
        let pointer = folder.join("snapshots").join(&meta.commit).join(file);
        let blob_ok = std::fs::metadata(&blob).is_ok_and(|m| m.len() == meta.size);
        if !blob_ok {
            self.download(repo, file, &meta, &blob, progress)?;
        }
        if std::fs::metadata(&pointer).map_or(true, |m| m.len() != meta.size) {
            link(&blob, &pointer, file).map_err(|e| io_error(&pointer, e))?;
        }
        if repo.revision != meta.commit {
            self.cache
                .repo(repo.cache_handle())
                .create_ref(&meta.commit)
                .map_err(|e| io_error(&folder.join("refs"), e))?;
        }
        Ok(Some(pointer))
    }

    /// The cached copy of `file` at the repository's revision: through `refs/<revision>`
    /// for a branch or tag, straight from `snapshots/<commit>` for a commit hash (which has
    /// no ref), as Python's `huggingface_hub` looks.
    fn cached(&self, repo: &HubRepo, file: &str) -> Option<PathBuf> {
        let is_commit =
            repo.revision.len() == 40 && repo.revision.chars().all(|c| c.is_ascii_hexdigit());
        if is_commit {
            let path = self
                .cache
                .path()
                .join(repo.cache_handle().folder_name())
                .join("snapshots")
                .join(&repo.revision)
                .join(file);
            return path.is_file().then_some(path);
        }
        self.cache.repo(repo.cache_handle()).get(file)
    }

    fn url(&self, repo: &HubRepo, file: &str) -> String {
        // The revision is one path segment: `refs/pr/1` is sent as `refs%2Fpr%2F1`.
        let revision = repo.revision.replace('/', "%2F");
        format!("{}/{}/resolve/{revision}/{file}", self.endpoint, repo.id)
    }

    fn error(&self, repo: &HubRepo, file: &str, reason: String) -> DataError {
        DataError::Hub {
            repo: repo.id.clone(),
            revision: repo.revision.clone(),
            file: file.to_string(),
            reason,
        }
    }

    fn agent(&self, timeout: Duration, redirects: u32) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(redirects)
            .max_redirects_will_error(false)
            .accept_encoding("identity")
            .timeout_connect(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_per_read(Some(timeout))
            .user_agent(concat!("qkv/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }

    fn metadata(&self, repo: &HubRepo, file: &str) -> Result<Option<Metadata>, MetaError> {
        let agent = self.agent(self.etag_timeout, 0);
        let mut url = self.url(repo, file);
        let answer = |reason: String| MetaError::Answer(self.error(repo, file, reason));
        // Relative redirects (a renamed repository) are followed here; an absolute one (a
        // large file's CDN address) already carries the headers we need.
        for _ in 0..5 {
            let mut request = agent.head(&url);
            if let Some(token) = &self.token {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            let response = request
                .call()
                .map_err(|e| MetaError::Network(e.to_string()))?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.to_string())
            };
            if (300..400).contains(&status)
                && let Some(location) = header("location")
                && location.starts_with('/')
            {
                let origin_end = url
                    .find("://")
                    .and_then(|s| url[s + 3..].find('/').map(|i| s + 3 + i))
                    .unwrap_or(url.len());
                url = format!("{}{location}", &url[..origin_end]);
                continue;
            }
            match status {
                200..=399 => {}
                404 if header("x-error-code").as_deref() == Some("RepoNotFound") => {
                    return Err(answer(format!(
                        "no such repository at {} (check the name; private repositories need HF_TOKEN)",
                        self.endpoint
                    )));
                }
                404 => return Ok(None),
                401 | 403 => {
                    return Err(answer(format!(
                        "the Hub refused access (HTTP {status}); the repository may be gated or private: accept its terms on the website and set HF_TOKEN"
                    )));
                }
                _ => return Err(answer(format!("the Hub answered HTTP {status}"))),
            }
            let commit = header("x-repo-commit").ok_or_else(|| {
                answer(format!(
                    "{} did not send X-Repo-Commit: is HF_ENDPOINT a Hugging Face Hub?",
                    self.endpoint
                ))
            })?;
            let etag = header("x-linked-etag")
                .or_else(|| header("etag"))
                .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
                .ok_or_else(|| answer("the Hub sent no ETag for the file".into()))?;
            let size = header("x-linked-size")
                .or_else(|| header("content-length"))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| answer("the Hub sent no size for the file".into()))?;
            let safe = |s: &str| {
                !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric())
            };
            if !safe(&commit) || !safe(&etag) {
                return Err(answer(format!(
                    "the Hub sent a malformed commit {commit:?} or ETag {etag:?}"
                )));
            }
            return Ok(Some(Metadata { commit, etag, size }));
        }
        Err(answer("more than 5 redirects".into()))
    }

    fn download(
        &self,
        repo: &HubRepo,
        file: &str,
        meta: &Metadata,
        blob: &Path,
        progress: Progress<'_>,
    ) -> Result<(), DataError> {
        let dir = blob.parent().expect("a blob lives in blobs/");
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let partial = blob.with_extension("incomplete");
        let mut start = std::fs::metadata(&partial).map_or(0, |m| m.len());
        if start > meta.size {
            start = 0;
        }
        let fail = |reason: String| self.error(repo, file, reason);
        if start < meta.size {
            let agent = self.agent(self.download_timeout, 10);
            let mut request = agent.get(&self.url(repo, file));
            if start > 0 {
                request = request.header("Range", format!("bytes={start}-"));
            }
            if let Some(token) = &self.token {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            let response = request.call().map_err(|e| {
                fail(format!(
                    "the download failed ({e}); run the command again to resume"
                ))
            })?;
            let status = response.status().as_u16();
            let resumed = match status {
                206 => {
                    let range = response
                        .headers()
                        .get("content-range")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if !range.starts_with(&format!("bytes {start}-")) {
                        return Err(fail(format!(
                            "asked for bytes from {start}, the server sent {range:?}"
                        )));
                    }
                    true
                }
                200 => false,
                _ => return Err(fail(format!("the download answered HTTP {status}"))),
            };
            if !resumed {
                start = 0;
            }
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(resumed)
                .write(true)
                .truncate(!resumed)
                .open(&partial)
                .map_err(|e| io_error(&partial, e))?;
            // At most one byte more than announced is read: enough to tell "too long".
            let mut body = response
                .into_body()
                .into_reader()
                .take(meta.size - start + 1);
            let mut done = start;
            let mut buffer = vec![0u8; 1 << 20];
            progress(file, done, meta.size);
            loop {
                let n = match body.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        return Err(fail(format!(
                            "the download stopped after {done} of {} bytes ({e}); run the command again to resume from there",
                            meta.size
                        )));
                    }
                };
                out.write_all(&buffer[..n])
                    .map_err(|e| io_error(&partial, e))?;
                done += n as u64;
                progress(file, done, meta.size);
            }
            out.sync_all().map_err(|e| io_error(&partial, e))?;
            if done < meta.size {
                return Err(fail(format!(
                    "the server closed the connection after {done} of {} bytes; run the command again to resume from there",
                    meta.size
                )));
            }
        }
        let size = std::fs::metadata(&partial).map_or(0, |m| m.len());
        let verdict = if size != meta.size {
            Err(format!(
                "{size} bytes arrived, the Hub announced {}",
                meta.size
            ))
        } else {
            verify(&partial, &meta.etag).map_err(|e| io_error(&partial, e))?
        };
        if let Err(reason) = verdict {
            let _ = std::fs::remove_file(&partial);
            return Err(fail(format!(
                "the download is corrupt: {reason}; it was deleted, run the command again (if it keeps failing, the server at HF_ENDPOINT serves a different file than it announces)"
            )));
        }
        std::fs::rename(&partial, blob).map_err(|e| io_error(blob, e))
    }
}

/// Checks a downloaded file against its ETag: the SHA-256 of the content (64 hex digits, the
/// Hub's large files) or the git blob SHA-1 (40 hex digits, the rest). Other ETags carry no
/// hash (some mirrors); the size check is then all there is.
fn verify(path: &Path, etag: &str) -> std::io::Result<Result<(), String>> {
    let is_hex = etag.chars().all(|c| c.is_ascii_hexdigit());
    let actual = match etag.len() {
        64 if is_hex => {
            let mut h = Sha256::new();
            hash_file(path, |chunk| h.update(chunk))?;
            ("SHA-256", hex(&h.finalize()))
        }
        40 if is_hex => {
            let mut h = Sha1::new();
            h.update(format!("blob {}\0", std::fs::metadata(path)?.len()).as_bytes());
            hash_file(path, |chunk| h.update(chunk))?;
            ("git SHA-1", hex(&h.finalize()))
        }
        _ => return Ok(Ok(())),
    };
    Ok(if actual.1 == etag.to_ascii_lowercase() {
        Ok(())
    } else {
        Err(format!(
            "its {} is {}, the Hub published {etag}",
            actual.0, actual.1
        ))
    })
}

fn hash_file(path: &Path, mut update: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(());
        }
        update(&buffer[..n]);
    }
}

/// Links `snapshots/<commit>/<file>` to its blob as Python does (a relative symlink), or
/// copies the blob where symlinks are not allowed.
fn link(blob: &Path, pointer: &Path, file: &str) -> std::io::Result<()> {
    let dir = pointer
        .parent()
        .expect("a pointer lives in snapshots/<commit>/");
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::remove_file(pointer);
    let up = "../".repeat(2 + file.matches('/').count());
    let target = PathBuf::from(format!(
        "{up}blobs/{}",
        blob.file_name().expect("blob name").to_string_lossy()
    ));
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(&target, pointer);
    #[cfg(not(unix))]
    let linked: std::io::Result<()> = Err(std::io::ErrorKind::Unsupported.into());
    match linked {
        Ok(()) => Ok(()),
        Err(_) => std::fs::copy(blob, pointer).map(|_| ()),
    }
}

fn check_file_name(file: &str) -> Result<(), DataError> {
    let ok = !file.is_empty()
        && file.len() <= 256
        && file.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if ok {
        Ok(())
    } else {
        Err(DataError::Invalid(format!(
            "{file:?} is not a file name in a repository"
        )))
    }
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.into(),
        source,
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
