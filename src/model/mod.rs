//! The model proxy: one door in front of every model call, from OpenAI and Anthropic
//! SDK clients and from sandboxed code alike.
//!
//! A call names a model, `tier:NAME`, or `auto`. The router picks candidates the
//! caller's policy allows and that fit the request (context window, tools, vision,
//! JSON): for a model, that model and then the rest of its tier; for a tier, its
//! models in order; for `auto`, the cheapest allowed tier with a fitting model. When
//! the caller's remaining USD budget is below `router.downgrade_below_usd`, or the
//! chosen tier's estimate would pass a budget, `auto` and `tier:` requests step down
//! to a cheaper tier. The cost is reserved before the call (input tokens counted with
//! cl100k, plus the request's maximum output for a whole answer, or an estimate of
//! it for a stream, which holds more in steps as it goes and is cut when a step does
//! not fit) and settled with the provider's reported usage afterwards.
//!
//! Within the candidates, a connect error, timeout, 429 or 5xx moves on: first up to
//! `router.retries` more attempts on the same model with jittered exponential
//! backoff, then the next model. This happens only before the first byte reaches the
//! client. A provider with `router.breaker_failures` consecutive failures is skipped
//! for `router.breaker_cooldown`. Every decision is logged with its reason, and every
//! call is a ledger record with its fallback chain. Records are committed just after
//! the response is sent (for streams, when they end) rather than before it: waiting
//! for the commit was most of the proxy's added tail latency. Budgets are reserved in
//! the store ([`crate::store`]) and released by a record committed with the call's
//! own, so spend is exact and shared by every replica.
//!
//! # Whatever the caller does
//!
//! A provider bills a request once it has it, whether or not anyone reads the answer.
//! So each call runs as a task of its own ([`Gateway::call`] only awaits it): a caller
//! that goes away (an HTTP client hanging up, an execution passing its wall-clock
//! limit) stops waiting, and the call still completes, is settled against the budget
//! and recorded with the usage the provider reported. A stream whose client leaves is
//! read to its end for the same reason. Only when the server stops, after its grace
//! period, are calls still in flight cut off; those, and any call whose usage never
//! arrives, are charged and recorded at the reserved estimate, with a status ending
//! in `_estimated`.
//!
//! Routes: every model format a client speaks (OpenAI chat completions, OpenAI
//! Responses, Anthropic messages, Gemini) reaches every model. When the model's
//! provider speaks the client's format the request and its answer pass through
//! unchanged apart from the model name (streams are forwarded chunk by chunk, never
//! buffered, and metered as they pass); otherwise [`wire`] translates both ways.
//! Sandboxed `model.chat` is one more client of the same door.

mod budget;
mod catalog;
mod compaction;
pub mod door;
mod usage;
pub mod wire;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use budget::{lines as budget_lines, Budgets, Exceeded, OutputHistory, Reservation};
pub use catalog::{Catalog, Model, ModelCapability, Price, Provider, ProviderKind, RouterSettings, Tier};
pub use compaction::Sealer;
pub use usage::{count_tokens, estimate_tokens, Tokens};

use crate::auth::Principal;
use crate::error::Kind;
use crate::policy::Capabilities;
use crate::store::{now_ms, Ledger, ModelCallRecord, Record, StoreError};
use crate::telemetry::trace;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use wire::{Conversation, Decoder, Encoder, Tally};

/// The API shape of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `POST /v1/chat/completions`.
    OpenAi,
    /// `POST /v1/messages`.
    Anthropic,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent`.
    Gemini,
    /// `model.chat` from sandboxed code: a small Chat Completions request, and its
    /// answer read back as one.
    Sandbox,
}

impl Format {
    /// The wire format its requests and answers are in.
    pub fn wire(self) -> ProviderKind {
        match self {
            Format::OpenAi | Format::Sandbox => ProviderKind::Openai,
            Format::Anthropic => ProviderKind::Anthropic,
            Format::Responses => ProviderKind::Responses,
            Format::Gemini => ProviderKind::Gemini,
        }
    }
}

/// One model call as a route received it.
#[derive(Clone, Debug)]
pub struct Call {
    pub format: Format,
    /// The request body, in `format`.
    pub body: Value,
    /// The model asked for: the body's `model` (Gemini: the path's); `auto` when none.
    pub model: String,
    /// Whether the answer streams (the body's `stream`; Gemini: the route).
    pub stream: bool,
    /// The client's headers that may be passed on (see [`CLIENT_HEADERS`]).
    pub headers: Vec<(String, String)>,
    /// The coding agent's own session the call belongs to, recorded with it.
    pub agent_session: Option<String>,
}

/// The client's headers a provider gets as the client sent them: to a provider of
/// the client's own format, Anthropic's `anthropic-version` and `anthropic-beta`; to
/// every provider, the client's own name and session (`user-agent`, `x-app`, the
/// agent session headers), unless the caller's policy strips them
/// (`[policy.models] strip_headers`).
pub const CLIENT_HEADERS: [&str; 9] = [
    "anthropic-version",
    "anthropic-beta",
    "user-agent",
    "x-app",
    "x-claude-code-session-id",
    "session-id",
    "thread-id",
    "originator",
    "x-sandgate-agent-session",
];

impl Call {
    /// A call whose model and streaming are in its body.
    pub fn of(format: Format, body: Value) -> Self {
        let model = body.get("model").and_then(Value::as_str).unwrap_or("auto").to_string();
        let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
        Self { format, body, model, stream, headers: Vec::new(), agent_session: None }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What a provider request asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Generate,
    /// Token counting (Anthropic's `count_tokens`, Gemini's `countTokens`).
    Count,
}

/// Who is calling and what their policy grants.
#[derive(Clone, Debug)]
pub struct CallContext {
    pub principal: Arc<Principal>,
    pub capabilities: Capabilities,
    pub execution_id: Option<String>,
    /// The parent of each attempt's span: the execution's, or the proxy request's.
    pub trace: opentelemetry::Context,
    /// The coding agent's own session the call belongs to (its headers, or the
    /// execution's), recorded with it.
    pub agent_session: Option<String>,
}

/// Why a model call was not answered.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Budget(String),
    #[error("rate limit of {per_minute} model calls per minute reached; retry in {retry_after_secs} s")]
    RateLimited { per_minute: u32, retry_after_secs: u64 },
    /// Every candidate failed; the last upstream error, passed on.
    #[error("{message}")]
    Upstream { status: u16, body: Bytes, content_type: Option<String>, message: String },
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl ModelError {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Invalid(_) => Kind::InvalidRequest,
            Self::Denied(_) => Kind::ModelDenied,
            Self::Budget(_) => Kind::BudgetExceeded,
            Self::RateLimited { .. } => Kind::RateLimited,
            Self::Upstream { .. } | Self::Unavailable(_) => Kind::UpstreamError,
            Self::Store(_) => Kind::Unavailable,
        }
    }

    /// The provider's own status, for an error passed on from it: the model routes
    /// answer with it, as the provider did. Every other error's status comes from its
    /// kind (`http::error::status`).
    pub fn upstream_status(&self) -> Option<u16> {
        match self {
            Self::Upstream { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A model call's answer to an HTTP client.
pub enum Answer {
    /// The whole upstream response.
    Whole { status: u16, content_type: Option<String>, body: Bytes, routed: Routed },
    /// An upstream event stream, forwarded as it arrives.
    Stream {
        status: u16,
        content_type: Option<String>,
        body: BoxStream<'static, Result<Bytes, std::io::Error>>,
        routed: Routed,
    },
}

/// Where a call went.
#[derive(Clone, Debug, Default)]
pub struct Routed {
    pub model: String,
    pub tier: String,
    pub provider: String,
    /// Models tried and failed before, with why.
    pub fallbacks: Vec<String>,
}

/// What `model.chat` returns to sandboxed code.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChatAnswer {
    pub content: String,
    pub model: String,
    pub tier: String,
    pub usage: ChatUsage,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ChatUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
}

impl Breaker {
    fn is_open(&self) -> bool {
        matches!(*self.open_until.lock().unwrap_or_else(|e| e.into_inner()), Some(until) if Instant::now() < until)
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        *self.open_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn failure(&self, settings: &RouterSettings, provider: &str) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= settings.breaker_failures {
            *self.open_until.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Instant::now() + settings.breaker_cooldown);
            tracing::warn!(provider, failures, "circuit breaker open");
        }
    }
}

/// What a request needs from a model.
#[derive(Debug)]
struct Needs {
    input_tokens: u64,
    max_output: u64,
    tools: bool,
    vision: bool,
    json: bool,
    /// The client's wire format: a provider of it takes the request as sent.
    native: ProviderKind,
    /// The request was read into a conversation, so any provider can take it
    /// translated (unless `hosted` says otherwise).
    translatable: bool,
    /// Tools only a provider of the client's format runs (`web_search`, …).
    hosted: Option<String>,
    /// A stream can be cut when it passes what it holds; a whole answer cannot.
    stream: bool,
}

impl Needs {
    async fn of(body: &Value, conversation: Option<&Conversation>, native: ProviderKind, default_max: u64) -> Self {
        let Some(conversation) = conversation else {
            return Self::of_body(body, native, default_max).await;
        };
        Needs {
            input_tokens: usage::estimate_tokens(conversation.text()).await,
            max_output: conversation.max_output.unwrap_or(default_max),
            tools: conversation.tools.iter().any(|t| t.hosted.is_none()),
            vision: conversation.has_images(),
            json: conversation.output.is_some(),
            native,
            translatable: true,
            hosted: conversation.hosted_refusal(),
            stream: false,
        }
    }

    /// A request that could not be read: only a provider of its own format takes it.
    async fn of_body(body: &Value, native: ProviderKind, default_max: u64) -> Self {
        let max_output = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_u64))
            .unwrap_or(default_max);
        Needs {
            input_tokens: usage::estimate_tokens(usage::request_text(body)).await,
            max_output,
            tools: body.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty()),
            vision: false,
            json: false,
            native,
            translatable: false,
            hosted: None,
            stream: false,
        }
    }

    /// Whether a model of a provider speaking `kind` can take the request.
    fn speaks(&self, kind: ProviderKind) -> bool {
        kind == self.native || (self.translatable && self.hosted.is_none())
    }

    fn fits(&self, model: &Model) -> bool {
        let has = |c| model.capabilities.contains(&c);
        self.input_tokens + self.max_output <= model.context
            && (!self.tools || has(ModelCapability::Tools))
            && (!self.vision || has(ModelCapability::Vision))
            && (!self.json || has(ModelCapability::Json))
    }
}

/// The gateway: catalog, HTTP client, breakers, budgets.
pub struct Gateway {
    catalog: Arc<Catalog>,
    http: reqwest::Client,
    breakers: Vec<Breaker>,
    concurrency: Vec<Arc<Semaphore>>,
    budgets: Arc<Budgets>,
    /// Recent output sizes per model: what a streamed call holds before it starts.
    history: Arc<OutputHistory>,
    /// Seals the compaction summaries sandgate makes (see [`compaction`]).
    sealer: Arc<Sealer>,
    ledger: Ledger,
    /// Calls in flight, each a task of its own (see the module docs).
    calls: TaskTracker,
    /// Cancelled when the server stops: calls still in flight are cut off and recorded.
    stop: CancellationToken,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("models", &self.catalog.models.len()).finish_non_exhaustive()
    }
}

enum Requested {
    Model(String),
    Tier(String),
    Auto,
}

impl Requested {
    fn parse(name: &str) -> Self {
        match name {
            "auto" | "" => Self::Auto,
            _ => match name.strip_prefix("tier:") {
                Some(tier) => Self::Tier(tier.to_string()),
                None => Self::Model(name.to_string()),
            },
        }
    }
}

fn jitter(base: Duration, attempt: u32) -> Duration {
    let mut byte = [0u8; 2];
    let _ = getrandom::fill(&mut byte);
    let factor = 0.5 + (u16::from_le_bytes(byte) as f64 / u16::MAX as f64);
    base.mul_f64(factor * 2f64.powi(attempt as i32))
}

impl Gateway {
    pub fn new(catalog: Catalog, ledger: Ledger) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(
                catalog.providers.iter().map(|p| p.connect_timeout).max().unwrap_or(Duration::from_secs(5)),
            )
            .pool_max_idle_per_host(256)
            .build()?;
        for provider in &catalog.providers {
            if let (Some(var), Some("")) = (&provider.api_key_env, provider.api_key.as_deref()) {
                tracing::warn!(provider = %provider.name, env = %var, "provider API key variable is unset or empty");
            }
        }
        let breakers = catalog.providers.iter().map(|_| Breaker::default()).collect();
        let concurrency =
            catalog.providers.iter().map(|p| Arc::new(Semaphore::new(p.max_concurrency as usize))).collect();
        Ok(Self {
            catalog: Arc::new(catalog),
            http,
            breakers,
            concurrency,
            budgets: Arc::new(Budgets::new(ledger.clone())),
            history: Arc::default(),
            sealer: Arc::new(Sealer::from_env()),
            ledger,
            calls: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
    }

    /// Gives back budget headroom this replica leased and stopped drawing from (see
    /// the budget module).
    pub fn give_back_old_leases(&self) {
        self.budgets.give_back_old_leases();
    }

    /// Waits up to `grace` for calls in flight (and streams being drained) to finish,
    /// then cuts off the rest, which record themselves at their reserved estimate.
    pub async fn stop(&self, grace: Duration) {
        self.calls.close();
        if tokio::time::timeout(grace, self.calls.wait()).await.is_err() {
            tracing::warn!(
                calls = self.calls.len(),
                "model calls still in flight at shutdown; recording their estimates"
            );
            self.stop.cancel();
            self.calls.wait().await;
        }
        self.budgets.give_back_leases();
    }

    /// Each provider's circuit breaker: its name, and whether it is open now (calls
    /// skip it until its cooldown ends).
    pub fn circuits(&self) -> Vec<(String, bool)> {
        self.catalog.providers.iter().zip(&self.breakers).map(|(p, b)| (p.name.clone(), b.is_open())).collect()
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The models, tiers and routing names the caller may use, in the OpenAI list
    /// format with sandgate's fields added.
    pub fn list(&self, capabilities: &Capabilities) -> Value {
        let mut data = Vec::new();
        for tier in &self.catalog.tiers {
            let tier_allowed = capabilities.tier(&tier.name).allowed;
            for name in &tier.models {
                let model = &self.catalog.models[name];
                if capabilities.model(name, Some(&model.tier)).allowed {
                    let provider = self.catalog.provider_of(model);
                    data.push(json!({
                        "id": name, "object": "model", "created": 0, "owned_by": provider.name,
                        "tier": model.tier, "api": provider.kind.as_str(),
                        "context": model.context, "capabilities": model.capabilities,
                        "price_per_mtok": {"input": model.price.input_per_mtok, "output": model.price.output_per_mtok, "cached_input": model.price.cached_input_per_mtok},
                    }));
                }
            }
            if tier_allowed {
                data.push(json!({"id": format!("tier:{}", tier.name), "object": "model", "created": 0, "owned_by": "sandgate", "tier": tier.name, "models": tier.models}));
            }
        }
        if self.catalog.tiers.iter().any(|t| capabilities.tier(&t.name).allowed) {
            data.push(json!({"id": "auto", "object": "model", "created": 0, "owned_by": "sandgate"}));
        }
        json!({"object": "list", "data": data})
    }

    /// Whether `model`'s provider can take the request (in its own format, or
    /// translated).
    fn compatible(&self, model: &Model, needs: &Needs) -> bool {
        needs.speaks(self.catalog.provider_of(model).kind)
    }

    /// Candidates for a tier: allowed, compatible and fitting models in order.
    fn tier_candidates(&self, tier: &Tier, ctx: &CallContext, needs: &Needs) -> Vec<&Model> {
        tier.models
            .iter()
            .filter_map(|name| self.catalog.models.get(name))
            .filter(|m| self.compatible(m, needs) && needs.fits(m))
            .filter(|m| ctx.capabilities.model(&m.name, Some(&m.tier)).allowed)
            .collect()
    }

    /// Index of the tier the call starts in, and its candidates.
    fn select(
        &self,
        requested: &Requested,
        ctx: &CallContext,
        needs: &Needs,
    ) -> Result<(Option<usize>, Vec<&Model>), ModelError> {
        match requested {
            Requested::Model(name) => {
                let Some(model) = self.catalog.models.get(name) else {
                    return Err(ModelError::Invalid(format!("unknown model `{name}`; GET /v1/models lists yours")));
                };
                let decision = ctx.capabilities.model(name, Some(&model.tier));
                if !decision.allowed {
                    return Err(ModelError::Denied(decision.to_string()));
                }
                if !self.compatible(model, needs) {
                    let kind = self.catalog.provider_of(model).kind;
                    let why =
                        needs.hosted.clone().unwrap_or_else(|| "this request could not be read to translate it".into());
                    return Err(ModelError::Invalid(format!(
                        "model `{name}` is served by a provider of another format ({}): {why}",
                        kind.as_str()
                    )));
                }
                let tier = self.catalog.tiers.iter().position(|t| t.name == model.tier);
                let mut candidates = vec![model];
                if let Some(index) = tier {
                    candidates.extend(
                        self.tier_candidates(&self.catalog.tiers[index], ctx, needs)
                            .into_iter()
                            .filter(|m| m.name != model.name),
                    );
                }
                Ok((None, candidates))
            }
            Requested::Tier(name) => {
                let Some(index) = self.catalog.tiers.iter().position(|t| &t.name == name) else {
                    return Err(ModelError::Invalid(format!("unknown tier `{name}`")));
                };
                let decision = ctx.capabilities.tier(name);
                if !decision.allowed {
                    return Err(ModelError::Denied(decision.to_string()));
                }
                let candidates = self.tier_candidates(&self.catalog.tiers[index], ctx, needs);
                if candidates.is_empty() {
                    let why = needs.hosted.as_deref().map(|why| format!(": {why}")).unwrap_or_default();
                    return Err(ModelError::Invalid(format!("no model of tier `{name}` fits this request{why}")));
                }
                Ok((Some(index), candidates))
            }
            Requested::Auto => {
                for (index, tier) in self.catalog.tiers.iter().enumerate() {
                    if !ctx.capabilities.tier(&tier.name).allowed {
                        continue;
                    }
                    let candidates = self.tier_candidates(tier, ctx, needs);
                    if !candidates.is_empty() {
                        return Ok((Some(index), candidates));
                    }
                }
                Err(ModelError::Denied("no tier this caller may use has a model that fits this request".into()))
            }
        }
    }

    /// The output tokens a call on `model` holds before it starts. A whole answer
    /// cannot be cut, so it holds its maximum. A stream holds an estimate: the
    /// operator's `reserve_output_tokens` for the model, else the 95th percentile of
    /// its recent outputs, else `router.reserve_output_tokens`; never above its
    /// maximum. As its output passes what it holds, it holds more (see [`Growth`]).
    fn held_output(&self, model: &Model, needs: &Needs) -> u64 {
        if !needs.stream {
            return needs.max_output;
        }
        let estimate = model
            .reserve_output
            .or_else(|| self.history.p95(&model.name))
            .unwrap_or(self.catalog.router.reserve_output_tokens);
        estimate.clamp(1, needs.max_output.max(1))
    }

    /// Reserves the budget, stepping down tiers for `auto`/`tier:` calls when the
    /// remaining budget is low or the estimate would not fit.
    async fn reserve<'a>(
        &'a self,
        ctx: &CallContext,
        needs: &Needs,
        mut tier: Option<usize>,
        mut candidates: Vec<&'a Model>,
    ) -> Result<(Vec<&'a Model>, Reservation, u64), ModelError> {
        let budget = &ctx.capabilities.budget;
        let settings = &self.catalog.router;
        // The remaining budget costs a store round trip: read it only when a threshold
        // is configured (the default, 0, never downgrades on it).
        if let (Some(current), true) = (tier, settings.downgrade_below_usd > 0.0) {
            if let Some(remaining) = self.budgets.remaining_usd(&ctx.principal, budget).await? {
                if remaining < settings.downgrade_below_usd {
                    if let Some((cheapest, cheaper)) = self.cheaper_tiers(current, ctx, needs).into_iter().next() {
                        tracing::info!(
                            user = %ctx.principal.user, from = %self.catalog.tiers[current].name,
                            to = %self.catalog.tiers[cheapest].name, remaining_usd = remaining,
                            "router: downgrade, remaining budget below threshold"
                        );
                        tier = Some(cheapest);
                        candidates = cheaper;
                    }
                }
            }
        }
        loop {
            let output = self.held_output(candidates[0], needs);
            let nanos = candidates[0].price.cost_nanos(needs.input_tokens, output, 0);
            match self.budgets.reserve(&ctx.principal, budget, nanos, needs.input_tokens + output).await? {
                Ok(reservation) => return Ok((candidates, reservation, output)),
                Err(exceeded) => {
                    let next = tier.and_then(|current| self.cheaper_tiers(current, ctx, needs).into_iter().next());
                    match next {
                        Some((cheaper, models)) => {
                            tracing::info!(
                                user = %ctx.principal.user, to = %self.catalog.tiers[cheaper].name, reason = %exceeded,
                                "router: downgrade, estimate would pass a budget"
                            );
                            tier = Some(cheaper);
                            candidates = models;
                        }
                        None => return Err(ModelError::Budget(exceeded.to_string())),
                    }
                }
            }
        }
    }

    /// Allowed tiers cheaper than `current` with fitting models, cheapest first.
    fn cheaper_tiers(&self, current: usize, ctx: &CallContext, needs: &Needs) -> Vec<(usize, Vec<&Model>)> {
        (0..current)
            .filter(|&i| ctx.capabilities.tier(&self.catalog.tiers[i].name).allowed)
            .map(|i| (i, self.tier_candidates(&self.catalog.tiers[i], ctx, needs)))
            .filter(|(_, models)| !models.is_empty())
            .collect()
    }

    /// The request to `model`'s provider: its route, its key, and the client's
    /// headers a provider of the client's own format takes.
    fn upstream_request(&self, model: &Model, body: &Value, call: &Call, ctx: &CallContext) -> reqwest::RequestBuilder {
        let request = self.provider_request(model, body, call, Endpoint::Generate);
        call.headers
            .iter()
            .filter(|(name, _)| !name.starts_with("anthropic-") && !ctx.capabilities.strips_header(name))
            .fold(request, |request, (name, value)| request.header(name.as_str(), value.as_str()))
    }

    /// The provider's route for `model` (`endpoint`: generating, or counting tokens), its
    /// key, and the format's own headers.
    fn provider_request(
        &self,
        model: &Model,
        body: &Value,
        call: &Call,
        endpoint: Endpoint,
    ) -> reqwest::RequestBuilder {
        let provider = self.catalog.provider_of(model);
        let key = provider.api_key.clone().unwrap_or_default();
        let base = &provider.base_url;
        let native = provider.kind == call.format.wire() && call.format != Format::Sandbox;
        let bearer =
            |request: reqwest::RequestBuilder| if key.is_empty() { request } else { request.bearer_auth(&key) };
        let count = endpoint == Endpoint::Count;
        match provider.kind {
            ProviderKind::Openai => bearer(self.http.post(format!("{base}/chat/completions")).json(body)),
            ProviderKind::Responses => bearer(self.http.post(format!("{base}/responses")).json(body)),
            ProviderKind::Anthropic => {
                let version = call.header("anthropic-version").filter(|_| native).unwrap_or("2023-06-01");
                let path = if count { "/v1/messages/count_tokens" } else { "/v1/messages" };
                let mut request = self
                    .http
                    .post(format!("{base}{path}"))
                    .header("x-api-key", &key)
                    .header("anthropic-version", version)
                    .json(body);
                if let Some(beta) = call.header("anthropic-beta").filter(|_| native) {
                    request = request.header("anthropic-beta", beta);
                }
                request
            }
            ProviderKind::Gemini => {
                let action = match (count, call.stream) {
                    (true, _) => "countTokens",
                    (false, true) => "streamGenerateContent?alt=sse",
                    (false, false) => "generateContent",
                };
                self.http
                    .post(format!("{base}/v1beta/models/{}:{action}", model.upstream))
                    .header("x-goog-api-key", &key)
                    .json(body)
            }
        }
    }

    /// The body to send to `model`'s provider: the client's own, renamed, when the
    /// provider speaks its format; else the conversation written in the provider's.
    fn upstream_body(&self, call: &Call, model: &Model, conversation: Option<&Conversation>) -> Value {
        let provider = self.catalog.provider_of(model);
        match conversation {
            Some(conversation) if provider.kind != call.format.wire() => {
                let mut conversation = conversation.clone();
                conversation.stream = call.stream;
                conversation.drop_hosted(&self.catalog.router.drop_hosted_tools);
                wire::write_request(
                    provider.kind,
                    &conversation,
                    &model.upstream,
                    self.catalog.router.default_max_tokens,
                )
            }
            _ => {
                let mut out = call.body.clone();
                if provider.kind != ProviderKind::Gemini {
                    out["model"] = Value::String(model.upstream.clone());
                }
                if provider.kind == ProviderKind::Openai && call.stream {
                    out["stream_options"]["include_usage"] = Value::Bool(true);
                }
                out
            }
        }
    }

    /// Runs one call: policy, rate, routing, budget, fallback; records it. The call is
    /// a task of its own: if this future is dropped, the call still completes and is
    /// recorded (see the module docs).
    pub async fn call(self: &Arc<Self>, ctx: CallContext, mut call: Call) -> Result<Answer, ModelError> {
        if call.format == Format::Responses {
            self.open_compactions(&mut call.body)?;
        }
        let this = self.clone();
        let stop = self.stop.clone();
        let task = self.calls.spawn(async move {
            let answer = async {
                if this.compacts_here(&ctx, &call) {
                    this.compact_here(ctx, call).await
                } else {
                    this.route(ctx, call).await
                }
            };
            tokio::select! {
                answer = answer => answer,
                () = stop.cancelled() => Err(ModelError::Unavailable("the server is shutting down".into())),
            }
        });
        task.await.unwrap_or_else(|error| Err(ModelError::Unavailable(format!("the model call failed: {error}"))))
    }

    async fn route(&self, ctx: CallContext, call: Call) -> Result<Answer, ModelError> {
        if !call.body.is_object() {
            return Err(ModelError::Invalid("the request body must be a JSON object".into()));
        }
        self.take_rate(&ctx).await?;
        let requested_name = call.model.clone();
        let requested = Requested::parse(&requested_name);
        let stream = call.stream;
        let client = call.format.wire();
        // Read into a conversation, so any provider can take it; a request that cannot
        // be read still goes, as it is, to a provider of its own format.
        let conversation = wire::read_request(client, &call.body).map(|mut conversation| {
            conversation.drop_hosted(&self.catalog.router.drop_hosted_tools);
            Arc::new(conversation)
        });
        let mut needs =
            Needs::of(&call.body, conversation.as_deref().ok(), client, self.catalog.router.default_max_tokens).await;
        needs.stream = call.stream;
        let (tier, candidates) = match self.select(&requested, &ctx, &needs) {
            Err(ModelError::Invalid(why)) if !needs.translatable => {
                let unreadable = conversation.as_ref().err().cloned().unwrap_or_default();
                return Err(ModelError::Invalid(format!("{why} ({unreadable})")));
            }
            selected => selected?,
        };
        let (candidates, reservation, held_output) = self.reserve(&ctx, &needs, tier, candidates).await?;
        // A stream may hold more as it goes, in steps of its first estimate (at
        // least `router.reserve_output_tokens`), when any budget applies.
        let grows = stream && !budget_lines(&ctx.principal, &ctx.capabilities.budget).is_empty();
        let body = &call.body;
        let tags = json!({"user": body.get("user"), "metadata": body.get("metadata")});
        let started = Instant::now();
        let started_at_ms = now_ms();
        let settings = &self.catalog.router;
        let mut routed = Routed::default();
        let mut last_error: Option<ModelError> = None;
        let mut reservation = Some(reservation);

        for model in candidates {
            let provider = self.catalog.provider_of(model);
            let breaker = &self.breakers[model.provider];
            if breaker.is_open() {
                routed.fallbacks.push(format!("{}: circuit open for {}", model.name, provider.name));
                continue;
            }
            let conversation = conversation.as_ref().ok();
            let upstream_body = self.upstream_body(&call, model, conversation.map(|c| &**c));
            // The answer is written back in the client's format when the provider
            // speaks another.
            let translation = (provider.kind != client)
                .then(|| conversation.cloned())
                .flatten()
                .map(|conversation| Translation { client, conversation, model: model.upstream.clone() });
            for attempt in 0..=settings.retries {
                if attempt > 0 {
                    tokio::time::sleep(jitter(settings.backoff, attempt - 1)).await;
                }
                let permit = self.concurrency[model.provider].clone().acquire_owned().await.ok();
                let span = attempt_span(&ctx, model, provider, attempt, &routed.fallbacks);
                let mut request = self.upstream_request(model, &upstream_body, &call, &ctx);
                for (field, value) in trace::fields(span.context()) {
                    request = request.header(field, value);
                }
                // From here the provider may have the request: if this task is cut off
                // before the call settles, `pending` records it at its estimate.
                let (held_nanos, held_tokens) = reservation.as_ref().map_or((0, 0), Reservation::amount);
                let mut pending = Pending {
                    ledger: self.ledger.clone(),
                    ctx: ctx.clone(),
                    model: model.clone(),
                    provider: provider.name.clone(),
                    kind: provider.kind,
                    reservation: reservation.take(),
                    started,
                    started_at_ms,
                    fallbacks: Vec::new(),
                    tags: tags.clone(),
                    estimated_input: needs.input_tokens,
                    estimated_output: held_output,
                    growth: grows.then(|| Growth {
                        budgets: self.budgets.clone(),
                        held_nanos,
                        held_tokens,
                        step: held_output.max(MIN_STEP_TOKENS),
                        more: Vec::new(),
                    }),
                    history: self.history.clone(),
                    status: 0,
                    timeout: provider.timeout,
                    calls: self.calls.clone(),
                    stop: self.stop.clone(),
                    span: Some(span),
                    translation: translation.clone(),
                    _permit: permit,
                };
                let failure = match tokio::time::timeout(provider.timeout, request.send()).await {
                    Err(_) => format!("timed out after {} ms", provider.timeout.as_millis()),
                    Ok(Err(e)) => format!("cannot reach {}: {}", provider.name, e.without_url()),
                    Ok(Ok(response)) => {
                        let status = response.status().as_u16();
                        if status == 429 || status >= 500 {
                            let mut content_type = content_type(&response);
                            let mut body = response.bytes().await.unwrap_or_default();
                            if translation.is_some() {
                                // The provider's error, in the client's format.
                                (body, content_type) = translated_error(client, status, &model.name, &body);
                            }
                            last_error = Some(ModelError::Upstream {
                                status,
                                message: format!("{} answered {status}", model.name),
                                body,
                                content_type,
                            });
                            format!("HTTP {status}")
                        } else {
                            breaker.success();
                            routed.model = model.name.clone();
                            routed.tier = model.tier.clone();
                            routed.provider = provider.name.clone();
                            tracing::info!(
                                user = %ctx.principal.user, requested = %requested_name, model = %model.name,
                                tier = %model.tier, fallbacks = ?routed.fallbacks, "router: routed"
                            );
                            pending.status = status;
                            pending.fallbacks = routed.fallbacks.clone();
                            return if stream && (200..300).contains(&status) {
                                Ok(pending.stream(response, routed))
                            } else {
                                pending.whole(response, routed).await
                            };
                        }
                    }
                };
                // This attempt was refused or never reached the provider: nothing to
                // charge for it; the reservation goes on to the next attempt.
                reservation = pending.reservation.take();
                if let Some(span) = pending.span.take() {
                    span.fail("upstream_error", &failure);
                    span.end();
                }
                drop(pending);
                breaker.failure(settings, &provider.name);
                tracing::warn!(model = %model.name, attempt, %failure, "router: attempt failed");
                routed.fallbacks.push(format!("{}: {failure}", model.name));
                if breaker.is_open() {
                    break;
                }
            }
        }
        drop(reservation);
        let message = format!("no model could answer: {}", routed.fallbacks.join("; "));
        let error = match last_error {
            Some(ModelError::Upstream { status, body, content_type, .. }) => {
                ModelError::Upstream { status, body, content_type, message }
            }
            _ => ModelError::Unavailable(message),
        };
        self.ledger
            .record(vec![Record::Model(ModelCallRecord {
                execution_id: ctx.execution_id.clone(),
                user: ctx.principal.user.clone(),
                team: ctx.principal.team.clone(),
                key: ctx.principal.key.clone(),
                model: requested_name,
                tier: String::new(),
                provider: String::new(),
                input_tokens: 0,
                output_tokens: 0,
                cached_tokens: 0,
                cost_usd: 0.0,
                started_at_ms,
                latency_ms: started.elapsed().as_millis() as u64,
                status: "failed".into(),
                fallback_chain: routed.fallbacks,
                tags,
                agent_session: ctx.agent_session.clone(),
            })])
            .await?;
        Err(error)
    }

    /// One of the caller's model calls per minute (`model_calls_per_minute`), or why not.
    async fn take_rate(&self, ctx: &CallContext) -> Result<(), ModelError> {
        if let Some(per_minute) = ctx.capabilities.rate.model_calls_per_minute {
            self.ledger.store().take(&ctx.principal.user, "model_calls", per_minute).await?.map_err(
                |retry_after_secs| {
                    crate::telemetry::record_rejection("rate_limited");
                    ModelError::RateLimited { per_minute, retry_after_secs }
                },
            )?;
        }
        Ok(())
    }

    /// Counts a request's input tokens (Anthropic's `POST /v1/messages/count_tokens`,
    /// Gemini's `:countTokens`): the provider's own count when the model's provider
    /// speaks the client's format, else sandgate's (cl100k) in the client's shape.
    /// Counting is free at the providers, so it is neither budgeted nor recorded, but
    /// the caller must be allowed the model, and it is one of their model calls per
    /// minute (it costs sandgate the count, or a provider request).
    pub async fn count_tokens(&self, ctx: &CallContext, call: &Call) -> Result<Answer, ModelError> {
        self.take_rate(ctx).await?;
        let client = call.format.wire();
        let conversation = wire::read_request(client, &call.body).map_err(ModelError::Invalid)?;
        let mut needs =
            Needs::of(&call.body, Some(&conversation), client, self.catalog.router.default_max_tokens).await;
        needs.max_output = 0;
        let (_, candidates) = self.select(&Requested::parse(&call.model), ctx, &needs)?;
        let model = candidates[0];
        let provider = self.catalog.provider_of(model);
        let routed = Routed {
            model: model.name.clone(),
            tier: model.tier.clone(),
            provider: provider.name.clone(),
            fallbacks: vec![],
        };
        if provider.kind != client {
            let counted = match client {
                ProviderKind::Gemini => json!({"totalTokens": needs.input_tokens}),
                _ => json!({"input_tokens": needs.input_tokens}),
            };
            let body = Bytes::from(counted.to_string());
            return Ok(Answer::Whole { status: 200, content_type: Some("application/json".into()), body, routed });
        }
        let mut body = call.body.clone();
        if client == ProviderKind::Anthropic {
            body["model"] = Value::String(model.upstream.clone());
        }
        let request = self.provider_request(model, &body, call, Endpoint::Count);
        let failed =
            |e: reqwest::Error| ModelError::Unavailable(format!("cannot reach {}: {}", provider.name, e.without_url()));
        let response = tokio::time::timeout(provider.timeout, request.send())
            .await
            .map_err(|_| {
                ModelError::Unavailable(format!(
                    "{} did not answer within {} ms",
                    provider.name,
                    provider.timeout.as_millis()
                ))
            })?
            .map_err(failed)?;
        let status = response.status().as_u16();
        let content_type = content_type(&response);
        let body = response.bytes().await.map_err(failed)?;
        Ok(Answer::Whole { status, content_type, body, routed })
    }

    /// `model.chat` from sandboxed code.
    pub async fn chat(self: &Arc<Self>, ctx: CallContext, request: Value) -> Result<ChatAnswer, ModelError> {
        let Some(messages) = request.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty()) else {
            return Err(ModelError::Invalid("model.chat needs `messages`: [{role, content}, ...]".into()));
        };
        for message in messages {
            if message.get("role").and_then(Value::as_str).is_none() || message.get("content").is_none() {
                return Err(ModelError::Invalid("each message needs a `role` and a `content`".into()));
            }
        }
        let model = match (request.get("model").and_then(Value::as_str), request.get("tier").and_then(Value::as_str)) {
            (Some(model), _) => model.to_string(),
            (None, Some(tier)) => format!("tier:{tier}"),
            (None, None) => "auto".to_string(),
        };
        let mut body = json!({"model": model, "messages": messages});
        for key in ["max_tokens", "temperature", "response_format"] {
            if let Some(value) = request.get(key) {
                body[key] = value.clone();
            }
        }
        match self.call(ctx, Call::of(Format::Sandbox, body)).await? {
            Answer::Whole { status, body, routed, .. } => {
                let value: Value = serde_json::from_slice(&body).map_err(|e| {
                    ModelError::Unavailable(format!("{} answered with unreadable JSON: {e}", routed.model))
                })?;
                if !(200..300).contains(&status) {
                    let why =
                        wire::error_message(&value).unwrap_or_else(|| value.to_string().chars().take(300).collect());
                    return Err(ModelError::Upstream {
                        status,
                        message: format!("{} answered {status}: {why}", routed.model),
                        body: Bytes::new(),
                        content_type: None,
                    });
                }
                // Whatever the provider spoke, the answer is in Chat Completions' shape.
                let reply = wire::chat::read_reply(&value);
                let tokens = reply.usage.unwrap_or_default();
                let price = self.catalog.models.get(&routed.model).map(|m| m.price);
                let cost = price.map_or(0, |p| p.cost_nanos(tokens.input, tokens.output, tokens.cached));
                Ok(ChatAnswer {
                    content: reply.text(),
                    model: routed.model,
                    tier: routed.tier,
                    usage: ChatUsage {
                        input_tokens: tokens.input,
                        output_tokens: tokens.output,
                        cost_usd: cost as f64 / 1e9,
                    },
                })
            }
            Answer::Stream { .. } => Err(ModelError::Invalid("model.chat does not stream".into())),
        }
    }
}

/// A provider's error body (`body`, status `status`) rewritten in the client's
/// format `client`, keeping its message.
fn translated_error(client: ProviderKind, status: u16, model: &str, body: &[u8]) -> (Bytes, Option<String>) {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let why = wire::error_message(&value).unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    let kind = match status {
        429 => Kind::RateLimited,
        503 | 529 => Kind::Overloaded,
        400..=499 => Kind::InvalidRequest,
        _ => Kind::UpstreamError,
    };
    let error = wire::error_body(client, status, kind, &format!("{model} answered {status}: {why}"));
    (Bytes::from(error.to_string()), Some("application/json".into()))
}

/// How an answer goes back to a client whose format the provider does not speak.
#[derive(Clone, Debug)]
struct Translation {
    client: ProviderKind,
    conversation: Arc<Conversation>,
    /// The model's name at its provider, as a passed-through answer would show it.
    model: String,
}

/// The span of one attempt at a model call (GenAI `chat`), its parent the execution's
/// or the proxy request's span; earlier attempts of the same call are its
/// `sandgate.fallbacks`.
fn attempt_span(
    ctx: &CallContext,
    model: &Model,
    provider: &Provider,
    attempt: u32,
    fallbacks: &[String],
) -> trace::Span {
    trace::Span::start(SpanKind::Client, &ctx.trace, || {
        let mut attributes = trace::principal(&ctx.principal).to_vec();
        let provider_name = match provider.kind {
            ProviderKind::Openai | ProviderKind::Responses => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gcp.gemini",
        };
        attributes.extend([
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.provider.name", provider_name),
            KeyValue::new("gen_ai.request.model", model.upstream.clone()),
            KeyValue::new("sandgate.model", model.name.clone()),
            KeyValue::new("sandgate.tier", model.tier.clone()),
            KeyValue::new("sandgate.provider", provider.name.clone()),
            KeyValue::new("sandgate.attempt", i64::from(attempt)),
        ]);
        if !fallbacks.is_empty() {
            let fallbacks: Vec<opentelemetry::StringValue> = fallbacks.iter().map(|f| f.clone().into()).collect();
            attributes.push(KeyValue::new("sandgate.fallbacks", opentelemetry::Value::Array(fallbacks.into())));
        }
        if let Some(id) = &ctx.execution_id {
            attributes.push(KeyValue::new("sandgate.execution_id", id.clone()));
        }
        (format!("chat {}", model.upstream), attributes)
    })
}

fn content_type(response: &reqwest::Response) -> Option<String> {
    response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// A call the provider may have: settles and records it once the body is read or
/// the stream ends. Dropped with its reservation still held (the task was cut off at
/// shutdown), it records the call at the reserved estimate.
struct Pending {
    ledger: Ledger,
    ctx: CallContext,
    model: Model,
    provider: String,
    kind: ProviderKind,
    reservation: Option<Reservation>,
    started: Instant,
    started_at_ms: i64,
    fallbacks: Vec<String>,
    tags: Value,
    estimated_input: u64,
    estimated_output: u64,
    /// How a stream holds more as it goes; `None` for whole answers and callers
    /// without budgets.
    growth: Option<Growth>,
    history: Arc<OutputHistory>,
    /// The response status, once headers arrived.
    status: u16,
    /// The provider's timeout: also how long a stream is drained after its client left.
    timeout: Duration,
    calls: TaskTracker,
    stop: CancellationToken,
    /// This attempt's `chat {model}` span, ended with the call's record.
    span: Option<trace::Span>,
    /// Set when the answer goes back in another format than the provider's.
    translation: Option<Translation>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The fewest output tokens a stream's hold grows by at once, so that a small
/// estimate does not cost a store round trip every few tokens.
const MIN_STEP_TOKENS: u64 = 64;

/// A stream's hold on the budgets, grown a step at a time as its output passes it:
/// each step is as large as the first estimate.
struct Growth {
    budgets: Arc<Budgets>,
    held_nanos: i64,
    held_tokens: u64,
    /// Output tokens each step adds.
    step: u64,
    /// The steps held so far, released with the call's record.
    more: Vec<Reservation>,
}

/// A step being held, and the client's bytes waiting for it.
type StepResult = Result<Result<Reservation, Exceeded>, StoreError>;
type Growing = (futures::future::BoxFuture<'static, StepResult>, Bytes);

impl Pending {
    fn record(&mut self, tokens: Tokens, status: &str) -> Vec<Record> {
        let cost = self.model.price.cost_nanos(tokens.input, tokens.output, tokens.cached);
        if status == "ok" {
            self.history.add(&self.model.name, tokens.output);
        }
        self.record_at(tokens, cost, status)
    }

    /// The next step of a stream whose output so far (`tally`) costs more than it
    /// holds; `None` while it fits, or when no budget applies.
    fn next_step(&mut self, tally: &Tally) -> Option<futures::future::BoxFuture<'static, StepResult>> {
        let growth = self.growth.as_ref()?;
        // The provider's count when it sends one mid-stream, else the output bytes
        // at 3 to a token (more tokens than the tokenizer finds in English or code).
        let output = tally.usage.map(|u| u.output).filter(|&o| o > 0).unwrap_or(tally.generated.div_ceil(3) as u64);
        let cost = self.model.price.cost_nanos(self.estimated_input, output, 0);
        if cost <= growth.held_nanos && self.estimated_input + output <= growth.held_tokens {
            return None;
        }
        let (budgets, principal, budget) =
            (growth.budgets.clone(), self.ctx.principal.clone(), self.ctx.capabilities.budget.clone());
        let (nanos, tokens) = (self.model.price.cost_nanos(0, growth.step, 0), growth.step);
        Some(Box::pin(async move { budgets.reserve(&principal, &budget, nanos, tokens).await }))
    }

    /// A step held: the stream may go on.
    fn grow(&mut self, step: Reservation) {
        if let Some(growth) = self.growth.as_mut() {
            let (nanos, tokens) = step.amount();
            growth.held_nanos += nanos;
            growth.held_tokens += tokens;
            growth.more.push(step);
        }
    }

    /// The record of a call whose usage is unknown: the reserved estimate, charged.
    fn record_reserved(&mut self, status: &str) -> Vec<Record> {
        let tokens = Tokens { input: self.estimated_input, output: self.estimated_output, cached: 0 };
        let nanos = match &self.growth {
            Some(growth) => growth.held_nanos,
            None => self.reservation.as_ref().map_or(0, |r| r.amount().0),
        };
        self.record_at(tokens, nanos, &format!("{status}_estimated"))
    }

    /// The call's record, then the release of its reservation: committed together or
    /// in that order, so the budget counts the spend before the hold goes.
    fn record_at(&mut self, tokens: Tokens, cost: i64, status: &str) -> Vec<Record> {
        metrics::counter!("sandgate_model_calls_total", "model" => self.model.name.clone(), "status" => status.to_string())
            .increment(1);
        if let Some(span) = self.span.take() {
            span.set(|| {
                [
                    KeyValue::new("gen_ai.usage.input_tokens", tokens.input as i64),
                    KeyValue::new("gen_ai.usage.output_tokens", tokens.output as i64),
                    KeyValue::new("sandgate.cost_usd", cost as f64 / 1e9),
                    KeyValue::new("sandgate.status", status.to_string()),
                    KeyValue::new("http.response.status_code", i64::from(self.status)),
                ]
            });
            if !status.starts_with("ok") {
                span.fail(status, &format!("{} call ended {status}", self.model.name));
            }
            span.end();
        }
        let record = Record::Model(ModelCallRecord {
            execution_id: self.ctx.execution_id.clone(),
            user: self.ctx.principal.user.clone(),
            team: self.ctx.principal.team.clone(),
            key: self.ctx.principal.key.clone(),
            model: self.model.name.clone(),
            tier: self.model.tier.clone(),
            provider: self.provider.clone(),
            input_tokens: tokens.input,
            output_tokens: tokens.output,
            cached_tokens: tokens.cached,
            cost_usd: cost as f64 / 1e9,
            started_at_ms: self.started_at_ms,
            latency_ms: self.started.elapsed().as_millis() as u64,
            status: status.to_string(),
            fallback_chain: std::mem::take(&mut self.fallbacks),
            tags: self.tags.take(),
            agent_session: self.ctx.agent_session.clone(),
        });
        let steps = self.growth.as_mut().map(|growth| std::mem::take(&mut growth.more)).unwrap_or_default();
        std::iter::once(record)
            .chain(self.reservation.take().into_iter().chain(steps).filter_map(Reservation::settle))
            .collect()
    }

    async fn whole(mut self, response: reqwest::Response, routed: Routed) -> Result<Answer, ModelError> {
        let content_type = content_type(&response);
        let body = match tokio::time::timeout(self.timeout, response.bytes()).await {
            Ok(Ok(body)) => body,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no whole answer within {} ms", self.timeout.as_millis()),
                };
                let record = self.record_reserved("body_error");
                self.ledger.record_detached(record);
                return Err(ModelError::Unavailable(format!("{}: {why}", routed.model)));
            }
        };
        let mut body = body;
        let mut content_type = content_type;
        let (tokens, status) = if (200..300).contains(&self.status) {
            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if let Some(span) = &self.span {
                let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
                span.set(|| {
                    [("gen_ai.response.model", text("model")), ("gen_ai.response.id", text("id"))]
                        .into_iter()
                        .filter_map(|(key, value)| Some(KeyValue::new(key, value?)))
                });
            }
            let mut reply = wire::read_reply(self.kind, &value);
            if let Some(translation) = &self.translation {
                if reply.model.is_empty() {
                    reply.model = translation.model.clone();
                }
                let written = wire::write_reply(translation.client, &reply, &translation.conversation);
                body = Bytes::from(written.to_string());
                content_type = Some("application/json".into());
            }
            match reply.usage {
                Some(tokens) => (tokens, "ok"),
                None => {
                    let output = estimate_tokens(reply.text()).await;
                    (Tokens { input: self.estimated_input, output, cached: 0 }, "ok_estimated")
                }
            }
        } else {
            if let Some(translation) = &self.translation {
                (body, content_type) = translated_error(translation.client, self.status, &routed.model, &body);
            }
            (Tokens::default(), "client_error")
        };
        let record = self.record(tokens, status);
        self.ledger.record_detached(record);
        Ok(Answer::Whole { status: self.status, content_type, body, routed })
    }

    fn stream(mut self, response: reqwest::Response, routed: Routed) -> Answer {
        let status = self.status;
        let client = self.translation.as_ref().map_or(self.kind, |t| t.client);
        let encoder = self.translation.take().map(|t| wire::encoder(t.client, &t.conversation, &t.model));
        let content_type = match encoder {
            Some(_) => Some("text/event-stream".to_string()),
            None => content_type(&response),
        };
        let metered = Metered {
            inner: Some(response.bytes_stream().boxed()),
            meter: Meter::new(self.kind),
            encoder,
            client,
            growing: None,
            pending: Some(self),
        };
        Answer::Stream { status, content_type, body: metered.boxed(), routed }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.reservation.is_some() {
            let record = self.record_reserved("interrupted");
            self.ledger.record_detached(record);
        }
    }
}

/// A provider's stream read as it passes: its events, what they add up to.
struct Meter {
    parser: wire::sse::SseParser,
    decoder: Box<dyn Decoder>,
    tally: Tally,
}

impl Meter {
    fn new(kind: ProviderKind) -> Self {
        Self { parser: Default::default(), decoder: wire::decoder(kind), tally: Tally::default() }
    }

    /// The events `bytes` completes, followed.
    fn feed(&mut self, bytes: &[u8]) -> Vec<wire::Event> {
        let mut events = Vec::new();
        for event in self.parser.feed(bytes) {
            events.extend(self.decoder.decode(&event));
        }
        self.tally.follow(&events);
        events
    }

    /// The events of what is left when the stream ends.
    fn finish(&mut self) -> Vec<wire::Event> {
        let events = self.parser.finish().map(|event| self.decoder.decode(&event)).unwrap_or_default();
        self.tally.follow(&events);
        events
    }

    fn finished(&self) -> bool {
        self.decoder.finished()
    }
}

/// An upstream event stream on its way to the client, metered as it passes, and
/// re-written in the client's format when the provider speaks another.
struct Metered {
    inner: Option<BoxStream<'static, Result<Bytes, reqwest::Error>>>,
    meter: Meter,
    encoder: Option<Box<dyn Encoder>>,
    /// The client's format, for the error that ends a stream cut at its budget.
    client: ProviderKind,
    /// A step of the budget being held, and the client's bytes waiting for it.
    growing: Option<Growing>,
    pending: Option<Pending>,
}

impl Metered {
    /// Ends a stream whose next step did not fit a budget: the provider's connection
    /// is closed (it stops generating), the client gets what was read and then a
    /// `budget_exceeded` error in its format, and the call is recorded at the output
    /// read.
    fn cut(&mut self, waiting: Bytes, why: &str) -> Bytes {
        self.inner = None;
        let message = format!("the stream was cut: {why}");
        tracing::info!(
            user = %self.pending.as_ref().map(|p| p.ctx.principal.user.clone()).unwrap_or_default(),
            %message, "router: stream cut at its budget"
        );
        let mut out = waiting.to_vec();
        out.extend(wire::stream_error(self.client, 429, Kind::BudgetExceeded, &message));
        self.finish("budget_exceeded", true);
        Bytes::from(out)
    }

    /// Settles the budget and records the call, once: at the usage the provider
    /// reported, else at the streamed text counted (a stream that ended) or the
    /// reserved estimate (one cut short).
    fn finish(&mut self, status: &str, ended: bool) {
        let Some(mut pending) = self.pending.take() else { return };
        let record = if let Some(tokens) = self.meter.tally.usage {
            pending.record(tokens, status)
        } else if ended {
            // Counted off the async workers (this runs inside a poll), then recorded.
            let (text, status) = (std::mem::take(&mut self.meter.tally.text), format!("{status}_estimated"));
            pending.calls.clone().spawn(async move {
                let output = estimate_tokens(text).await;
                let tokens = Tokens { input: pending.estimated_input, output, cached: 0 };
                let record = pending.record(tokens, &status);
                pending.ledger.record_detached(record);
            });
            return;
        } else {
            pending.record_reserved(status)
        };
        pending.ledger.record_detached(record);
    }

    /// Reads the rest of a stream whose client left, so the usage the provider
    /// reports at its end is what gets recorded.
    async fn drain(mut self) {
        let (Some(mut inner), Some(timeout)) = (self.inner.take(), self.pending.as_ref().map(|p| p.timeout)) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, inner.next()).await {
                Ok(Some(Ok(bytes))) => {
                    self.meter.feed(&bytes);
                }
                Ok(None) => {
                    self.meter.finish();
                    return self.finish("client_closed", true);
                }
                Ok(Some(Err(_))) | Err(_) => return self.finish("client_closed", false),
            }
        }
    }

    /// The client's bytes for `events` (translated streams).
    fn encode(&mut self, events: &[wire::Event]) -> Bytes {
        let Some(encoder) = self.encoder.as_mut() else { return Bytes::new() };
        let mut out = Vec::new();
        for event in events {
            for bytes in encoder.encode(event) {
                out.extend_from_slice(&bytes);
            }
        }
        Bytes::from(out)
    }
}

impl futures::Stream for Metered {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            if let Some((step, _)) = self.growing.as_mut() {
                let held = futures::ready!(step.as_mut().poll(cx));
                let (_, waiting) = self.growing.take().expect("a step is being held");
                match held {
                    Ok(Ok(step)) => {
                        let this = &mut *self;
                        if let Some(pending) = this.pending.as_mut() {
                            pending.grow(step);
                            // One chunk may need more than one step.
                            if let Some(step) = pending.next_step(&this.meter.tally) {
                                this.growing = Some((step, waiting));
                                continue;
                            }
                        }
                        if !waiting.is_empty() {
                            return Poll::Ready(Some(Ok(waiting)));
                        }
                    }
                    Ok(Err(exceeded)) => return Poll::Ready(Some(Ok(self.cut(waiting, &exceeded.to_string())))),
                    Err(error) => {
                        let why = format!("its budget could not be checked ({error})");
                        return Poll::Ready(Some(Ok(self.cut(waiting, &why))));
                    }
                }
                continue;
            }
            let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
            match inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    let events = self.meter.feed(&bytes);
                    let out = if self.encoder.is_none() { bytes } else { self.encode(&events) };
                    let this = &mut *self;
                    if let Some(step) = this.pending.as_mut().and_then(|pending| pending.next_step(&this.meter.tally)) {
                        this.growing = Some((step, out));
                        continue;
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    self.finish("stream_error", false);
                    return Poll::Ready(Some(Err(std::io::Error::other(error))));
                }
                Poll::Ready(None) => {
                    self.inner = None;
                    let events = self.meter.finish();
                    let mut out = self.encode(&events).to_vec();
                    let finished = self.meter.finished();
                    // A translated stream ends the client's way only when the
                    // provider's ended its own way; a cut stream stays cut.
                    if finished {
                        if let Some(encoder) = self.encoder.as_mut() {
                            encoder.end().iter().for_each(|bytes| out.extend_from_slice(bytes));
                        }
                    }
                    self.finish(if finished { "ok" } else { "stream_incomplete" }, true);
                    return Poll::Ready((!out.is_empty()).then(|| Ok(Bytes::from(out))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Metered {
    /// The client went away before the stream ended: drain the rest in a task of the
    /// gateway's (unless the server is stopping), so the recorded usage is the
    /// provider's.
    fn drop(&mut self) {
        let Some(pending) = self.pending.as_ref() else { return };
        // The provider's stream already ended its own way (`[DONE]`, `message_stop`, …)
        // and the client had all of it: a call like any other, whether or not the
        // connection's end was read before the client hung up.
        if self.growing.is_none() && self.meter.finished() {
            self.finish("ok", true);
            return;
        }
        if self.inner.is_none() || pending.stop.is_cancelled() || tokio::runtime::Handle::try_current().is_err() {
            self.finish("client_closed", false);
            return;
        }
        let (calls, stop) = (pending.calls.clone(), pending.stop.clone());
        let rest = Metered {
            inner: self.inner.take(),
            meter: std::mem::replace(&mut self.meter, Meter::new(pending.kind)),
            encoder: None,
            client: self.client,
            growing: None,
            pending: self.pending.take(),
        };
        calls.spawn(async move {
            tokio::select! {
                () = rest.drain() => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
