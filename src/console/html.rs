//! HTML for the console: the page frame, tables, and charts drawn as SVG on the
//! server.
//!
//! Charts are server-rendered SVG rather than a JavaScript charting library: the
//! numbers are already on the server, an SVG is a few hundred bytes, it needs no
//! bundle, no build step and no CDN, it renders with scripts off, and each chart has
//! a text alternative and the same numbers in a table beside it.

use std::fmt::Write as _;

/// `text` with HTML's special characters escaped, for element content and quoted
/// attribute values.
pub fn esc(text: &str) -> String {
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

/// A page of the console.
pub struct Page<'a> {
    pub title: &'a str,
    /// The nav entry to mark as current.
    pub current: &'a str,
    /// Who is signed in, as shown in the header; `None` on the sign-in page.
    pub viewer: Option<&'a str>,
    /// Whether a sign-out button is shown (not in local mode).
    pub can_sign_out: bool,
    pub body: String,
}

const NAV: [(&str, &str); 10] = [
    ("overview", "/ui"),
    ("usage", "/ui/usage"),
    ("models", "/ui/models"),
    ("tools", "/ui/tools"),
    ("budgets", "/ui/budgets"),
    ("executions", "/ui/executions"),
    ("sessions", "/ui/sessions"),
    ("approvals", "/ui/approvals"),
    ("policies", "/ui/policies"),
    ("keys", "/ui/keys"),
];

impl Page<'_> {
    pub fn render(&self) -> String {
        let mut nav = String::new();
        if self.viewer.is_some() {
            for (name, href) in NAV {
                let current = if name == self.current { r#" aria-current="page""# } else { "" };
                let label = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
                let _ = write!(nav, r#"<li><a href="{href}"{current}>{label}</a></li>"#);
            }
        }
        let who = match self.viewer {
            Some(viewer) => {
                let out =
                    if self.can_sign_out { r#"<button type="button" id="sign-out">Sign out</button>"# } else { "" };
                format!(r#"<p class="viewer">Signed in as <strong id="viewer">{}</strong> {out}</p>"#, esc(viewer))
            }
            None => String::new(),
        };
        format!(
            r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · sandgate</title>
<link rel="stylesheet" href="/ui/assets/console.css">
<script src="/ui/assets/console.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header>
<p class="brand">sandgate</p>
<nav aria-label="Console"><ul>{nav}</ul></nav>
{who}
</header>
<main id="main" tabindex="-1">
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"##,
            title = esc(self.title),
            body = self.body,
        )
    }
}

/// A bar chart: one bar per `(label, value)`, with `title` as its accessible name,
/// scaled to the highest bar.
pub fn bar_chart(id: &str, title: &str, bars: &[(String, f64)], unit: &str) -> String {
    bar_chart_to(id, title, bars, unit, None)
}

/// [`bar_chart`] with a fixed top of the scale (100 for percentages).
pub fn bar_chart_to(id: &str, title: &str, bars: &[(String, f64)], unit: &str, top: Option<f64>) -> String {
    const WIDTH: f64 = 720.0;
    const HEIGHT: f64 = 180.0;
    const AXIS: f64 = 24.0;
    let highest = bars.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    let max = top.map_or(highest, |top| top.max(highest));
    let step = if bars.is_empty() { WIDTH } else { WIDTH / bars.len() as f64 };
    let mut svg = format!(
        r#"<figure class="chart"><svg id="{id}" viewBox="0 0 {WIDTH} {total}" role="img" aria-labelledby="{id}-title" preserveAspectRatio="none"><title id="{id}-title">{title}</title>"#,
        total = HEIGHT + AXIS,
        title = esc(title),
    );
    for (i, (label, value)) in bars.iter().enumerate() {
        let height = if max > 0.0 { value / max * HEIGHT } else { 0.0 };
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{height:.1}"><title>{label}: {value} {unit}</title></rect>"#,
            x = i as f64 * step + step * 0.1,
            y = HEIGHT - height,
            w = (step * 0.8).max(1.0),
            label = esc(label),
            unit = esc(unit),
        );
    }
    if let (Some((first, _)), Some((last, _))) = (bars.first(), bars.last()) {
        let _ = write!(
            svg,
            r#"<text x="0" y="{y}" class="axis">{}</text><text x="{WIDTH}" y="{y}" class="axis end">{}</text>"#,
            esc(first),
            esc(last),
            y = HEIGHT + AXIS - 6.0,
        );
    }
    let _ = write!(
        svg,
        r#"</svg><figcaption>{} (highest: {} {})</figcaption></figure>"#,
        esc(title),
        trim_number(highest),
        esc(unit)
    );
    svg
}

/// A number without trailing zeros (`2`, `0.5`).
pub fn trim_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.6}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A cost in US dollars, as every page shows it: six decimals.
pub fn usd(value: f64) -> String {
    format!("{value:.6}")
}

/// A Unix-millisecond time as UTC, to the second.
pub fn time(ms: i64) -> String {
    crate::time::rfc3339_seconds(ms)
}

/// A table cell holding a number: the exact value in `data-value`, for scripts and
/// tests, and as its text.
pub fn num_cell(field: &str, value: impl std::fmt::Display) -> String {
    let value = esc(&value.to_string());
    format!(r#"<td class="num" data-field="{field}" data-value="{value}">{value}</td>"#, field = esc(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_charts_scale_to_the_highest_bar() {
        assert_eq!(esc(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        let chart = bar_chart("c", "Calls <per> minute", &[("a".into(), 1.0), ("b".into(), 4.0)], "calls");
        assert!(chart.contains("Calls &lt;per&gt; minute"));
        assert!(chart.contains(r#"height="180.0""#), "the highest bar is full height: {chart}");
        assert!(chart.contains(r#"height="45.0""#), "{chart}");
        assert!(bar_chart("e", "empty", &[], "").contains("highest: 0"));
        assert_eq!(trim_number(2.0), "2");
        assert_eq!(trim_number(0.25), "0.25");
        assert_eq!(usd(0.000_123_4), "0.000123");
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(i64::MAX), i64::MAX.to_string(), "a time past the year 9999 does not panic");
        assert_eq!(time(253_402_300_799_999), "9999-12-31T23:59:59Z");
        assert_eq!(time(-1), "-1");
    }
}
