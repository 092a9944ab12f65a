//! Every upstream tool under a JavaScript name, with its TypeScript declaration, and
//! the view of them one principal's policies allow.
//!
//! Names: a server is called by its configured name (already an identifier); a tool
//! by its upstream name made an identifier ([`super::sanitize`]: `get-tiny-image` →
//! `get_tiny_image`). When two tools of a server map to the same identifier, the
//! one whose upstream name sorts first keeps it and the others get `_2`, `_3`, … in
//! the same order, so names are stable across restarts. Policies match the JavaScript
//! names (`everything.get_tiny_image`).

use std::collections::{BTreeMap, HashMap};

use rmcp::model::Tool;
use serde::Serialize;
use serde_json::Value;

use super::declarations::{self, ToolDecl};
use super::python_stubs;
use super::search::{Document, Match, Method, SearchIndex, Tuning};
use crate::policy::Capabilities;

/// One upstream server as the catalog reports it.
#[derive(Clone, Debug, Serialize)]
pub struct ServerSummary {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `ready`, `connecting`, or `down: <error>`.
    pub status: String,
}

impl ServerSummary {
    /// The status of a connected server.
    pub const READY: &'static str = "ready";

    pub fn is_ready(&self) -> bool {
        self.status == Self::READY
    }
}

/// One upstream tool.
#[derive(Clone, Debug, Serialize)]
pub struct CatalogTool {
    /// `server.tool`, the name policies match and code calls as `tools.server.tool`.
    pub name: String,
    pub server: String,
    /// The JavaScript name of the tool within its server.
    pub tool: String,
    /// The tool's name upstream.
    pub upstream_name: String,
    /// Its human-readable title, when the server gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub input_schema: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// The TypeScript declaration, as it appears inside `declare namespace tools.<server>`.
    pub declaration: String,
    /// The Python stub, as it appears inside its server's class (see
    /// [`super::python_stubs`]).
    pub python: String,
    /// The server's `readOnlyHint` for it, when it gave one: search weighs it against
    /// whether a request asks to read or to change something.
    #[serde(skip)]
    pub read_only: Option<bool>,
}

/// All upstream tools, sorted by server then name, with a search index.
#[derive(Default)]
pub struct Catalog {
    servers: Vec<ServerSummary>,
    tools: Vec<CatalogTool>,
    by_name: HashMap<String, usize>,
    index: Option<SearchIndex>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("servers", &self.servers).field("tools", &self.tools.len()).finish()
    }
}

impl Catalog {
    /// Builds the catalog from each server's summary and listed tools.
    pub fn build(servers: Vec<(ServerSummary, Vec<Tool>)>) -> Self {
        let mut summaries = Vec::with_capacity(servers.len());
        let mut tools = Vec::new();
        for (summary, mut listed) in servers {
            listed.sort_by(|a, b| a.name.cmp(&b.name));
            let mut taken: BTreeMap<String, u32> = BTreeMap::new();
            let mut type_names = std::collections::HashSet::new();
            for tool in listed {
                let base = super::sanitize(&tool.name);
                let count = taken.entry(base.clone()).or_insert(0);
                *count += 1;
                let js_name = if *count == 1 { base } else { format!("{base}_{count}") };
                let input_schema = Value::Object((*tool.input_schema).clone());
                let output_schema = tool.output_schema.as_ref().map(|s| Value::Object((**s).clone()));
                let description = tool.description.as_deref().map(str::to_string);
                // `get_x` and `getX` share a Pascal name; later ones get the first free number.
                let pascal = declarations::pascal(&js_name);
                let mut type_name = pascal.clone();
                let mut n = 1;
                while !type_names.insert(type_name.clone()) {
                    n += 1;
                    type_name = format!("{pascal}{n}");
                }
                let decl = ToolDecl {
                    name: &js_name,
                    type_name: &type_name,
                    description: description.as_deref(),
                    input_schema: &input_schema,
                    output_schema: output_schema.as_ref(),
                };
                let (declaration, python) = (declarations::tool(&decl), python_stubs::tool(&decl));
                tools.push(CatalogTool {
                    name: format!("{}.{js_name}", summary.name),
                    server: summary.name.clone(),
                    tool: js_name,
                    upstream_name: tool.name.to_string(),
                    title: tool.title.clone(),
                    description,
                    input_schema,
                    output_schema,
                    declaration,
                    python,
                    read_only: tool.annotations.as_ref().and_then(|a| a.read_only_hint),
                });
            }
            summaries.push(summary);
        }
        // A later `_2` can collide with a tool literally named `x_2`; such a tool keeps
        // its place by being renamed again, deterministically.
        let mut seen = std::collections::HashSet::new();
        for tool in &mut tools {
            while !seen.insert(tool.name.clone()) {
                tool.tool.push('_');
                tool.name = format!("{}.{}", tool.server, tool.tool);
            }
        }
        let docs: Vec<Document> =
            tools.iter().map(|t| search_document(t, summaries.iter().find(|s| s.name == t.server))).collect();
        let by_name = tools.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Self { servers: summaries, tools, by_name, index: Some(SearchIndex::new(&docs)) }
    }

    /// The tool code calls as `tools.<server>.<tool>`.
    pub fn get(&self, server: &str, tool: &str) -> Option<&CatalogTool> {
        self.by_name.get(&format!("{server}.{tool}")).map(|&i| &self.tools[i])
    }

    /// True when both list the same servers (names, descriptions) and tools (names,
    /// descriptions, declarations): what a client would see is unchanged.
    pub fn same_listing(&self, other: &Catalog) -> bool {
        let servers =
            |c: &Catalog| c.servers.iter().map(|s| (s.name.clone(), s.description.clone())).collect::<Vec<_>>();
        let tools = |c: &Catalog| {
            c.tools.iter().map(|t| (t.name.clone(), t.description.clone(), t.declaration.clone())).collect::<Vec<_>>()
        };
        servers(self) == servers(other) && tools(self) == tools(other)
    }

    /// Every upstream server, ready or not, with how many tools it lists.
    pub fn server_tools(&self) -> Vec<(&ServerSummary, usize)> {
        self.servers.iter().map(|s| (s, self.tools.iter().filter(|t| t.server == s.name).count())).collect()
    }

    /// A server's summary (its status among it).
    pub fn server(&self, name: &str) -> Option<&ServerSummary> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The view a caller's grants allow: the tools their policies' tool globs admit.
    pub fn view_for(&self, capabilities: &Capabilities) -> View<'_> {
        self.view(|name| capabilities.tool(name).allowed)
    }

    /// The tools `allowed` admits (it gets `server.tool`), and the servers with at
    /// least one of them.
    pub fn view(&self, allowed: impl Fn(&str) -> bool) -> View<'_> {
        let tools = (0..self.tools.len()).filter(|&i| allowed(&self.tools[i].name)).collect();
        View { catalog: self, tools }
    }
}

/// The text a tool is found by, field by field (see [`Document`]).
fn search_document(tool: &CatalogTool, server: Option<&ServerSummary>) -> Document {
    let properties = tool.input_schema.get("properties").and_then(Value::as_object);
    let mut param_names = Vec::new();
    let mut param_descriptions = Vec::new();
    let mut enum_values = Vec::new();
    for (name, schema) in properties.into_iter().flatten() {
        param_names.push(name.clone());
        if let Some(text) = schema.get("description").and_then(Value::as_str) {
            param_descriptions.push(text.to_string());
        }
        collect_enum_values(schema, &mut enum_values);
    }
    let title = tool.title.as_deref().unwrap_or_default();
    Document {
        name: format!("{} {} {} {title}", tool.server, tool.tool, tool.upstream_name),
        description: tool.description.clone().unwrap_or_default(),
        param_names: param_names.join(" "),
        param_descriptions: param_descriptions.join(" "),
        enum_values: enum_values.join(" "),
        tool_words: tool.tool.clone(),
        server_name: tool.server.clone(),
        server_description: server.and_then(|s| s.description.clone()).unwrap_or_default(),
        read_only: tool.read_only,
    }
}

/// The string values of `enum` and `const` anywhere in a schema.
fn collect_enum_values(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("enum", Value::Array(values)) => {
                        out.extend(values.iter().filter_map(Value::as_str).map(str::to_string));
                    }
                    ("const", Value::String(value)) => out.push(value.clone()),
                    _ => collect_enum_values(value, out),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|v| collect_enum_values(v, out)),
        _ => {}
    }
}

/// What one principal may see of the catalog.
pub struct View<'a> {
    catalog: &'a Catalog,
    tools: Vec<usize>,
}

/// One server as a principal sees it.
#[derive(Clone, Debug, Serialize)]
pub struct ServerView<'a> {
    #[serde(flatten)]
    pub summary: &'a ServerSummary,
    /// How many of its tools this principal may call.
    pub tools: usize,
}

impl<'a> View<'a> {
    pub fn tools(&self) -> impl Iterator<Item = &'a CatalogTool> + '_ {
        self.tools.iter().map(|&i| &self.catalog.tools[i])
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// This view's tools of `server` only.
    pub fn within(&self, server: &str) -> View<'a> {
        let tools = self.tools.iter().copied().filter(|&i| self.catalog.tools[i].server == server).collect();
        View { catalog: self.catalog, tools }
    }

    /// The servers with at least one visible tool, and how many.
    pub fn servers(&self) -> Vec<ServerView<'a>> {
        self.catalog
            .servers
            .iter()
            .map(|summary| ServerView { summary, tools: self.tools().filter(|t| t.server == summary.name).count() })
            .filter(|s| s.tools > 0)
            .collect()
    }

    /// The best `limit` visible tools for `query`, best first.
    pub fn search(&self, query: &str, limit: usize) -> Vec<&'a CatalogTool> {
        self.search_with(Method::Hybrid, query, limit)
    }

    /// The best `limit` visible tools for `query` as `method` ranks them.
    pub fn search_with(&self, method: Method, query: &str, limit: usize) -> Vec<&'a CatalogTool> {
        self.find(method, query, limit).0
    }

    /// The best `limit` visible tools for `query`, and how well the best matches.
    pub fn find(&self, method: Method, query: &str, limit: usize) -> (Vec<&'a CatalogTool>, Match) {
        let Some(index) = &self.catalog.index else { return (Vec::new(), Match::Weak) };
        self.visible(index.search(method, query), limit)
    }

    /// [`View::find`] with the hybrid's constants given: what the evaluation tunes
    /// them with.
    pub fn find_tuned(&self, query: &str, limit: usize, tuning: &Tuning) -> (Vec<&'a CatalogTool>, Match) {
        let Some(index) = &self.catalog.index else { return (Vec::new(), Match::Weak) };
        self.visible(index.search_tuned(query, tuning), limit)
    }

    fn visible(&self, (hits, quality): (Vec<(usize, f32)>, Match), limit: usize) -> (Vec<&'a CatalogTool>, Match) {
        let tools = hits
            .into_iter()
            .filter(|(i, _)| self.tools.binary_search(i).is_ok())
            .take(limit)
            .map(|(i, _)| &self.catalog.tools[i])
            .collect();
        (tools, quality)
    }

    /// Python stubs for every visible tool: one module.
    pub fn python(&self) -> String {
        python(self.tools(), |server| {
            self.catalog.servers.iter().find(|s| s.name == server).and_then(|s| s.description.clone())
        })
    }

    /// Declarations for every visible tool: one `declare namespace tools.<server>`
    /// per server.
    pub fn typescript(&self) -> String {
        typescript(self.tools(), |server| {
            self.catalog.servers.iter().find(|s| s.name == server).and_then(|s| s.description.clone())
        })
    }
}

/// Python stubs for `tools`: one module, each server a class in `class tools`, in
/// order of first appearance.
pub fn python<'a>(
    tools: impl IntoIterator<Item = &'a CatalogTool>,
    describe: impl Fn(&str) -> Option<String>,
) -> String {
    let servers: Vec<String> = group(tools, |tool| tool.python.clone())
        .into_iter()
        .map(|(server, stubs)| python_stubs::server(server, describe(server).as_deref(), &stubs))
        .collect();
    python_stubs::module(&servers)
}

/// `tools` grouped by server in order of first appearance, each as `render` makes it.
fn group<'a>(
    tools: impl IntoIterator<Item = &'a CatalogTool>,
    render: impl Fn(&CatalogTool) -> String,
) -> Vec<(&'a str, Vec<String>)> {
    let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
    for tool in tools {
        match groups.iter_mut().find(|(server, _)| *server == tool.server) {
            Some((_, items)) => items.push(render(tool)),
            None => groups.push((&tool.server, vec![render(tool)])),
        }
    }
    groups
}

/// Declarations for `tools`, grouped by server in order of first appearance.
pub fn typescript<'a>(
    tools: impl IntoIterator<Item = &'a CatalogTool>,
    describe: impl Fn(&str) -> Option<String>,
) -> String {
    group(tools, |tool| tool.declaration.clone())
        .into_iter()
        .map(|(server, decls)| declarations::namespace(server, describe(server).as_deref(), &decls))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tool(name: &str, description: &str) -> Tool {
        let schema = serde_json::json!({"type": "object", "properties": {"message": {"type": "string"}}});
        let Value::Object(schema) = schema else { unreachable!() };
        let mut tool = Tool::default();
        tool.name = name.to_string().into();
        tool.description = Some(description.to_string().into());
        tool.input_schema = Arc::new(schema);
        tool
    }

    fn summary(name: &str) -> ServerSummary {
        ServerSummary { name: name.into(), description: None, status: "ready".into() }
    }

    #[test]
    fn names_are_sanitised_and_collisions_numbered_in_upstream_order() {
        let catalog = Catalog::build(vec![(
            summary("fs"),
            vec![tool("read_file", "b"), tool("read-file", "a"), tool("read.file", "c"), tool("read_file_2", "d")],
        )]);
        let names: Vec<(&str, &str)> =
            catalog.tools.iter().map(|t| (t.upstream_name.as_str(), t.tool.as_str())).collect();
        assert_eq!(
            names,
            [
                ("read-file", "read_file"),
                ("read.file", "read_file_2"),
                ("read_file", "read_file_3"),
                ("read_file_2", "read_file_2_")
            ]
        );
        assert_eq!(catalog.get("fs", "read_file").unwrap().upstream_name, "read-file");
        assert!(catalog.tools[0].declaration.contains("function read_file("));
        // Interface names stay unique too: get_x takes GetX2, so get_x_2 gets GetX22.
        let catalog =
            Catalog::build(vec![(summary("s"), vec![tool("getX", ""), tool("get_x", ""), tool("get_x_2", "")])]);
        let interfaces: Vec<&str> =
            catalog.tools.iter().map(|t| t.declaration.split_whitespace().nth(1).unwrap()).collect();
        assert_eq!(interfaces, ["GetXArgs", "GetX2Args", "GetX22Args"]);
    }

    #[test]
    fn the_view_filters_listing_search_and_declarations() {
        let catalog = Catalog::build(vec![
            (summary("everything"), vec![tool("echo", "Echoes back the input"), tool("add", "Adds two numbers")]),
            (summary("memory"), vec![tool("create_entities", "Create entities in the knowledge graph")]),
        ]);
        let all = catalog.view(|_| true);
        assert_eq!(all.len(), 3);
        assert_eq!(all.search("echo the input", 5)[0].name, "everything.echo");
        let some = catalog.view(|name| name != "everything.echo");
        assert!(some.search("echo", 5).iter().all(|t| t.name != "everything.echo"));
        let servers: Vec<_> = some.servers().iter().map(|s| (s.summary.name.clone(), s.tools)).collect();
        assert_eq!(servers, [("everything".to_string(), 1), ("memory".to_string(), 1)]);
        let ts = some.typescript();
        assert!(ts.contains("namespace tools.everything") && ts.contains("namespace tools.memory"), "{ts}");
        assert!(!ts.contains("function echo("), "{ts}");
        assert!(catalog.view(|_| false).servers().is_empty());
    }
}
