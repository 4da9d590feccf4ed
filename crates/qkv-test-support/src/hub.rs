//! A stand-in for the Hugging Face Hub on 127.0.0.1, for download tests without a network:
//! it answers `HEAD` and `GET` of `/{repo}/resolve/{revision}/{file}` with the headers the
//! Hub sends (`X-Repo-Commit`, `ETag` or `X-Linked-Etag` and `X-Linked-Size`), redirects
//! large files to a `/cdn/` address as the Hub does, honours `Range`, and misbehaves on
//! request ([`Fault`]). Also a tiny random GPT-2 in Hugging Face's file layout.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// How the server misbehaves when serving one file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Serves the file as announced.
    None,
    /// Sends the headers of the whole file, then only this many bytes of it, and closes.
    Truncate(usize),
    /// Sends the whole length with one byte changed (the announced hash no longer matches).
    Corrupt,
    /// Accepts the request and never answers.
    Hang,
    /// Answers 404 for the file.
    Missing,
}

struct File {
    bytes: Vec<u8>,
    lfs: bool,
    fault: Fault,
}

struct State {
    repo: String,
    commit: String,
    files: BTreeMap<String, File>,
    log: Vec<String>,
}

/// The fake Hub. It serves until the test process ends.
pub struct FakeHub {
    address: String,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    /// Serves `files` (name, bytes, whether stored as a large file) of `repo` at `commit` for
    /// every revision name.
    pub fn start(repo: &str, commit: &str, files: Vec<(String, Vec<u8>, bool)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let address = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            repo: repo.to_string(),
            commit: commit.to_string(),
            files: files
                .into_iter()
                .map(|(name, bytes, lfs)| {
                    (
                        name,
                        File {
                            bytes,
                            lfs,
                            fault: Fault::None,
                        },
                    )
                })
                .collect(),
            log: Vec::new(),
        }));
        let shared = state.clone();
        let origin = address.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                let origin = origin.clone();
                std::thread::spawn(move || serve(stream, &state, &origin));
            }
        });
        Self { address, state }
    }

    /// The endpoint, `http://127.0.0.1:PORT` (what `HF_ENDPOINT` would hold).
    pub fn endpoint(&self) -> &str {
        &self.address
    }

    /// Makes the server misbehave on `file` from now on.
    pub fn set_fault(&self, file: &str, fault: Fault) {
        let mut state = self.state.lock().unwrap();
        state.files.get_mut(file).expect("a served file").fault = fault;
    }

    /// Every request so far: `METHOD PATH` and, when one was sent, ` Range: …`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// How many requests have been made.
    pub fn request_count(&self) -> usize {
        self.state.lock().unwrap().log.len()
    }
}

/// The lowercase hex SHA-256 of `bytes` (a large file's ETag on the Hub).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The git blob SHA-1 of `bytes` (a small file's ETag on the Hub).
pub fn git_sha1_hex(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, origin: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    let mut state = state.lock().unwrap();
    state.log.push(match &range {
        Some(r) => format!("{method} {path} Range: {r}"),
        None => format!("{method} {path}"),
    });
    let reply = answer(&state, &method, &path, range.as_deref(), origin);
    drop(state);
    match reply {
        Reply::Hang => std::thread::sleep(std::time::Duration::from_secs(600)),
        Reply::Send { head, body } => {
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            let _ = stream.flush();
        }
    }
}

enum Reply {
    Hang,
    Send { head: String, body: Vec<u8> },
}

fn answer(state: &State, method: &str, path: &str, range: Option<&str>, origin: &str) -> Reply {
    let status = |code: &str, headers: &str| Reply::Send {
        head: format!("HTTP/1.1 {code}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"),
        body: Vec::new(),
    };
    // A large file's bytes, at its CDN address.
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let Some(file) = state.files.values().find(|f| sha256_hex(&f.bytes) == sha) else {
            return status("404 Not Found", "");
        };
        return bytes(file, method, range);
    }
    let prefix = format!("/{}/resolve/", state.repo);
    let Some(rest) = path.strip_prefix(&prefix) else {
        return status("404 Not Found", "X-Error-Code: RepoNotFound\r\n");
    };
    let Some((_revision, name)) = rest.split_once('/') else {
        return status("404 Not Found", "X-Error-Code: EntryNotFound\r\n");
    };
    let Some(file) = state.files.get(name) else {
        return status("404 Not Found", "X-Error-Code: EntryNotFound\r\n");
    };
    match file.fault {
        Fault::Missing => return status("404 Not Found", "X-Error-Code: EntryNotFound\r\n"),
        Fault::Hang if method == "HEAD" => return Reply::Hang,
        _ => {}
    }
    if file.lfs {
        let sha = sha256_hex(&file.bytes);
        return status(
            "302 Found",
            &format!(
                "X-Repo-Commit: {}\r\nX-Linked-Etag: \"{sha}\"\r\nX-Linked-Size: {}\r\nETag: \"{}\"\r\nLocation: {origin}/cdn/{sha}\r\n",
                state.commit,
                file.bytes.len(),
                git_sha1_hex(b"a pointer file")
            ),
        );
    }
    match bytes(file, method, range) {
        Reply::Send { head, body } => Reply::Send {
            head: head.replacen(
                "\r\n",
                &format!(
                    "\r\nX-Repo-Commit: {}\r\nETag: \"{}\"\r\n",
                    state.commit,
                    git_sha1_hex(&file.bytes)
                ),
                1,
            ),
            body,
        },
        hang => hang,
    }
}

/// The file's bytes (all, or from a `Range: bytes=a-[b]`), with its fault applied.
fn bytes(file: &File, method: &str, range: Option<&str>) -> Reply {
    let n = file.bytes.len();
    let (from, to) = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            let a = a.parse().unwrap_or(0);
            let b = b
                .parse::<usize>()
                .map_or(n.saturating_sub(1), |b| b.min(n - 1));
            (a, b)
        })
        .unwrap_or((0, n.saturating_sub(1)));
    if from >= n {
        return Reply::Send {
            head: format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{n}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            body: Vec::new(),
        };
    }
    let status = if range.is_some() {
        format!("206 Partial Content\r\nContent-Range: bytes {from}-{to}/{n}")
    } else {
        "200 OK".to_string()
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        to + 1 - from
    );
    if method == "HEAD" {
        return Reply::Send {
            head,
            body: Vec::new(),
        };
    }
    let mut body = file.bytes[from..=to].to_vec();
    match file.fault {
        Fault::Hang => return Reply::Hang,
        Fault::Truncate(keep) => body.truncate(keep.saturating_sub(from)),
        Fault::Corrupt => {
            let last = body.len() - 1;
            body[last] ^= 0x55;
        }
        Fault::None | Fault::Missing => {}
    }
    Reply::Send { head, body }
}

/// A tiny GPT-2 in Hugging Face's layout, random but seeded: `config.json` and
/// `model.safetensors` (`Conv1D` weights `[d_in, d_out]`, fused `c_attn`, tied head).
pub fn tiny_gpt2(vocab: usize, n_positions: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let (d, layers, heads) = (32usize, 2usize, 2usize);
    let config = format!(
        r#"{{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": {vocab}, "n_positions": {n_positions}, "n_embd": {d}, "n_layer": {layers}, "n_head": {heads}, "n_inner": null, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05, "tie_word_embeddings": true}}"#
    );
    let mut rng = qkv_rng::SplitMix64::new(seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, fill: Option<f32>| {
        let n = shape.iter().product();
        let values = (0..n)
            .map(|_| fill.unwrap_or_else(|| (rng.next_f64() as f32 - 0.5) * 0.2))
            .collect();
        tensors.push((name, shape, values));
    };
    add("wte.weight".into(), vec![vocab, d], None);
    add("wpe.weight".into(), vec![n_positions, d], None);
    for l in 0..layers {
        let p = format!("h.{l}.");
        add(format!("{p}ln_1.weight"), vec![d], Some(1.0));
        add(format!("{p}ln_1.bias"), vec![d], Some(0.0));
        add(format!("{p}attn.c_attn.weight"), vec![d, 3 * d], None);
        add(format!("{p}attn.c_attn.bias"), vec![3 * d], None);
        add(format!("{p}attn.c_proj.weight"), vec![d, d], None);
        add(format!("{p}attn.c_proj.bias"), vec![d], None);
        add(format!("{p}ln_2.weight"), vec![d], Some(1.0));
        add(format!("{p}ln_2.bias"), vec![d], Some(0.0));
        add(format!("{p}mlp.c_fc.weight"), vec![d, 4 * d], None);
        add(format!("{p}mlp.c_fc.bias"), vec![4 * d], None);
        add(format!("{p}mlp.c_proj.weight"), vec![4 * d, d], None);
        add(format!("{p}mlp.c_proj.bias"), vec![d], None);
    }
    add("ln_f.weight".into(), vec![d], Some(1.0));
    add("ln_f.bias".into(), vec![d], Some(0.0));
    vec![
        ("config.json".into(), config.into_bytes()),
        ("model.safetensors".into(), safetensors_bytes(&tensors)),
    ]
}

/// The tensors as a safetensors file (F32), through the `safetensors` crate.
fn safetensors_bytes(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let raw: Vec<(&String, &Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            (
                name,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = raw.iter().map(|(name, shape, bytes)| {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, (*shape).clone(), bytes)
                .expect("shapes match the data");
        ((*name).clone(), view)
    });
    safetensors::serialize(views, None).expect("serialising in memory")
}
