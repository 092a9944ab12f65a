//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when an endpoint is
//! configured: `[telemetry] otlp_endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` (and
//! `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SDK_DISABLED`).
//!
//! Spans, following the GenAI and MCP semantic conventions:
//! - `execute {language}`: one per execution, a child of the caller's trace when the
//!   request carried one (`traceparent` header, or `_meta.traceparent` on an MCP
//!   `tools/call`);
//! - `execute_tool {server.tool}` (client): each call from the code to an upstream MCP
//!   tool, which receives the span's context as `_meta.traceparent`;
//! - `chat {model}` (client): each attempt at a model call, fallbacks included, with
//!   `gen_ai.*` request, response and usage attributes and `sandgate.cost_usd`; the
//!   provider receives a `traceparent` header;
//! - `POST /v1/chat/completions` and `POST /v1/messages` (server): a proxy request,
//!   parent of its attempts.
//!
//! Every span carries the principal (`user.id`, `sandgate.team`, `sandgate.key`).
//! With no endpoint the global tracer is OpenTelemetry's no-op one: spans cost a few
//! allocations and nothing is sent, and a caller's trace context still passes on to
//! tools and providers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{global, Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::auth::Principal;

/// `[telemetry]`: where traces go.
#[derive(Clone, Debug, Default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP base URL (`http://collector:4318`); traces are posted to its
    /// `/v1/traces`. `None`: the standard environment variables decide.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans; `OTEL_SERVICE_NAME` wins, then this, then
    /// `sandgate`.
    pub service_name: Option<String>,
}

/// The installed exporter: flushes and stops when shut down.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Exports what is still buffered, then stops the exporter. Blocks: call it from
    /// a blocking thread while the runtime still runs (the exporter sends on it).
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "traces could not all be exported at shutdown");
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Installs W3C trace-context propagation, and the OTLP exporter when `config` or the
/// environment names an endpoint. Call inside the Tokio runtime the server runs on.
pub fn init(config: &TelemetryConfig) -> anyhow::Result<Option<Tracing>> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let from_env = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    if disabled || (config.otlp_endpoint.is_none() && !from_env) {
        return Ok(None);
    }
    crate::install_crypto_provider();
    let client = TokioClient { http: reqwest::Client::new(), runtime: tokio::runtime::Handle::try_current()? };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(Duration::from_secs(10));
    if let Some(base) = &config.otlp_endpoint {
        let base = base.trim_end_matches('/');
        let url = if base.ends_with("/v1/traces") { base.to_string() } else { format!("{base}/v1/traces") };
        exporter = exporter.with_endpoint(url);
    }
    let exporter = exporter.build().map_err(|e| anyhow::anyhow!("cannot set up the OTLP trace exporter: {e}"))?;
    let mut resource = Resource::builder().with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(config.service_name.clone().unwrap_or_else(|| "sandgate".into()));
    }
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
    global::set_tracer_provider(provider.clone());
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Some(Tracing { provider }))
}

/// The exporter's HTTP client: sandgate's reqwest, each request run on the server's
/// runtime (the SDK's batch processor exports from a thread of its own).
#[derive(Debug, Clone)]
struct TokioClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for TokioClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let mut builder = http.request(parts.method, parts.uri.to_string()).timeout(Duration::from_secs(10));
            for (name, value) in &parts.headers {
                builder = builder.header(name, value);
            }
            let response = builder.body(body).send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut out = Response::new(body);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok::<_, reqwest::Error>(out)
        });
        Ok(sent.await??)
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The caller's trace context in request headers (`traceparent`, `tracestate`); an
/// empty context when there is none.
pub fn from_headers(headers: &http::HeaderMap) -> Context {
    global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
}

/// The caller's trace context from `traceparent` and `tracestate` values (an MCP
/// request's `_meta`).
pub fn from_traceparent(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    let Some(traceparent) = traceparent else { return Context::new() };
    let mut fields = std::collections::HashMap::new();
    fields.insert("traceparent".to_string(), traceparent.to_string());
    if let Some(state) = tracestate {
        fields.insert("tracestate".to_string(), state.to_string());
    }
    global::get_text_map_propagator(|propagator| propagator.extract(&fields))
}

/// `parent`, or when it holds no span and the request belongs to a coding agent's
/// session, a remote parent in that session's own trace (its id a hash of the
/// session's), so every model call and execution of one agent session shares one
/// trace even when the agent sends no trace context.
pub fn in_agent_session(parent: Context, agent_session: Option<&str>) -> Context {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use sha2::Digest;
    let Some(session) = agent_session.filter(|_| !parent.span().span_context().is_valid()) else { return parent };
    let digest = sha2::Sha256::digest(session.as_bytes());
    let trace_id = TraceId::from_bytes(digest[..16].try_into().expect("16 bytes"));
    let span_id = SpanId::from_bytes(digest[16..24].try_into().expect("8 bytes"));
    let remote = SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, true, TraceState::default());
    parent.with_remote_span_context(remote)
}

struct Fields(Vec<(String, String)>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

/// The W3C fields (`traceparent`, `tracestate`) that carry `context` to the next hop;
/// none when it holds no valid span.
pub fn fields(context: &Context) -> Vec<(String, String)> {
    if !context.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut fields = Fields(Vec::new());
    TraceContextPropagator::new().inject_context(context, &mut fields);
    fields.0
}

/// Whether spans are exported: set once, when the exporter is installed.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// A span started under `parent`, as a context holding it: what callees take as
/// their parent. It ends when [`Span::end`] is called, or when dropped.
///
/// When nothing is exported no span is made at all (not even OpenTelemetry's no-op
/// one): the span is the parent's context itself, so a caller's trace still passes
/// on, and the execute and proxy paths pay one context clone.
#[derive(Clone, Debug)]
pub struct Span {
    context: Context,
    own: bool,
}

impl Span {
    /// `describe` gives the span's name and attributes; it runs only when spans are
    /// exported.
    pub fn start(kind: SpanKind, parent: &Context, describe: impl FnOnce() -> (String, Vec<KeyValue>)) -> Self {
        if !EXPORTING.load(Ordering::Relaxed) {
            return Span { context: parent.clone(), own: false };
        }
        let (name, attributes) = describe();
        let tracer = global::tracer("sandgate");
        let span =
            tracer.span_builder(name).with_kind(kind).with_attributes(attributes).start_with_context(&tracer, parent);
        Span { context: parent.with_span(span), own: true }
    }

    /// The context callees take as their parent.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Adds the attributes `describe` gives, when the span is recorded.
    pub fn set<I: IntoIterator<Item = KeyValue>>(&self, describe: impl FnOnce() -> I) {
        if self.own {
            self.context.span().set_attributes(describe());
        }
    }

    /// Marks the span failed: `error.type` and an error status.
    pub fn fail(&self, error_type: &str, message: &str) {
        if self.own {
            let span = self.context.span();
            span.set_attribute(KeyValue::new("error.type", error_type.to_string()));
            span.set_status(Status::error(message.to_string()));
        }
    }

    pub fn end(&self) {
        if self.own {
            self.context.span().end();
        }
    }
}

/// The principal's attributes, on every span.
pub fn principal(principal: &Principal) -> [KeyValue; 3] {
    [
        KeyValue::new("user.id", principal.user.clone()),
        KeyValue::new("sandgate.team", principal.team.clone()),
        KeyValue::new("sandgate.key", principal.key.clone()),
    ]
}
