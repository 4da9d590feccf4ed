//! The self-contained HTML pages of `attention`, `lens` and `patch`: one page generator, with
//! a section per analysis. Everything is in the file (no network): the data as one JSON
//! block, the script inline. Token text is escaped everywhere.
//!
//! Sections, each present when its data is:
//! - **head view** (per attention view: self-attention of a GPT, cross-attention of a
//!   translation): point at a query token to see every head's weights over the keys;
//! - **model view**: a thumbnail of every layer × head pattern, the pointed query's row
//!   marked; patterns longer than [`THUMB_CELLS`] are max-pooled down to it;
//! - **neuron view**: click a weight in the head view to see that query's and key's vectors,
//!   their element-wise product, the score (the product's sum / √d_head) and the probability;
//! - **logit lens**: per stage and position, the most probable next token and the target's
//!   probability;
//! - **patching**: the fraction each head, and each block's stream at each position, restores.
//!
//! Long inputs: the head view shows at most [`HEAD_VIEW_KEYS`] keys per query (the latest
//! ones), with the total weight of those left out; a page holds at most [`MAX_PAGE_WEIGHTS`]
//! attention weights (layers × heads × queries × keys), and the commands refuse more, naming
//! `--layer` to narrow them.

use anyhow::{Result, bail};
use serde::Serialize;

/// Keys shown per query in the head view; earlier ones are summed into one entry.
pub const HEAD_VIEW_KEYS: usize = 64;
/// Rows and columns of a model-view thumbnail, at most.
pub const THUMB_CELLS: usize = 64;
/// Attention weights one page may hold (about 40 MB of JSON).
pub const MAX_PAGE_WEIGHTS: usize = 4 << 20;

/// One attention of the model, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AttentionView {
    /// Its name ("self-attention", "cross-attention").
    pub name: String,
    /// The query tokens (rows).
    pub queries: Vec<String>,
    /// The key tokens (columns).
    pub keys: Vec<String>,
    /// The first layer shown (the page labels layers from it).
    pub first_layer: usize,
    /// `[layer][head]`: `queries × keys` probabilities, row-major.
    pub probs: Vec<Vec<Vec<f32>>>,
    /// `[layer][head]`: `queries × d_head` query vectors, for the neuron view (may be empty).
    pub q: Vec<Vec<Vec<f32>>>,
    /// `[layer][head]`: `keys × d_head` key vectors (may be empty).
    pub k: Vec<Vec<Vec<f32>>>,
    /// The width of one head, when `q` and `k` are given.
    pub d_head: usize,
}

impl AttentionView {
    /// The number of attention weights it holds.
    pub fn weights(&self) -> usize {
        self.probs.iter().flatten().map(Vec::len).sum()
    }
}

/// The logit lens section: stage names, and per stage and position the top token and the
/// probability of the target.
#[derive(Debug, Clone, Serialize)]
pub struct LensSection {
    /// The tokens of the prompt (columns).
    pub tokens: Vec<String>,
    /// Stage names (rows).
    pub stages: Vec<String>,
    /// `[stage][position]`: the most probable next token's text and probability.
    pub top: Vec<Vec<(String, f32)>>,
    /// `[stage][position]`: the target's probability and rank, when there is a target.
    pub target: Vec<Vec<Option<(f32, usize)>>>,
}

impl LensSection {
    /// The section for a lens report of `tokens`, each top token's text given by `label`.
    pub fn from_report(
        report: &qkv_transformer::interp::LensReport,
        tokens: Vec<String>,
        label: impl Fn(u32) -> String,
    ) -> Self {
        Self {
            tokens,
            stages: report.stages.clone(),
            top: report
                .top
                .iter()
                .map(|row| row.iter().map(|t| (label(t[0].id), t[0].prob)).collect())
                .collect(),
            target: report
                .target
                .iter()
                .map(|row| row.iter().map(|t| t.map(|(rank, p)| (p, rank))).collect())
                .collect(),
        }
    }
}

/// The patching section.
#[derive(Debug, Clone, Serialize)]
pub struct PatchSection {
    /// The clean prompt's tokens.
    pub tokens: Vec<String>,
    /// What is measured, in words.
    pub metric: String,
    /// `[layer][head]` fractions restored.
    pub heads: Vec<Vec<f32>>,
    /// `[layer][position]` fractions restored by the stream entering the block.
    pub resid_pre: Vec<Vec<f32>>,
}

/// Everything one page shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Page {
    /// The heading.
    pub title: String,
    /// Attention views (head, model and neuron views each).
    pub views: Vec<AttentionView>,
    /// The logit lens, when computed.
    pub lens: Option<LensSection>,
    /// Patching, when computed.
    pub patch: Option<PatchSection>,
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON that is safe inside a `<script>` element: `<`, `>` and `&` are written as `\u00XX`
/// escapes, so no token can close the element or open a tag.
pub fn script_safe_json(value: &impl Serialize) -> String {
    let json = serde_json::to_string(value).expect("page data serialises");
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

impl Page {
    /// The page as HTML, or an error when it would hold more than [`MAX_PAGE_WEIGHTS`].
    pub fn html(&self) -> Result<String> {
        let weights: usize = self.views.iter().map(AttentionView::weights).sum();
        if weights > MAX_PAGE_WEIGHTS {
            bail!(
                "the page would hold {weights} attention weights (layers × heads × queries × keys); \
                 it takes at most {MAX_PAGE_WEIGHTS}: give a shorter prompt, or --layer"
            );
        }
        Ok(format!(
            r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script>
// Installed first, in its own element, so that even a syntax error in the page's script
// below is recorded (the browser test reads window.qkvErrors).
window.qkvErrors = [];
window.addEventListener('error', e => window.qkvErrors.push(String(e.message)));
const qkvConsoleError = console.error.bind(console);
console.error = (...a) => {{ window.qkvErrors.push(a.map(String).join(' ')); qkvConsoleError(...a); }};
</script>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }}
h2 {{ margin-top: 1.6em; border-bottom: 1px solid #ccc; }}
.tok {{ display: inline-block; padding: 2px 4px; margin: 1px; border: 1px solid #ddd; border-radius: 3px; font-family: monospace; white-space: pre; cursor: pointer; }}
.tok.active {{ outline: 2px solid #d62728; }}
table {{ border-collapse: collapse; margin-top: .5em; }}
td, th {{ padding: 2px 6px; vertical-align: middle; font-size: 13px; }}
.w {{ display: inline-block; padding: 1px 3px; margin: 0 1px; font-family: monospace; white-space: pre; border-radius: 2px; cursor: pointer; }}
.w.picked {{ outline: 2px solid #ff7f0e; }}
.grid {{ display: grid; gap: 6px; }}
.grid figure {{ margin: 0; font-size: 11px; text-align: center; }}
canvas {{ image-rendering: pixelated; border: 1px solid #ccc; }}
.bar {{ display: inline-block; width: 6px; vertical-align: bottom; }}
.cell {{ min-width: 2.5em; text-align: center; font-family: monospace; }}
.note {{ color: #666; font-size: 13px; }}
</style></head>
<body>
<h1>{title}</h1>
<div id="app"></div>
<script id="data" type="application/json">{data}</script>
<script>
{script}
</script>
</body></html>
"#,
            title = escape_html(&self.title),
            data = script_safe_json(self),
            script = SCRIPT
                .replace("__HEAD_VIEW_KEYS__", &HEAD_VIEW_KEYS.to_string())
                .replace("__THUMB_CELLS__", &THUMB_CELLS.to_string()),
        ))
    }
}

/// The page's script. Builds every section from the JSON block with DOM calls only
/// (`textContent`, never `innerHTML`), so token text can never become markup.
const SCRIPT: &str = r#"
const data = JSON.parse(document.getElementById('data').textContent);
const app = document.getElementById('app');
const KEYS = __HEAD_VIEW_KEYS__, THUMB = __THUMB_CELLS__;
function el(tag, props, parent) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  if (parent) parent.appendChild(e);
  return e;
}
function shown(t) { return t.replace(/\n/g, '\u21b5').replace(/ /g, '\u00b7'); }
function blue(w) { return 'rgba(8,48,107,' + Math.max(0, Math.min(1, w)).toFixed(3) + ')'; }

data.views.forEach((view, v) => {
  const nq = view.queries.length, nk = view.keys.length;
  el('h2', { textContent: view.name + ': head view' }, app);
  el('p', { className: 'note', textContent: 'Point at a query token to see how every head spreads its weight over the keys (darker = more; the heaviest is underlined). At most ' + KEYS + ' keys are shown per query, the latest ones; click a weight for the neuron view.' }, app);
  const row = el('div', { id: 'tokens-' + v }, app);
  view.queries.forEach((t, i) => {
    const s = el('span', { className: 'tok', textContent: shown(t) }, row);
    s.dataset.i = i;
    s.addEventListener('mouseenter', () => show(i));
  });
  const table = el('table', { id: 'heads-' + v }, app);

  el('h2', { textContent: view.name + ': model view' }, app);
  el('p', { className: 'note', textContent: 'Every layer (rows) and head (columns): queries down, keys across' + (Math.max(nq, nk) > THUMB ? ', max-pooled to ' + THUMB + ' cells' : '') + '. The red line is the query pointed at.' }, app);
  const nHeads = view.probs[0].length;
  const grid = el('div', { className: 'grid', id: 'model-' + v }, app);
  grid.style.gridTemplateColumns = 'repeat(' + nHeads + ', max-content)';
  const rows = Math.min(nq, THUMB), cols = Math.min(nk, THUMB), scale = Math.max(2, Math.floor(160 / Math.max(rows, cols)));
  const thumbs = [];
  view.probs.forEach((layer, l) => layer.forEach((p, h) => {
    const fig = el('figure', {}, grid);
    const c = el('canvas', { width: cols * scale, height: rows * scale }, fig);
    el('figcaption', { textContent: 'L' + (view.first_layer + l) + ' H' + h }, fig);
    const g = c.getContext('2d');
    for (let r = 0; r < rows; r++) for (let k = 0; k < cols; k++) {
      let m = 0;
      const r0 = Math.floor(r * nq / rows), r1 = Math.floor((r + 1) * nq / rows);
      const k0 = Math.floor(k * nk / cols), k1 = Math.floor((k + 1) * nk / cols);
      for (let a = r0; a < r1; a++) for (let b = k0; b < k1; b++) m = Math.max(m, p[a * nk + b]);
      g.fillStyle = blue(m);
      g.fillRect(k * scale, r * scale, scale, scale);
    }
    thumbs.push({ c, g, img: g.getImageData(0, 0, c.width, c.height) });
  }));

  const neuron = el('div', { id: 'neuron-' + v }, app);
  function pick(l, h, q, k) {
    neuron.textContent = '';
    el('h2', { textContent: view.name + ': neuron view' }, neuron);
    if (!view.q.length) { el('p', { textContent: 'This page holds no query and key vectors.' }, neuron); return; }
    const d = view.d_head;
    const qv = view.q[l][h].slice(q * d, q * d + d), kv = view.k[l][h].slice(k * d, k * d + d);
    const prod = qv.map((x, i) => x * kv[i]);
    const score = prod.reduce((a, b) => a + b, 0) / Math.sqrt(d);
    const prob = view.probs[l][h][q * nk + k];
    el('p', { textContent: 'layer ' + (view.first_layer + l) + ' head ' + h + ': query ' + shown(view.queries[q]) + ' (position ' + q + ') \u00b7 key ' + shown(view.keys[k]) + ' (position ' + k + ')' }, neuron);
    const big = Math.max(1e-9, ...qv.map(Math.abs), ...kv.map(Math.abs), ...prod.map(Math.abs));
    const t = el('table', {}, neuron);
    [['q', qv], ['k', kv], ['q \u2299 k', prod]].forEach(([name, vec]) => {
      const tr = t.insertRow();
      el('th', { textContent: name }, tr);
      const td = tr.insertCell();
      vec.forEach(x => {
        const b = el('span', { className: 'bar', title: x.toFixed(4) }, td);
        b.style.height = (2 + 40 * Math.abs(x) / big).toFixed(1) + 'px';
        b.style.background = x >= 0 ? '#2b6cb0' : '#c53030';
      });
    });
    const out = el('p', { id: 'neuron-score-' + v }, neuron);
    out.textContent = 'score = sum(q \u2299 k) / \u221a' + d + ' = ' + score.toFixed(4) + ' \u00b7 probability ' + prob.toFixed(4);
    out.dataset.score = score; out.dataset.prob = prob;
  }

  function show(q) {
    row.querySelectorAll('.tok').forEach(e => e.classList.toggle('active', +e.dataset.i === q));
    table.textContent = '';
    view.probs.forEach((layer, l) => layer.forEach((p, h) => {
      const tr = table.insertRow();
      tr.insertCell().textContent = 'layer ' + (view.first_layer + l) + ' head ' + h;
      const cell = tr.insertCell();
      const w = p.slice(q * nk, q * nk + nk);
      let last = nk - 1;
      while (last > 0 && w[last] === 0) last--;
      const first = Math.max(0, last + 1 - KEYS);
      if (first > 0) {
        const rest = w.slice(0, first).reduce((a, b) => a + b, 0);
        el('span', { className: 'w more', textContent: '\u2026' + first + ' earlier: ' + rest.toFixed(3) }, cell);
      }
      let best = first;
      for (let k = first; k <= last; k++) if (w[k] > w[best]) best = k;
      for (let k = first; k <= last; k++) {
        const s = el('span', { className: 'w', textContent: shown(view.keys[k]), title: w[k].toFixed(3) }, cell);
        s.dataset.k = k; s.dataset.w = w[k];
        s.style.background = blue(w[k]);
        s.style.color = w[k] > 0.5 ? 'white' : 'black';
        if (k === best) s.style.textDecoration = 'underline';
        s.addEventListener('click', () => {
          table.querySelectorAll('.picked').forEach(e => e.classList.remove('picked'));
          s.classList.add('picked');
          pick(l, h, q, k);
        });
      }
    }));
    const r = Math.floor(q * rows / nq);
    thumbs.forEach(t => {
      t.g.putImageData(t.img, 0, 0);
      t.g.fillStyle = 'rgba(214,39,40,0.6)';
      t.g.fillRect(0, r * scale + scale / 2 - 1, t.c.width, 2);
    });
  }
  show(nq - 1);
});

function heat(title, note, rowNames, colNames, values, id, fmt) {
  el('h2', { textContent: title }, app);
  el('p', { className: 'note', textContent: note }, app);
  const t = el('table', { id }, app);
  const head = t.insertRow();
  el('th', {}, head);
  colNames.forEach(c => el('th', { textContent: shown(c) }, head));
  values.forEach((r, i) => {
    const tr = t.insertRow();
    el('th', { textContent: rowNames[i] }, tr);
    r.forEach(x => {
      const [text, w, tip] = fmt(x);
      const td = el('td', { className: 'cell', textContent: text, title: tip }, tr);
      td.style.background = blue(w);
      td.style.color = w > 0.5 ? 'white' : 'black';
    });
  });
}
if (data.lens) {
  const L = data.lens;
  const cells = L.top.map((r, s) => r.map((top, p) => [top, L.target[s][p]]));
  heat('logit lens', 'The stream after each stage read as the next token: the most probable token, shaded by the probability of the true next token (hover for its rank).',
    L.stages, L.tokens, cells, 'lens', ([top, target]) => [shown(top[0]), target ? target[0] : 0,
      'top ' + shown(top[0]) + ' ' + (100 * top[1]).toFixed(1) + '%' + (target ? '; target ' + (100 * target[0]).toFixed(1) + '%, rank ' + target[1] : '')]);
}
if (data.patch) {
  const P = data.patch;
  const frac = x => [x.toFixed(2), x, P.metric + ': ' + x.toFixed(4) + ' restored'];
  heat('patching: heads', 'Fraction of ' + P.metric + ' restored by patching one head\'s output from the clean run into the corrupted one.',
    P.heads.map((_, l) => 'layer ' + l), P.heads[0].map((_, h) => 'head ' + h), P.heads, 'patch-heads', frac);
  heat('patching: positions', 'The same, for the residual stream entering each block at one position.',
    P.resid_pre.map((_, l) => 'layer ' + l), P.tokens, P.resid_pre, 'patch-positions', frac);
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn view(tokens: &[&str]) -> AttentionView {
        let n = tokens.len();
        let tokens: Vec<String> = tokens.iter().map(|s| s.to_string()).collect();
        AttentionView {
            name: "self-attention".into(),
            queries: tokens.clone(),
            keys: tokens,
            first_layer: 0,
            probs: vec![vec![vec![1.0 / n as f32; n * n]]],
            q: vec![],
            k: vec![],
            d_head: 0,
        }
    }

    #[test]
    fn tokens_are_escaped_everywhere() {
        let page = Page {
            title: "prompt <script>alert(1)</script>".into(),
            views: vec![view(&["<script>alert(1)</script>", "&", "\"q\"", "x"])],
            ..Page::default()
        };
        let html = page.html().unwrap();
        assert!(
            !html.contains("<script>alert"),
            "an unescaped tag got through"
        );
        assert!(!html.contains("</script>alert") && !html.contains("alert(1)</script>"));
        // Our own three script elements, and no others.
        assert_eq!(html.matches("<script").count(), 3);
        assert_eq!(html.matches("</script>").count(), 3);
        assert!(html.contains("prompt &lt;script&gt;alert(1)&lt;/script&gt;"));
        // The script builds text with textContent only.
        assert!(!SCRIPT.contains("innerHTML"));
        // The data block round-trips to the same tokens.
        let start =
            html.find("type=\"application/json\">").unwrap() + "type=\"application/json\">".len();
        let end = html[start..].find("</script>").unwrap() + start;
        let data: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
        assert_eq!(data["views"][0]["queries"][0], "<script>alert(1)</script>");
    }

    #[test]
    fn a_page_too_large_is_refused_with_the_limit() {
        let mut big = view(&["a"]);
        big.probs = vec![vec![vec![0.0; MAX_PAGE_WEIGHTS + 1]]];
        let page = Page {
            views: vec![big],
            ..Page::default()
        };
        let message = page.html().unwrap_err().to_string();
        assert!(message.contains("--layer") && message.contains(&MAX_PAGE_WEIGHTS.to_string()));
    }
}
