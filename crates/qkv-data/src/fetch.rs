//! Checksum-verified downloads with a local cache, and Tiny Shakespeare.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::DataError;

/// A file that can be fetched from a fixed address and checked against a published digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    /// Human-readable name, for messages.
    pub name: &'static str,
    /// Where to download it from.
    pub url: &'static str,
    /// Its SHA-256, lowercase hex.
    pub sha256: &'static str,
    /// Its size in bytes.
    pub size: u64,
    /// The file name in a cache or data directory.
    pub file_name: &'static str,
}

/// Tiny Shakespeare, from Andrej Karpathy's char-rnn repository.
pub const TINY_SHAKESPEARE: DataSource = DataSource {
    name: "Tiny Shakespeare",
    url: "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    sha256: "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    size: 1_115_394,
    file_name: "tinyshakespeare.txt",
};

/// The environment variable naming a directory of local data files.
pub const DATA_DIR_ENV: &str = "QKV_DATA_DIR";

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `bytes` as lowercase hex (a digest as it is published).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file of `source` in `cache_dir`, downloading it from `url` (normally `source.url`) if
/// it is not there yet.
///
/// A cached file is trusted only if its digest matches. A download is verified before it is
/// cached, and written to a temporary name then renamed, so a failed or corrupted download
/// never leaves a file behind.
pub fn fetch_verified(
    source: &DataSource,
    url: &str,
    cache_dir: &Path,
) -> Result<PathBuf, DataError> {
    let target = cache_dir.join(source.file_name);
    if let Ok(bytes) = std::fs::read(&target)
        && sha256_hex(&bytes) == source.sha256
    {
        return Ok(target);
    }
    let bytes = download(url, source.size + 1).map_err(|reason| DataError::Download {
        name: source.name.to_string(),
        url: url.to_string(),
        reason,
        env_var: DATA_DIR_ENV,
        file_name: source.file_name.to_string(),
    })?;
    let actual = sha256_hex(&bytes);
    if actual != source.sha256 {
        return Err(DataError::Checksum {
            url: url.to_string(),
            expected: source.sha256.to_string(),
            actual,
        });
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| DataError::Io {
        path: cache_dir.into(),
        source: e,
    })?;
    let tmp = cache_dir.join(format!("{}.partial", source.file_name));
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, &target))
        .map_err(|e| DataError::Io {
            path: target.clone(),
            source: e,
        })?;
    Ok(target)
}

/// GETs `url` with a time limit, refusing bodies longer than `limit` bytes.
fn download(url: &str, limit: u64) -> Result<Vec<u8>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .timeout_connect(Some(Duration::from_secs(15)))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Where Tiny Shakespeare comes from, in this order: `explicit` (a `--data FILE`, used as
/// given); `$QKV_DATA_DIR/tinyshakespeare.txt`; the copy cached in `cache_dir`; a download
/// from its canonical address into `cache_dir`, verified by SHA-256.
pub fn tiny_shakespeare(explicit: Option<&Path>, cache_dir: &Path) -> Result<PathBuf, DataError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(DataError::Io {
                path: path.into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file (given with --data)",
                ),
            })
        };
    }
    if let Some(dir) = std::env::var_os(DATA_DIR_ENV) {
        let path = PathBuf::from(dir).join(TINY_SHAKESPEARE.file_name);
        if path.is_file() {
            return Ok(path);
        }
    }
    fetch_verified(&TINY_SHAKESPEARE, TINY_SHAKESPEARE.url, cache_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// Serves `body` to every request on 127.0.0.1 for `requests` requests, then stops.
    fn serve(body: Vec<u8>, requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let mut stream = stream.unwrap();
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        format!("http://{address}/input.txt")
    }

    fn source_for(body: &[u8]) -> DataSource {
        let digest: &'static str = Box::leak(sha256_hex(body).into_boxed_str());
        DataSource {
            name: "test corpus",
            url: "unused",
            sha256: digest,
            size: body.len() as u64,
            file_name: "corpus.txt",
        }
    }

    fn cache(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qkv-fetch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn good_download_is_verified_and_cached() {
        let body = b"First Citizen:\nBefore we proceed any further, hear me speak.\n".to_vec();
        let source = source_for(&body);
        let url = serve(body.clone(), 1);
        let dir = cache("good");
        let path = fetch_verified(&source, &url, &dir).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        // The server has stopped: a second call must be served from the cache.
        let again = fetch_verified(&source, &url, &dir).unwrap();
        assert_eq!(again, path);
    }

    #[test]
    fn corrupted_download_is_rejected_and_not_cached() {
        let body = b"the real text".to_vec();
        let source = source_for(&body);
        let url = serve(b"the real texT".to_vec(), 1);
        let dir = cache("corrupt");
        let err = fetch_verified(&source, &url, &dir).unwrap_err();
        assert!(matches!(err, DataError::Checksum { .. }), "{err}");
        assert!(err.to_string().contains("checksum mismatch"));
        assert!(!dir.join("corpus.txt").exists() && !dir.join("corpus.txt.partial").exists());
    }

    #[test]
    fn no_server_names_the_way_out() {
        // Bind then drop a listener: nothing listens on that port any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let source = source_for(b"x");
        let err = fetch_verified(
            &source,
            &format!("http://127.0.0.1:{port}/x"),
            &cache("none"),
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("--data")
                && message.contains(DATA_DIR_ENV)
                && message.contains("offline"),
            "{message}"
        );
    }

    #[test]
    fn explicit_file_wins_and_missing_one_is_named() {
        let dir = cache("explicit");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("my.txt");
        std::fs::write(&file, "hello").unwrap();
        assert_eq!(tiny_shakespeare(Some(&file), &dir).unwrap(), file);
        let err = tiny_shakespeare(Some(&dir.join("nope.txt")), &dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.txt") && err.contains("--data"), "{err}");
    }
}
