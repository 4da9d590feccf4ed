//! The self-contained HTML page of `cargo xtask attention`: the prompt's tokens, and for the
//! token under the pointer, every head's weights over the tokens before it.

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
pub fn script_safe_json(value: &serde_json::Value) -> String {
    let json = serde_json::to_string(value).expect("JSON serialises");
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The page. `probs[layer][head]` is `seq × seq`, row-major (query, key).
pub fn page(title: &str, tokens: &[String], probs: &[Vec<Vec<f32>>]) -> String {
    let data = serde_json::json!({ "tokens": tokens, "probs": probs });
    let token_spans: String = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "<span class=\"tok\" data-i=\"{i}\">{}</span>",
                escape_html(&visible(t))
            )
        })
        .collect();
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
.tok {{ display: inline-block; padding: 2px 4px; margin: 1px; border: 1px solid #ddd; border-radius: 3px; font-family: monospace; white-space: pre; cursor: pointer; }}
.tok.active {{ outline: 2px solid #d62728; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
td {{ padding: 2px 6px; vertical-align: middle; }}
.w {{ display: inline-block; padding: 1px 3px; margin: 0 1px; font-family: monospace; white-space: pre; border-radius: 2px; }}
</style></head>
<body>
<h1>{title}</h1>
<p>Point at a token to see, for every layer and head, how its attention is spread over the
tokens it can see (darker = more weight). The heaviest key of each head is underlined.</p>
<div id="tokens">{token_spans}</div>
<table id="heads"></table>
<script id="data" type="application/json">{data}</script>
<script>
const data = JSON.parse(document.getElementById('data').textContent);
const table = document.getElementById('heads');
function shown(t) {{ return t.replace(/\n/g, '\u21b5').replace(/ /g, '\u00b7'); }}
function show(q) {{
  document.querySelectorAll('.tok').forEach(el => el.classList.toggle('active', +el.dataset.i === q));
  table.textContent = '';
  data.probs.forEach((layer, l) => layer.forEach((head, h) => {{
    const row = table.insertRow();
    row.insertCell().textContent = 'layer ' + l + ' head ' + h;
    const cell = row.insertCell();
    const n = data.tokens.length;
    const weights = head.slice(q * n, q * n + q + 1);
    const best = weights.indexOf(Math.max(...weights));
    weights.forEach((w, k) => {{
      const span = document.createElement('span');
      span.className = 'w';
      span.textContent = shown(data.tokens[k]);
      span.title = w.toFixed(3);
      span.style.background = 'rgba(8,48,107,' + w.toFixed(3) + ')';
      span.style.color = w > 0.5 ? 'white' : 'black';
      if (k === best) span.style.textDecoration = 'underline';
      cell.appendChild(span);
    }});
  }}));
}}
document.querySelectorAll('.tok').forEach(el => el.addEventListener('mouseenter', () => show(+el.dataset.i)));
show(data.tokens.length - 1);
</script>
</body></html>
"#,
        title = escape_html(title),
        data = script_safe_json(&data),
    )
}

/// A token as shown in the page's token row: newlines and spaces made visible.
fn visible(token: &str) -> String {
    token.replace('\n', "\u{21b5}").replace(' ', "\u{00b7}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_escaped_everywhere() {
        let tokens: Vec<String> = ["<script>alert(1)</script>", "&", "\"q\"", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let probs = vec![vec![vec![1.0f32; 16]]];
        let html = page("prompt <script>alert(1)</script>", &tokens, &probs);
        assert!(
            !html.contains("<script>alert"),
            "an unescaped tag got through"
        );
        assert!(!html.contains("</script>alert") && !html.contains("alert(1)</script>"));
        // Our own two script elements, and no others.
        assert_eq!(html.matches("<script").count(), 2);
        assert_eq!(html.matches("</script>").count(), 2);
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("<span class=\"tok\" data-i=\"1\">&amp;</span>"));
        // The data block still round-trips to the same tokens.
        let start =
            html.find("type=\"application/json\">").unwrap() + "type=\"application/json\">".len();
        let end = html[start..].find("</script>").unwrap() + start;
        let data: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
        assert_eq!(data["tokens"][0], "<script>alert(1)</script>");
    }
}
