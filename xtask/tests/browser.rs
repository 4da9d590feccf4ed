//! The attention page in a real browser: headless Chromium driven through chromedriver (the
//! W3C WebDriver protocol, spoken over HTTP on 127.0.0.1). The test points the mouse at a
//! token, reads back the weights the page highlights, and checks them against the command's
//! JSON; clicks a weight and checks the neuron view's score and probability against the
//! head dump; and fails on any error or `console.error` in the page.
//!
//! It needs `chromium` and `chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`, which `.ci/run` does); without them it fails and says so. Set
//! `QKV_PAGE_SCREENSHOT=docs/attention-page.png` to keep a screenshot of the page.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qkv_test_support::temp_dir;
use serde_json::{Value, json};

mod common;
use common::{tiny_recall, xtask};

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    base: String,
    agent: ureq::Agent,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start() -> Driver {
        let driver = which("chromedriver").expect(
            "the browser test needs chromedriver and chromium on PATH: \
             apt-get install chromium chromium-driver (.ci/run installs them)",
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            agent,
        };
        let start = Instant::now();
        loop {
            if let Ok(response) = driver.agent.get(format!("{}/status", driver.base)).call()
                && response.status() == 200
            {
                return driver;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromedriver did not answer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One WebDriver command; panics with the driver's message on an error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let text = response.into_body().read_to_string().unwrap();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status == 200, "{method} {path}: {status} {text}");
        value["value"].clone()
    }
}

/// A browser session on one page.
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self
            .driver
            .agent
            .delete(format!("{}/session/{}", self.driver.base, self.id))
            .call();
    }
}

impl<'a> Session<'a> {
    fn open(driver: &'a Driver, page: &Path) -> Session<'a> {
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1500"]
        });
        if let Some(chromium) = which("chromium") {
            options["binary"] = json!(chromium);
        }
        let created = driver.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": options,
                "goog:loggingPrefs": {"browser": "ALL"},
            }}})),
        );
        let session = Session {
            driver,
            id: created["sessionId"].as_str().unwrap().to_string(),
        };
        let url = format!("file://{}", page.canonicalize().unwrap().display());
        session.call("POST", "/url", Some(json!({ "url": url })));
        session
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    fn element(&self, css: &str) -> Value {
        self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )
    }

    /// Moves the mouse onto the element `css` (a real pointer move: the page sees
    /// `mouseenter`).
    fn hover(&self, css: &str) {
        let element = self.element(css);
        self.call(
            "POST",
            "/actions",
            Some(json!({ "actions": [{
                "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" },
                "actions": [{ "type": "pointerMove", "duration": 0, "origin": element, "x": 0, "y": 0 }]
            }]})),
        );
    }

    fn click(&self, css: &str) {
        let element = self.element(css);
        let id = element
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        self.call("POST", &format!("/element/{id}/click"), None);
    }

    /// Errors the page recorded, and the browser log's severe entries.
    fn errors(&self) -> Vec<String> {
        let mut errors: Vec<String> = self
            .script("return window.qkvErrors;", json!([]))
            .as_array()
            .expect("the page installs window.qkvErrors")
            .iter()
            .map(|e| e.to_string())
            .collect();
        let log = self.call("POST", "/se/log", Some(json!({ "type": "browser" })));
        for entry in log
            .as_array()
            .expect("chromedriver returns the browser log")
        {
            if entry["level"] == "SEVERE" {
                errors.push(entry["message"].to_string());
            }
        }
        errors
    }
}

/// Base64 (standard alphabet, padded) to bytes.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = text.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= (value(c) as u32) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// The weights the head view shows: per row (`layer L head H`), `(key, weight)` pairs.
const READ_HEAD_VIEW: &str = "
    return [...document.querySelectorAll('#heads-0 tr')].map(tr => [
        tr.cells[0].textContent,
        [...tr.querySelectorAll('.w[data-k]')].map(s => [+s.dataset.k, +s.dataset.w]),
        tr.querySelector('.w[data-k][style*=underline]') ? +tr.querySelector('.w[data-k][style*=underline]').dataset.k : -1,
    ]);";

#[test]
fn the_attention_page_shows_the_weights_of_the_token_under_the_pointer() {
    let dir = temp_dir("browser");
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    let mut train = tiny_recall(run_s, "30", "30");
    let layers = train.iter().position(|&a| a == "--n-layers").unwrap();
    train[layers + 1] = "2";
    let trained = xtask(&train);
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let prompt = "c7 a2 k0 f5 b9 h3 ? a 2 ? h 3 ? c 7 ? k";
    let all = dir.join("all");
    let one = dir.join("one");
    for (out, extra) in [(&all, vec![]), (&one, vec!["--layer", "1", "--head", "1"])] {
        let mut args = vec![
            "attention",
            "--checkpoint",
            run_s,
            "--prompt",
            prompt,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let shown = xtask(&args);
        assert!(
            shown.status.success(),
            "{}",
            String::from_utf8_lossy(&shown.stderr)
        );
    }
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(all.join("attention.json")).unwrap())
            .unwrap();
    let probs = &expected["probs"];
    let n = expected["tokens"].as_array().unwrap().len();
    let (n_layers, n_heads) = (
        probs.as_array().unwrap().len(),
        probs[0].as_array().unwrap().len(),
    );
    assert_eq!((n_layers, n_heads), (2, 2));

    let driver = Driver::start();
    let page = Session::open(&driver, &all.join("attention.html"));
    for query in [3, 9, n - 1, 0] {
        page.hover(&format!("#tokens-0 .tok[data-i='{query}']"));
        let active = page.script(
            "return [...document.querySelectorAll('#tokens-0 .tok.active')].map(e => +e.dataset.i);",
            json!([]),
        );
        assert_eq!(active, json!([query]), "the pointed token is marked");
        let rows = page.script(READ_HEAD_VIEW, json!([]));
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), n_layers * n_heads);
        for (r, row) in rows.iter().enumerate() {
            let (l, h) = (r / n_heads, r % n_heads);
            assert_eq!(row[0], format!("layer {l} head {h}"));
            let shown = row[1].as_array().unwrap();
            // Causal: the keys up to the query, each with its weight from the JSON.
            assert_eq!(shown.len(), query + 1, "query {query}, layer {l} head {h}");
            let want: Vec<f64> = (0..=query)
                .map(|k| probs[l][h][query * n + k].as_f64().unwrap())
                .collect();
            for (k, cell) in shown.iter().enumerate() {
                assert_eq!(cell[0].as_u64().unwrap() as usize, k);
                let got = cell[1].as_f64().unwrap();
                assert!(
                    (got - want[k]).abs() <= 1e-7,
                    "query {query}, layer {l} head {h}, key {k}: page {got}, JSON {}",
                    want[k]
                );
            }
            // The underlined key is the heaviest.
            let best = (0..=query).fold(0, |m, k| if want[k] > want[m] { k } else { m });
            assert_eq!(row[2].as_u64().unwrap() as usize, best);
        }
    }
    assert_eq!(page.errors(), Vec::<String>::new(), "errors in the page");

    // The neuron view of one query-key pair, against the head dump of `--layer 1 --head 1`.
    let dump: Value =
        serde_json::from_str(&std::fs::read_to_string(one.join("layer1-head1.json")).unwrap())
            .unwrap();
    let page = Session::open(&driver, &one.join("attention.html"));
    let (query, key) = (n - 1, 2);
    page.hover(&format!("#tokens-0 .tok[data-i='{query}']"));
    // The page of --layer 1 shows layer 1 only: its second row is head 1.
    page.click(&format!("#heads-0 tr:nth-child(2) .w[data-k='{key}']"));
    let shown = page.script(
        "const e = document.getElementById('neuron-score-0'); return [+e.dataset.score, +e.dataset.prob];",
        json!([]),
    );
    let score = dump["scores_scaled_unmasked"][query][key].as_f64().unwrap();
    let prob = dump["probs"][query][key].as_f64().unwrap();
    let (got_score, got_prob) = (shown[0].as_f64().unwrap(), shown[1].as_f64().unwrap());
    assert!(
        (got_score - score).abs() <= 1e-4 * score.abs().max(1.0),
        "neuron view score {got_score}, dump {score}"
    );
    assert!(
        (got_prob - prob).abs() <= 1e-6,
        "probability {got_prob}, dump {prob}"
    );
    assert_eq!(page.errors(), Vec::<String>::new(), "errors in the page");

    // A screenshot: kept in the temporary directory, and where asked.
    let png = base64(page.call("GET", "/screenshot", None).as_str().unwrap());
    assert_eq!(&png[1..4], b"PNG");
    std::fs::write(dir.join("attention-page.png"), &png).unwrap();
    if let Some(path) = std::env::var_os("QKV_PAGE_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }
}
