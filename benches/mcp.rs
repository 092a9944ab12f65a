//! MCP Code Mode figures.
//!
//! 1. Context size: tokens (cl100k_base) of the tool list an MCP client puts in its
//!    model's context, connected to the upstream servers directly versus to sandgate's
//!    Code Mode server (`search` + `execute`), and of what browsing answers (`search`
//!    with nothing: the servers; with `server`: the largest server's tools). Upstreams: the real npm servers the
//!    tests use (`tests/mcp`, installed by `tests/run`), and a synthetic MCP server
//!    (rmcp over streamable HTTP, in this process) with 10, 100 and 1,000 tools shaped
//!    like typical API tools.
//! 2. Tool-call latency: one upstream call from an rmcp client directly, versus the
//!    same call made by sandboxed code (a whole execution per call: admission, fresh
//!    instance, policy check, upstream call, ledger commit), and per call inside one
//!    execution making 100 calls in sequence. The direct client and the executions of
//!    100 calls take turns, so both meet the same state of the machine; the ratio of
//!    the two is printed.
//!
//!     cargo bench --bench mcp

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt};
use sandgate::mcp::{browse, server::tool_list, McpConfig, Transport, UpstreamConfig, Upstreams};
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
    pool.settled().await;
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
    // What browsing puts in the context: `search` with nothing (the servers) and with
    // `server` (the largest server's tools), as the text the agent reads.
    let text_tokens = |text: &str| tiktoken_rs::cl100k_base_singleton().encode_ordinary(text).len();
    let servers_listing = text_tokens(&browse::servers(&view, browse::Style::Typescript).0);
    let server_listing = view
        .servers()
        .iter()
        .filter_map(|s| browse::server(&view, &s.summary.name, browse::Style::Typescript))
        .map(|(text, _)| text_tokens(&text))
        .max()
        .unwrap_or(0);
    println!(
        "| {label} | {} | {direct_tokens} | {sandgate_tokens} | {:.1}x | {servers_listing} | {server_listing} |",
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Prints the row of `samples` and returns their p50 and p99.
fn summary(label: &str, mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5).as_secs_f64() * 1e6, percentile(&samples, 0.99).as_secs_f64() * 1e6);
    println!("| {label} | {p50:.0} µs | {p99:.0} µs |");
    (p50, p99)
}

async fn call_latency() {
    const CALLS: usize = 2_000;
    let upstream = Synthetic::new(10);
    let tool = upstream.tools[0].name.to_string();
    let url = serve(upstream).await;

    let client = ().serve(rmcp::transport::StreamableHttpClientTransport::from_uri(url.clone())).await.unwrap();

    let dir = std::env::temp_dir().join(format!("sandgate-bench-mcp-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/all.toml"),
        "[[policy]]\nname = \"all\"\nprincipals = [\"*\"]\n[policy.limits]\nhost_calls = 1000\n[policy.tools]\nallow = [\"*\"]\n",
    )
    .unwrap();
    let text = format!(
        "policies = \"{}\"\n[ledger]\npath = \"{}\"\n[mcp.servers.tracker]\nurl = \"{url}\"\n",
        dir.join("policies").display(),
        dir.join("ledger.db").display()
    );
    std::fs::write(dir.join("sandgate.toml"), text).unwrap();
    let config = sandgate::config::Config::load(&dir.join("sandgate.toml")).unwrap();
    let server = sandgate::Server::new(config).await.unwrap();
    let service = server.service().clone();
    service.upstreams().settled().await;
    let principal = Arc::new(sandgate::auth::Principal::local());
    let request = |code: String| sandgate::request::ExecuteRequest {
        agent_session: None,
        code,
        input: None,
        limits: Default::default(),
        language: sandgate::request::Language::Javascript,
        session_id: None,
        trace: Default::default(),
    };
    let one = format!("return await tools.tracker.{tool}({{}})");
    let mut sandboxed = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let started = std::time::Instant::now();
        let outcome = service.execute(principal.clone(), request(one.clone())).await.unwrap();
        assert!(outcome.ok, "{:?}", outcome.error);
        sandboxed.push(started.elapsed());
    }
    // The direct client and the calls within executions take turns, in rounds of 200
    // calls each, so that both meet the same state of the machine.
    // Each call within an execution is timed by the code itself (`performance.now()`
    // counts microseconds), so the p99 is one of calls, not of executions.
    let hundred = format!(
        "const took = []; for (let i = 0; i < 100; i++) {{ const at = performance.now(); \
         await tools.tracker.{tool}({{}}); took.push(performance.now() - at) }} return took"
    );
    let (mut direct, mut inside, mut averages) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..CALLS / 200 {
        for _ in 0..200 {
            let started = std::time::Instant::now();
            client.peer().call_tool(CallToolRequestParams::new(tool.clone())).await.unwrap();
            direct.push(started.elapsed());
        }
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let outcome = service.execute(principal.clone(), request(hundred.clone())).await.unwrap();
            assert!(outcome.ok, "{:?}", outcome.error);
            averages.push(started.elapsed() / 100);
            let took: Vec<f64> = serde_json::from_str(outcome.result.as_ref().unwrap().get()).unwrap();
            inside.extend(took.into_iter().map(|ms| Duration::from_secs_f64(ms / 1e3)));
        }
    }
    println!();
    println!("| one tool call over streamable HTTP ({CALLS} sequential) | p50 | p99 |");
    println!("|---|---:|---:|");
    let (direct_p50, direct_p99) = summary("rmcp client, directly", direct);
    summary("sandboxed code, one execution per call (incl. ledger commit)", sandboxed);
    let (inside_p50, inside_p99) =
        summary("sandboxed code, per call within executions of 100 calls (timed by the code)", inside);
    summary("the same, each execution's time over its 100 calls", averages);
    println!();
    println!(
        "a call within an execution against the direct client (target ≤ 1.2×): p50 {:.2}×, p99 {:.2}×",
        inside_p50 / direct_p50,
        inside_p99 / direct_p99
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    sandgate::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        call_latency().await;
        println!();
        println!(
            "| upstreams | tools | tokens listed directly | tokens via sandgate | ratio | browse: servers | browse: one server |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
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
