//! Browsing the catalog: what `search` answers when the agent names a server, asks
//! with no query, or asks something too vague to rank. Instead of guessing tools it
//! shows the map: the servers with what each is for and how many tools it has, or one
//! server's tools, each with a short phrase. Either listing is bounded
//! ([`LISTING_CHARS`], about 1,500 tokens), however large the catalog, so browsing a
//! catalog of thousands of tools costs the agent's context no more than a search.

use serde_json::{json, Value};

use super::catalog::{CatalogTool, View};

/// The most characters a listing takes (about 1,500 cl100k tokens of such text).
pub const LISTING_CHARS: usize = 6_000;

/// The longest phrase said of one tool.
const PHRASE_CHARS: usize = 90;

/// The longest line said of one server.
const SUMMARY_CHARS: usize = 160;

/// How a call is written in the code's language, for the listings' hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Typescript,
    Python,
}

impl Style {
    fn call(self, server: &str) -> String {
        match self {
            Style::Typescript => format!("`await tools.{server}.<tool>({{...}})`"),
            Style::Python => format!("`await tools.{server}.<tool>(**args)`"),
        }
    }
}

/// `text` cut to at most `limit` characters at a word boundary, with `…` when cut.
fn clip(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let cut: String = text.chars().take(limit).collect();
    let cut = match cut.rfind(' ') {
        Some(at) if at > limit / 2 => &cut[..at],
        _ => cut.as_str(),
    };
    format!("{}…", cut.trim_end_matches([',', ';', ':', ' ']))
}

/// The first sentence (or line) of a description, clipped.
pub fn phrase(description: Option<&str>) -> String {
    let text = description.map(str::trim).unwrap_or_default();
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    let sentence = match line.find(". ") {
        Some(at) => &line[..=at],
        None => line,
    };
    clip(sentence.trim_end_matches('.'), PHRASE_CHARS)
}

/// Words of tool names that say what is done, not to what: left out of a derived
/// summary.
const OPERATIONS: &[&str] = &[
    "get", "list", "create", "update", "delete", "search", "add", "set", "remove", "read", "write", "find", "fetch",
    "run", "query", "edit", "move", "new", "put", "post", "patch", "by", "to", "from", "for", "all", "with", "and",
    "of", "the", "a", "an", "in", "on", "or", "tool", "tools", "info", "details", "api", "v1", "v2",
];

/// What a server's tools are about, from their names: the words other than
/// [`OPERATIONS`] that most of its tools' names use, most used first.
fn topics(tools: &[&str]) -> Vec<String> {
    // (stem, the form first seen, how many tools use it)
    let mut counts: Vec<(String, String, usize)> = Vec::new();
    for tool in tools {
        let mut seen: Vec<String> = Vec::new();
        for word in super::search::lexical::words(tool) {
            let stem = super::search::stem(&word);
            if word.len() < 3 || OPERATIONS.contains(&word.as_str()) || seen.contains(&stem) {
                continue;
            }
            seen.push(stem.clone());
            match counts.iter_mut().find(|(s, _, _)| *s == stem) {
                Some((_, _, n)) => *n += 1,
                None => counts.push((stem, word, 1)),
            }
        }
    }
    // Stable: equal counts keep the order the tools first use them in.
    counts.sort_by_key(|c| std::cmp::Reverse(c.2));
    counts.into_iter().take(5).map(|(_, word, _)| word).collect()
}

/// One line saying what a server is for: its description, else one derived from its
/// tools' names (what they are about, and the first few).
pub fn server_summary(description: Option<&str>, tools: &[&str]) -> String {
    match description.map(str::trim).filter(|d| !d.is_empty()) {
        Some(description) => {
            let line = description.lines().next().unwrap_or(description);
            let mut line = clip(line, SUMMARY_CHARS);
            if !line.ends_with('.') && !line.ends_with('…') {
                line.push('.');
            }
            line
        }
        None => {
            let first: Vec<&str> = tools.iter().take(4).copied().collect();
            let topics = topics(tools);
            let line = if topics.is_empty() {
                format!("Tools such as {}.", first.join(", "))
            } else {
                format!("About {}; tools such as {}.", topics.join(", "), first.join(", "))
            };
            clip(&line, SUMMARY_CHARS)
        }
    }
}

/// The server of `view` that `name` names: its name exactly, or in another case, or
/// as `tools.<name>`.
pub fn server_named<'a>(view: &View<'a>, name: &str) -> Option<String> {
    let name = name.trim();
    let name = name.strip_prefix("tools.").unwrap_or(name);
    view.servers().into_iter().map(|s| s.summary.name.clone()).find(|s| s == name || s.eq_ignore_ascii_case(name))
}

/// Every server the caller may use: a line each (what it is for, how many tools),
/// and as many of its tools' names as the bound leaves room for. With more servers
/// than lines fit, each is named with its count only, and past that they are counted.
/// The text and its structured form.
pub fn servers(view: &View<'_>, style: Style) -> (String, Value) {
    let servers = view.servers();
    let mut text = format!(
        "{} servers, {} tools; call them in `execute` as {}. Call `search` with `server` for one server's \
         tools, or with a `query` (and `server`, to stay within it) for the declarations of the best matches.\n",
        servers.len(),
        view.len(),
        style.call("<server>"),
    );
    if servers.is_empty() {
        text.push_str("- (no servers: this caller may use no tools)\n");
        return (text, json!({ "servers": [] }));
    }
    struct Line {
        name: String,
        summary: String,
        tools: Vec<String>,
        shown: usize,
    }
    let mut lines: Vec<Line> = servers
        .iter()
        .map(|server| {
            let tools: Vec<String> = server_tools(view, &server.summary.name).map(|t| t.tool.clone()).collect();
            let names: Vec<&str> = tools.iter().map(String::as_str).collect();
            let summary = server_summary(server.summary.description.as_deref(), &names);
            Line { name: server.summary.name.clone(), summary, tools, shown: 0 }
        })
        .collect();
    let line_of = |line: &Line| format!("- {} ({} tools): {}", line.name, line.tools.len(), line.summary);
    let full: usize = text.len() + lines.iter().map(|line| line_of(line).len() + 1).sum::<usize>();
    if full > LISTING_CHARS {
        // Too many servers for a line each: names and counts, as many as fit.
        let mut named = 0;
        let mut compact = String::new();
        for line in &lines {
            let entry = format!("{} ({}), ", line.name, line.tools.len());
            if text.len() + compact.len() + entry.len() + 40 > LISTING_CHARS {
                break;
            }
            compact.push_str(&entry);
            named += 1;
        }
        text.push_str(compact.trim_end_matches([',', ' ']));
        if named < lines.len() {
            text.push_str(&format!(", and {} more servers", lines.len() - named));
        }
        text.push_str(".\n");
        let structured: Vec<Value> = lines
            .iter()
            .take(named)
            .map(|l| json!({ "name": l.name, "summary": l.summary, "tool_count": l.tools.len(), "tools": [] }))
            .collect();
        return (text, json!({ "servers": structured, "more_servers": lines.len() - named }));
    }
    // A line each; then tool names, a few per server in turn, while the bound allows.
    let mut room = LISTING_CHARS - full;
    'fill: loop {
        let mut added = false;
        for line in &mut lines {
            for _ in 0..4 {
                let Some(name) = line.tools.get(line.shown) else { break };
                // The first name also pays for " Tools: " and the ", and N more." after.
                let cost = name.len() + if line.shown == 0 { " Tools: , and 9999 more.".len() } else { 2 };
                if cost > room {
                    break 'fill;
                }
                room -= cost;
                line.shown += 1;
                added = true;
            }
        }
        if !added {
            break;
        }
    }
    let mut structured = Vec::new();
    for line in &lines {
        text.push_str(&line_of(line));
        if line.shown > 0 {
            text.push_str(" Tools: ");
            text.push_str(&line.tools[..line.shown].join(", "));
            if line.tools.len() > line.shown {
                text.push_str(&format!(", and {} more", line.tools.len() - line.shown));
            }
            text.push('.');
        }
        text.push('\n');
        structured.push(json!({
            "name": line.name,
            "summary": line.summary,
            "tool_count": line.tools.len(),
            "tools": &line.tools[..line.shown],
        }));
    }
    (text, json!({ "servers": structured }))
}

fn server_tools<'a, 'v>(view: &'v View<'a>, server: &'v str) -> impl Iterator<Item = &'a CatalogTool> + 'v {
    view.tools().filter(move |t| t.server == server)
}

/// One server's tools: each name with a short phrase, in the catalog's order, as many
/// as the bound allows (the rest counted). `None` when the caller may use no tool of
/// a server of that name.
pub fn server(view: &View<'_>, name: &str, style: Style) -> Option<(String, Value)> {
    let name = server_named(view, name)?;
    let summary = view.servers().into_iter().find(|s| s.summary.name == name)?.summary;
    let tools: Vec<&CatalogTool> = server_tools(view, &name).collect();
    let names: Vec<&str> = tools.iter().map(|t| t.tool.as_str()).collect();
    let mut text = format!(
        "{name}: {} {} tools; call them in `execute` as {}. Call `search` with a `query` and `server: \"{name}\"` \
         for the declarations of the ones you need.\n",
        server_summary(summary.description.as_deref(), &names),
        tools.len(),
        style.call(&name),
    );
    let mut listed = Vec::new();
    for tool in &tools {
        let phrase = phrase(tool.description.as_deref().or(tool.title.as_deref()));
        let line =
            if phrase.is_empty() { format!("- {}\n", tool.tool) } else { format!("- {}: {phrase}\n", tool.tool) };
        if text.len() + line.len() > LISTING_CHARS {
            break;
        }
        text.push_str(&line);
        listed.push(json!({ "name": tool.tool, "phrase": phrase }));
    }
    let more = tools.len() - listed.len();
    if more > 0 {
        text.push_str(&format!(
            "- and {more} more: ask `search` with a `query` and this `server` to find among them.\n"
        ));
    }
    let structured = json!({
        "server": name,
        "summary": server_summary(summary.description.as_deref(), &names),
        "tool_count": tools.len(),
        "tools": listed,
        "more": more,
    });
    Some((text, structured))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::catalog::{Catalog, ServerSummary};

    fn catalog(servers: usize, tools: usize, description_words: usize) -> Catalog {
        let description = vec!["word"; description_words].join(" ");
        Catalog::build(
            (0..servers)
                .map(|s| {
                    let summary = ServerSummary {
                        name: format!("server_{s}"),
                        description: Some(format!("Server {s} for {description}")),
                        status: ServerSummary::READY.into(),
                    };
                    let tools = (0..tools)
                        .map(|t| {
                            let mut tool = rmcp::model::Tool::new(
                                format!("do_thing_number_{t}"),
                                format!("Does thing {t} with {description}. More text after."),
                                std::sync::Arc::new(serde_json::Map::new()),
                            );
                            tool.title = None;
                            tool
                        })
                        .collect();
                    (summary, tools)
                })
                .collect(),
        )
    }

    #[test]
    fn listings_stay_within_their_bound_however_large_the_catalog() {
        for (servers, tools, words) in [(1, 3, 3), (28, 21, 5), (40, 100, 60), (300, 10, 40)] {
            let catalog = catalog(servers, tools, words);
            let view = catalog.view(|_| true);
            let (text, structured) = super::servers(&view, Style::Typescript);
            assert!(text.len() <= LISTING_CHARS, "{servers}x{tools}: {} chars", text.len());
            let named = structured["servers"].as_array().unwrap().len();
            assert_eq!(named as u64 + structured["more_servers"].as_u64().unwrap_or(0), servers as u64);
            let (text, structured) = server(&view, "SERVER_0", Style::Python).unwrap();
            assert!(text.len() <= LISTING_CHARS, "{servers}x{tools}: {} chars", text.len());
            let listed = structured["tools"].as_array().unwrap().len();
            assert_eq!(listed + structured["more"].as_u64().unwrap() as usize, tools);
            assert!(text.contains("(**args)"), "{text}");
        }
        // A small catalog is listed whole: every server, every tool name.
        let catalog = catalog(2, 3, 3);
        let view = catalog.view(|_| true);
        let (text, _) = super::servers(&view, Style::Typescript);
        assert!(text.contains("- server_1 (3 tools): Server 1 for word word word. Tools: do_thing_number_0"), "{text}");
        assert!(!text.contains("more"), "{text}");
        assert!(server(&view, "tools.server_1", Style::Typescript).is_some());
        assert!(server(&view, "nope", Style::Typescript).is_none());
        // Only what the caller may see.
        let view = catalog.view(|name| name.starts_with("server_0."));
        assert!(server(&view, "server_1", Style::Typescript).is_none());
        assert_eq!(super::servers(&view, Style::Typescript).1["servers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_server_without_a_description_is_summed_up_by_what_its_tools_are_about() {
        let tools = [
            "create_issue",
            "get_issue",
            "list_issues",
            "create_merge_request",
            "get_merge_request",
            "fork_repository",
        ];
        assert_eq!(
            server_summary(None, &tools),
            "About issue, merge, request, fork, repository; tools such as create_issue, get_issue, list_issues, \
             create_merge_request."
        );
        assert_eq!(server_summary(Some("  "), &["get", "list"]), "Tools such as get, list.");
        assert_eq!(server_summary(Some("Issue tracker\nmore"), &tools), "Issue tracker.");
    }

    #[test]
    fn phrases_are_first_sentences_clipped_at_words() {
        assert_eq!(phrase(Some("Create an issue. Needs a repo.")), "Create an issue");
        assert_eq!(phrase(Some("\n  Read a file\nwith more")), "Read a file");
        assert_eq!(phrase(None), "");
        let long = phrase(Some(&"alpha beta ".repeat(30)));
        assert!(long.ends_with('…') && long.chars().count() <= PHRASE_CHARS + 1, "{long}");
    }
}
