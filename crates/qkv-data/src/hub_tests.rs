//! Tests of the Hub client against a fake Hub on 127.0.0.1.

use super::*;
use qkv_test_support::hub::{FakeHub, Fault, git_sha1_hex, sha256_hex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture() -> (FakeHub, Vec<u8>, Vec<u8>) {
    let config = br#"{"model_type": "gpt2"}"#.to_vec();
    // Large enough for several reads; stored as a large (LFS) file.
    let weights: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let hub = FakeHub::start(
        "owner/tiny",
        COMMIT,
        vec![
            ("config.json".into(), config.clone(), false),
            ("model.safetensors".into(), weights.clone(), true),
        ],
    );
    (hub, config, weights)
}

fn cache(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-hub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn client(hub: &FakeHub, dir: &Path) -> Hub {
    Hub::new(hub.endpoint(), dir).timeouts(Duration::from_secs(2), Duration::from_secs(2))
}

fn repo() -> HubRepo {
    HubRepo::new("owner/tiny", "main").unwrap()
}

fn get(client: &Hub, file: &str) -> Result<Option<PathBuf>, DataError> {
    client.get(&repo(), file, &mut |_, _, _| {})
}

#[test]
fn downloads_into_python_s_cache_layout() {
    let (hub, config, weights) = fixture();
    let dir = cache("layout");
    let mut seen = Vec::new();
    let path = client(&hub, &dir)
        .get(&repo(), "model.safetensors", &mut |_, done, total| {
            seen.push((done, total))
        })
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), weights);
    let folder = dir.join("models--owner--tiny");
    assert_eq!(
        path,
        folder
            .join("snapshots")
            .join(COMMIT)
            .join("model.safetensors")
    );
    // A relative link to the blob named by the content's SHA-256, as huggingface_hub makes.
    let target = std::fs::read_link(&path).unwrap();
    assert_eq!(
        target,
        PathBuf::from(format!("../../blobs/{}", sha256_hex(&weights)))
    );
    assert_eq!(
        std::fs::read_to_string(folder.join("refs/main")).unwrap(),
        COMMIT
    );
    // Progress ran from 0 to the whole size.
    assert_eq!(seen.first(), Some(&(0, weights.len() as u64)));
    assert_eq!(
        seen.last(),
        Some(&(weights.len() as u64, weights.len() as u64))
    );
    // A small file's blob is named by its git SHA-1.
    let config_path = get(&client(&hub, &dir), "config.json").unwrap().unwrap();
    assert_eq!(std::fs::read(&config_path).unwrap(), config);
    assert!(folder.join("blobs").join(git_sha1_hex(&config)).is_file());
}

#[test]
fn a_cached_file_is_not_downloaded_again_and_serves_offline() {
    let (hub, _, weights) = fixture();
    let dir = cache("cached");
    get(&client(&hub, &dir), "model.safetensors").unwrap();
    let gets = |hub: &FakeHub| {
        hub.requests()
            .iter()
            .filter(|r| r.starts_with("GET"))
            .count()
    };
    let before = gets(&hub);
    let again = get(&client(&hub, &dir), "model.safetensors")
        .unwrap()
        .unwrap();
    assert_eq!(gets(&hub), before, "{:?}", hub.requests());
    // Offline: no request at all.
    let count = hub.request_count();
    let offline = client(&hub, &dir).offline(true);
    assert_eq!(get(&offline, "model.safetensors").unwrap().unwrap(), again);
    assert_eq!(hub.request_count(), count);
    assert_eq!(std::fs::read(&again).unwrap(), weights);
    // Offline at a commit hash (no ref names it): the snapshot of that commit.
    let pinned = HubRepo::new("owner/tiny", COMMIT).unwrap();
    let at_commit = offline
        .get(&pinned, "model.safetensors", &mut |_, _, _| {})
        .unwrap()
        .unwrap();
    assert_eq!(at_commit, again);
    // Offline without a copy: an error that names the variable and the cache.
    let err = get(&offline, "config.json").unwrap_err().to_string();
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains(&dir.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_truncated_download_resumes_where_it_stopped() {
    let (hub, _, weights) = fixture();
    let dir = cache("truncated");
    hub.set_fault("model.safetensors", Fault::Truncate(1_000_000));
    let err = get(&client(&hub, &dir), "model.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("1000000 of 3000000") && err.contains("resume"),
        "{err}"
    );
    let blobs = dir.join("models--owner--tiny/blobs");
    let partial = blobs.join(format!("{}.incomplete", sha256_hex(&weights)));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 1_000_000);
    assert!(!dir.join("models--owner--tiny/snapshots").exists());
    hub.set_fault("model.safetensors", Fault::None);
    let path = get(&client(&hub, &dir), "model.safetensors")
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), weights);
    assert!(!partial.exists());
    let resumed: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /cdn/") && r.contains("Range: bytes=1000000-"))
        .collect();
    // One ranged request to the CDN (the redirect keeps the Range header).
    assert_eq!(resumed.len(), 1, "{:?}", hub.requests());
}

#[test]
fn a_corrupt_download_is_deleted_and_reported() {
    let (hub, config, weights) = fixture();
    let dir = cache("corrupt");
    hub.set_fault("model.safetensors", Fault::Corrupt);
    let err = get(&client(&hub, &dir), "model.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("corrupt") && err.contains(&sha256_hex(&weights)),
        "{err}"
    );
    hub.set_fault("config.json", Fault::Corrupt);
    let err = get(&client(&hub, &dir), "config.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("git SHA-1") && err.contains(&git_sha1_hex(&config)),
        "{err}"
    );
    // Nothing is left in the cache to be trusted later.
    let blobs = dir.join("models--owner--tiny/blobs");
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 0);
    assert!(!dir.join("models--owner--tiny/snapshots").exists());
}

#[test]
fn a_missing_file_is_none_and_a_missing_repo_an_error() {
    let (hub, _, _) = fixture();
    let dir = cache("missing");
    assert_eq!(get(&client(&hub, &dir), "tokenizer.json").unwrap(), None);
    hub.set_fault("config.json", Fault::Missing);
    assert_eq!(get(&client(&hub, &dir), "config.json").unwrap(), None);
    let other = HubRepo::new("owner/nope", "main").unwrap();
    let err = client(&hub, &dir)
        .get(&other, "config.json", &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no such repository") && err.contains("owner/nope"),
        "{err}"
    );
}

#[test]
fn a_hanging_server_times_out_and_the_cache_still_serves() {
    let (hub, config, _) = fixture();
    let dir = cache("hang");
    hub.set_fault("config.json", Fault::Hang);
    let started = std::time::Instant::now();
    let err = get(&client(&hub, &dir), "config.json")
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        err.contains("cannot reach") && err.contains("HF_ENDPOINT"),
        "{err}"
    );
    // With a cached copy, an unreachable Hub is not an error.
    hub.set_fault("config.json", Fault::None);
    get(&client(&hub, &dir), "config.json").unwrap();
    hub.set_fault("config.json", Fault::Hang);
    let path = get(&client(&hub, &dir), "config.json").unwrap().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), config);
}

#[test]
fn bad_names_are_refused_before_any_request() {
    for id in ["", "a/b/c", "../x", "a b", "owner/"] {
        assert!(HubRepo::new(id, "main").is_err(), "{id:?}");
    }
    assert!(HubRepo::new("gpt2", "..").is_err());
    assert!(HubRepo::new("gpt2", "refs/pr/1").is_ok());
    let (hub, _, _) = fixture();
    let dir = cache("names");
    for file in ["../config.json", "/etc/passwd", "a//b", ""] {
        assert!(get(&client(&hub, &dir), file).is_err(), "{file:?}");
    }
    assert_eq!(hub.request_count(), 0);
}
