//! Context size: tokens (cl100k_base) of the tool list an MCP client puts in its
//! model's context, connected to the upstream servers directly versus to sandgate's
//! Code Mode server (`search` + `execute`).
//!
//! Upstreams: the real npm servers the tests use (`tests/mcp`, installed by
//! `tests/run`), and a synthetic MCP server (rmcp over streamable HTTP, in this
//! process) with 10, 100 and 1,000 tools shaped like typical API tools.
//!
//!     cargo bench --bench context

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler};
use sandgate::mcp::{server::tool_list, McpConfig, Transport, UpstreamConfig, Upstreams};
use serde_json::json;

/// An MCP server with `n` tools, each with a description and a few typed arguments.
#[derive(Clone)]
struct Synthetic {
    tools: Arc<Vec<Tool>>,
}

impl Synthetic {
    fn new(n: usize) -> Self {
        let resources = ["issue", "invoice", "customer", "deployment", "ticket", "order", "page", "dataset"];
        let verbs = ["get", "list", "create", "update", "delete", "search", "archive", "export"];
        let tools = (0..n)
            .map(|i| {
                let (verb, resource) = (verbs[i % verbs.len()], resources[(i / verbs.len()) % resources.len()]);
                let name = format!("{verb}_{resource}_{i}");
                let schema = json!({
                    "type": "object",
                    "properties": {
                        "id": { "type": "string", "description": format!("The {resource}'s identifier") },
                        "project": { "type": "string", "description": "Project key, e.g. ENG" },
                        "limit": { "type": "integer", "minimum": 1, "maximum": 100, "description": "Most results to return" },
                        "status": { "type": "string", "enum": ["open", "closed", "all"] },
                        "fields": { "type": "array", "items": { "type": "string" }, "description": "Fields to include" }
                    },
                    "required": ["project"]
                });
                let serde_json::Value::Object(schema) = schema else { unreachable!() };
                Tool::new(name, format!("{verb} a {resource} in the tracker (variant {i}); returns it as JSON."), Arc::new(schema))
            })
            .collect();
        Self { tools: Arc::new(tools) }
    }
}

impl ServerHandler for Synthetic {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.to_vec()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        Ok(CallToolResult::success(vec![ContentBlock::text(request.name.to_string())]).into())
    }
}

/// Serves `server` over streamable HTTP on an ephemeral port; returns its URL.
async fn serve(server: Synthetic) -> String {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let app = axum::Router::new().route_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/mcp")
}

fn tokens(value: &impl serde::Serialize) -> usize {
    let text = serde_json::to_string(value).unwrap();
    tiktoken_rs::cl100k_base_singleton().encode_ordinary(&text).len()
}

/// Connects to `servers`, then counts both tool lists.
async fn measure(label: &str, servers: Vec<UpstreamConfig>) {
    let expected = servers.len();
    let pool = Upstreams::start(McpConfig { servers, ..McpConfig::default() });
    pool.settled(Duration::from_secs(60)).await;
    let catalog = pool.catalog();
    let view = catalog.view(|_| true);
    let ready = view.servers().len();
    assert_eq!(ready, expected, "{label}: only {ready} of {expected} servers came up");
    let direct: Vec<Tool> = view
        .tools()
        .map(|t| {
            let serde_json::Value::Object(schema) = t.input_schema.clone() else { unreachable!() };
            let mut tool =
                Tool::new(t.upstream_name.clone(), t.description.clone().unwrap_or_default(), Arc::new(schema));
            if let Some(serde_json::Value::Object(output)) = t.output_schema.clone() {
                tool.output_schema = Some(Arc::new(output));
            }
            tool
        })
        .collect();
    let direct_tokens = tokens(&json!({ "tools": direct }));
    let sandgate_tokens = tokens(&json!({ "tools": tool_list(&view) }));
    println!(
        "| {label} | {} | {direct_tokens} | {sandgate_tokens} | {:.1}x |",
        view.len(),
        direct_tokens as f64 / sandgate_tokens as f64
    );
}

fn stdio(name: &str, bin: &str) -> UpstreamConfig {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/node_modules/.bin").join(bin);
    assert!(path.exists(), "{} is missing; run: npm ci --prefix tests/mcp", path.display());
    UpstreamConfig {
        name: name.into(),
        transport: Transport::Stdio { command: path.display().to_string(), args: vec![], env: vec![], cwd: None },
        call_timeout: Duration::from_secs(30),
        description: None,
    }
}

fn http(name: &str, url: String) -> UpstreamConfig {
    UpstreamConfig {
        name: name.into(),
        transport: Transport::Http { url, headers: vec![] },
        call_timeout: Duration::from_secs(30),
        description: None,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        println!("| upstreams | tools | tokens listed directly | tokens via sandgate | ratio |");
        println!("|---|---:|---:|---:|---:|");
        measure("server-everything", vec![stdio("everything", "mcp-server-everything")]).await;
        measure("server-memory", vec![stdio("memory", "mcp-server-memory")]).await;
        measure(
            "server-everything + server-memory",
            vec![stdio("everything", "mcp-server-everything"), stdio("memory", "mcp-server-memory")],
        )
        .await;
        for n in [10, 100, 1000] {
            let url = serve(Synthetic::new(n)).await;
            measure(&format!("synthetic, {n} tools"), vec![http("tracker", url)]).await;
        }
    });
}
