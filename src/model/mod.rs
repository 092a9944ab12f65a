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
//! cl100k plus the request's maximum output) and settled with the provider's reported
//! usage afterwards, streams included.
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
//! Routes: `/v1/chat/completions` serves models of OpenAI-compatible providers and
//! `/v1/messages` models of Anthropic providers, both passed through unchanged apart
//! from the model name (streams are forwarded chunk by chunk, never buffered).
//! Cross-format calls are refused with a message naming the right route. Sandboxed
//! `model.chat` reaches every model: sandgate translates its small request shape to
//! either format.

mod budget;
mod catalog;
pub mod door;
mod usage;

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

pub use budget::{lines as budget_lines, Budgets, Exceeded, Reservation};
pub use catalog::{Catalog, Model, ModelCapability, Price, Provider, ProviderKind, RouterSettings, Tier};
pub use usage::{count_tokens, estimate_tokens, Tokens};

use crate::auth::Principal;
use crate::error::Kind;
use crate::policy::Capabilities;
use crate::store::{now_ms, Ledger, ModelCallRecord, Record};
use crate::telemetry::trace;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use usage::StreamMeter;

/// The API shape of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `POST /v1/chat/completions`.
    OpenAi,
    /// `POST /v1/messages`.
    Anthropic,
    /// `model.chat` from sandboxed code: any provider, translated.
    Sandbox,
}

/// Who is calling and what their policy grants.
#[derive(Clone, Debug)]
pub struct CallContext {
    pub principal: Arc<Principal>,
    pub capabilities: Capabilities,
    pub execution_id: Option<String>,
    /// The parent of each attempt's span: the execution's, or the proxy request's.
    pub trace: opentelemetry::Context,
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
#[derive(Debug, Default)]
struct Needs {
    input_tokens: u64,
    max_output: u64,
    tools: bool,
    vision: bool,
    json: bool,
}

impl Needs {
    async fn of(body: &Value, default_max: u64) -> Self {
        let max_output = ["max_tokens", "max_completion_tokens"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_u64))
            .unwrap_or(default_max);
        let vision = body.get("messages").and_then(Value::as_array).is_some_and(|messages| {
            messages.iter().any(|m| {
                m.get("content").and_then(Value::as_array).is_some_and(|blocks| {
                    blocks.iter().any(|b| matches!(b.get("type").and_then(Value::as_str), Some("image_url" | "image")))
                })
            })
        });
        let json = matches!(
            body.pointer("/response_format/type").and_then(Value::as_str),
            Some("json_object" | "json_schema")
        );
        Needs {
            input_tokens: usage::estimate_tokens(usage::request_text(body)).await,
            max_output,
            tools: body.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty()),
            vision,
            json,
        }
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
            ledger,
            calls: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
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
                        "tier": model.tier, "api": match provider.kind { ProviderKind::Openai => "chat.completions", ProviderKind::Anthropic => "messages" },
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

    fn compatible(&self, format: Format, model: &Model) -> bool {
        match (format, self.catalog.provider_of(model).kind) {
            (Format::Sandbox, _) => true,
            (Format::OpenAi, kind) => kind == ProviderKind::Openai,
            (Format::Anthropic, kind) => kind == ProviderKind::Anthropic,
        }
    }

    /// Candidates for a tier: allowed, compatible and fitting models in order.
    fn tier_candidates(&self, tier: &Tier, format: Format, ctx: &CallContext, needs: &Needs) -> Vec<&Model> {
        tier.models
            .iter()
            .filter_map(|name| self.catalog.models.get(name))
            .filter(|m| self.compatible(format, m) && needs.fits(m))
            .filter(|m| ctx.capabilities.model(&m.name, Some(&m.tier)).allowed)
            .collect()
    }

    /// Index of the tier the call starts in, and its candidates.
    fn select(
        &self,
        requested: &Requested,
        format: Format,
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
                if !self.compatible(format, model) {
                    let route = match self.catalog.provider_of(model).kind {
                        ProviderKind::Openai => "POST /v1/chat/completions",
                        ProviderKind::Anthropic => "POST /v1/messages",
                    };
                    return Err(ModelError::Invalid(format!("model `{name}` is served at {route}")));
                }
                let tier = self.catalog.tiers.iter().position(|t| t.name == model.tier);
                let mut candidates = vec![model];
                if let Some(index) = tier {
                    candidates.extend(
                        self.tier_candidates(&self.catalog.tiers[index], format, ctx, needs)
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
                let candidates = self.tier_candidates(&self.catalog.tiers[index], format, ctx, needs);
                if candidates.is_empty() {
                    return Err(ModelError::Invalid(format!("no model of tier `{name}` fits this request")));
                }
                Ok((Some(index), candidates))
            }
            Requested::Auto => {
                for (index, tier) in self.catalog.tiers.iter().enumerate() {
                    if !ctx.capabilities.tier(&tier.name).allowed {
                        continue;
                    }
                    let candidates = self.tier_candidates(tier, format, ctx, needs);
                    if !candidates.is_empty() {
                        return Ok((Some(index), candidates));
                    }
                }
                Err(ModelError::Denied("no tier this caller may use has a model that fits this request".into()))
            }
        }
    }

    fn estimate(model: &Model, needs: &Needs) -> (i64, u64) {
        (model.price.cost_nanos(needs.input_tokens, needs.max_output, 0), needs.input_tokens + needs.max_output)
    }

    /// Reserves the budget, stepping down tiers for `auto`/`tier:` calls when the
    /// remaining budget is low or the estimate would not fit.
    async fn reserve<'a>(
        &'a self,
        ctx: &CallContext,
        format: Format,
        needs: &Needs,
        mut tier: Option<usize>,
        mut candidates: Vec<&'a Model>,
    ) -> Result<(Vec<&'a Model>, Reservation), ModelError> {
        let budget = &ctx.capabilities.budget;
        let settings = &self.catalog.router;
        // The remaining budget costs a store round trip: read it only when a threshold
        // is configured (the default, 0, never downgrades on it).
        if let (Some(current), true) = (tier, settings.downgrade_below_usd > 0.0) {
            if let Some(remaining) = self.budgets.remaining_usd(&ctx.principal, budget).await? {
                if remaining < settings.downgrade_below_usd {
                    if let Some((cheapest, cheaper)) =
                        self.cheaper_tiers(current, format, ctx, needs).into_iter().next()
                    {
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
            let (nanos, tokens) = Self::estimate(candidates[0], needs);
            match self.budgets.reserve(&ctx.principal, budget, nanos, tokens).await? {
                Ok(reservation) => return Ok((candidates, reservation)),
                Err(exceeded) => {
                    let next =
                        tier.and_then(|current| self.cheaper_tiers(current, format, ctx, needs).into_iter().next());
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
    fn cheaper_tiers(
        &self,
        current: usize,
        format: Format,
        ctx: &CallContext,
        needs: &Needs,
    ) -> Vec<(usize, Vec<&Model>)> {
        (0..current)
            .filter(|&i| ctx.capabilities.tier(&self.catalog.tiers[i].name).allowed)
            .map(|i| (i, self.tier_candidates(&self.catalog.tiers[i], format, ctx, needs)))
            .filter(|(_, models)| !models.is_empty())
            .collect()
    }

    fn upstream_request(
        &self,
        model: &Model,
        body: &Value,
        anthropic_version: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let provider = self.catalog.provider_of(model);
        let key = provider.api_key.clone().unwrap_or_default();
        match provider.kind {
            ProviderKind::Openai => {
                let mut request = self.http.post(format!("{}/chat/completions", provider.base_url)).json(body);
                if !key.is_empty() {
                    request = request.bearer_auth(key);
                }
                request
            }
            ProviderKind::Anthropic => self
                .http
                .post(format!("{}/v1/messages", provider.base_url))
                .header("x-api-key", key)
                .header("anthropic-version", anthropic_version.unwrap_or("2023-06-01"))
                .json(body),
        }
    }

    /// The body to send to `model`'s provider.
    fn upstream_body(&self, format: Format, model: &Model, body: &Value) -> Value {
        let provider = self.catalog.provider_of(model);
        let mut out = match (format, provider.kind) {
            (Format::Sandbox, ProviderKind::Anthropic) => {
                translate_to_anthropic(body, self.catalog.router.default_max_tokens)
            }
            (Format::Sandbox, ProviderKind::Openai) => translate_to_openai(body),
            _ => body.clone(),
        };
        out["model"] = Value::String(model.upstream.clone());
        if provider.kind == ProviderKind::Openai && out.get("stream").and_then(Value::as_bool) == Some(true) {
            out["stream_options"]["include_usage"] = Value::Bool(true);
        }
        out
    }

    /// Runs one call: policy, rate, routing, budget, fallback; records it. The call is
    /// a task of its own: if this future is dropped, the call still completes and is
    /// recorded (see the module docs).
    pub async fn call(
        self: &Arc<Self>,
        ctx: CallContext,
        format: Format,
        body: Value,
        anthropic_version: Option<String>,
    ) -> Result<Answer, ModelError> {
        let this = self.clone();
        let stop = self.stop.clone();
        let task = self.calls.spawn(async move {
            tokio::select! {
                answer = this.route(ctx, format, body, anthropic_version) => answer,
                () = stop.cancelled() => Err(ModelError::Unavailable("the server is shutting down".into())),
            }
        });
        task.await.unwrap_or_else(|error| Err(ModelError::Unavailable(format!("the model call failed: {error}"))))
    }

    async fn route(
        &self,
        ctx: CallContext,
        format: Format,
        body: Value,
        anthropic_version: Option<String>,
    ) -> Result<Answer, ModelError> {
        if !body.is_object() {
            return Err(ModelError::Invalid("the request body must be a JSON object".into()));
        }
        if let Some(per_minute) = ctx.capabilities.rate.model_calls_per_minute {
            self.ledger.store().take(&ctx.principal.user, "model_calls", per_minute).await?.map_err(
                |retry_after_secs| {
                    crate::telemetry::record_rejection("rate_limited");
                    ModelError::RateLimited { per_minute, retry_after_secs }
                },
            )?;
        }
        let requested_name = body.get("model").and_then(Value::as_str).unwrap_or("auto").to_string();
        let requested = Requested::parse(&requested_name);
        let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
        let needs = Needs::of(&body, self.catalog.router.default_max_tokens).await;
        let (tier, candidates) = self.select(&requested, format, &ctx, &needs)?;
        let (candidates, reservation) = self.reserve(&ctx, format, &needs, tier, candidates).await?;
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
            let upstream_body = self.upstream_body(format, model, &body);
            for attempt in 0..=settings.retries {
                if attempt > 0 {
                    tokio::time::sleep(jitter(settings.backoff, attempt - 1)).await;
                }
                let permit = self.concurrency[model.provider].clone().acquire_owned().await.ok();
                let span = attempt_span(&ctx, model, provider, attempt, &routed.fallbacks);
                let mut request = self.upstream_request(model, &upstream_body, anthropic_version.as_deref());
                for (field, value) in trace::fields(span.context()) {
                    request = request.header(field, value);
                }
                // From here the provider may have the request: if this task is cut off
                // before the call settles, `pending` records it at its estimate.
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
                    estimated_output: needs.max_output,
                    status: 0,
                    timeout: provider.timeout,
                    calls: self.calls.clone(),
                    stop: self.stop.clone(),
                    span: Some(span),
                    _permit: permit,
                };
                let failure = match tokio::time::timeout(provider.timeout, request.send()).await {
                    Err(_) => format!("timed out after {} ms", provider.timeout.as_millis()),
                    Ok(Err(e)) => format!("cannot reach {}: {}", provider.name, e.without_url()),
                    Ok(Ok(response)) => {
                        let status = response.status().as_u16();
                        if status == 429 || status >= 500 {
                            let content_type = content_type(&response);
                            let body = response.bytes().await.unwrap_or_default();
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
            })])
            .await?;
        Err(error)
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
        match self.call(ctx, Format::Sandbox, body, None).await? {
            Answer::Whole { status, body, routed, .. } => {
                let value: Value = serde_json::from_slice(&body).map_err(|e| {
                    ModelError::Unavailable(format!("{} answered with unreadable JSON: {e}", routed.model))
                })?;
                if !(200..300).contains(&status) {
                    return Err(ModelError::Upstream {
                        status,
                        message: format!("{} answered {status}: {}", routed.model, error_message(&value)),
                        body: Bytes::new(),
                        content_type: None,
                    });
                }
                let kind = self.catalog.providers.iter().find(|p| p.name == routed.provider).map(|p| p.kind);
                let (tokens, text) = usage::from_response(kind.unwrap_or(ProviderKind::Openai), &value);
                let tokens = tokens.unwrap_or_default();
                let price = self.catalog.models.get(&routed.model).map(|m| m.price);
                let cost = price.map_or(0, |p| p.cost_nanos(tokens.input, tokens.output, tokens.cached));
                Ok(ChatAnswer {
                    content: text,
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
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
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

fn error_message(value: &Value) -> String {
    value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string().chars().take(300).collect())
}

fn translate_to_openai(body: &Value) -> Value {
    let mut out = json!({"messages": body["messages"].clone()});
    for key in ["max_tokens", "temperature", "response_format"] {
        if let Some(value) = body.get(key) {
            out[key] = value.clone();
        }
    }
    out
}

fn translate_to_anthropic(body: &Value, default_max_tokens: u64) -> Value {
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for message in body["messages"].as_array().into_iter().flatten() {
        let content = match &message["content"] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        match message["role"].as_str() {
            Some("system") => system.push(content),
            Some(role) => messages
                .push(json!({"role": if role == "assistant" { "assistant" } else { "user" }, "content": content})),
            None => {}
        }
    }
    let mut out = json!({
        "messages": messages,
        "max_tokens": body.get("max_tokens").and_then(Value::as_u64).unwrap_or(default_max_tokens),
    });
    if !system.is_empty() {
        out["system"] = Value::String(system.join("\n\n"));
    }
    if let Some(temperature) = body.get("temperature") {
        out["temperature"] = temperature.clone();
    }
    out
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
    /// The response status, once headers arrived.
    status: u16,
    /// The provider's timeout: also how long a stream is drained after its client left.
    timeout: Duration,
    calls: TaskTracker,
    stop: CancellationToken,
    /// This attempt's `chat {model}` span, ended with the call's record.
    span: Option<trace::Span>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Pending {
    fn record(&mut self, tokens: Tokens, status: &str) -> Vec<Record> {
        let cost = self.model.price.cost_nanos(tokens.input, tokens.output, tokens.cached);
        self.record_at(tokens, cost, status)
    }

    /// The record of a call whose usage is unknown: the reserved estimate, charged.
    fn record_reserved(&mut self, status: &str) -> Vec<Record> {
        let tokens = Tokens { input: self.estimated_input, output: self.estimated_output, cached: 0 };
        let nanos = self.reservation.as_ref().map_or(0, |r| r.amount().0);
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
        });
        std::iter::once(record).chain(self.reservation.take().and_then(Reservation::settle)).collect()
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
            match usage::from_response(self.kind, &value) {
                (Some(tokens), _) => (tokens, "ok"),
                (None, text) => {
                    let output = estimate_tokens(text).await;
                    (Tokens { input: self.estimated_input, output, cached: 0 }, "ok_estimated")
                }
            }
        } else {
            (Tokens::default(), "client_error")
        };
        let record = self.record(tokens, status);
        self.ledger.record_detached(record);
        Ok(Answer::Whole { status: self.status, content_type, body, routed })
    }

    fn stream(self, response: reqwest::Response, routed: Routed) -> Answer {
        let content_type = content_type(&response);
        let status = self.status;
        let metered = Metered {
            inner: Some(response.bytes_stream().boxed()),
            meter: StreamMeter::new(self.kind),
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

/// An upstream event stream on its way to the client, metered as it passes.
struct Metered {
    inner: Option<BoxStream<'static, Result<Bytes, reqwest::Error>>>,
    meter: StreamMeter,
    pending: Option<Pending>,
}

impl Metered {
    /// Settles the budget and records the call, once: at the usage the provider
    /// reported, else at the streamed text counted (a stream that ended) or the
    /// reserved estimate (one cut short).
    fn finish(&mut self, status: &str, ended: bool) {
        let Some(mut pending) = self.pending.take() else { return };
        let record = if self.meter.saw_usage {
            pending.record(self.meter.tokens, status)
        } else if ended {
            // Counted off the async workers (this runs inside a poll), then recorded.
            let (text, status) = (std::mem::take(&mut self.meter.text), format!("{status}_estimated"));
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
                Ok(Some(Ok(bytes))) => self.meter.feed(&bytes),
                Ok(None) => return self.finish("client_closed", true),
                Ok(Some(Err(_))) | Err(_) => return self.finish("client_closed", false),
            }
        }
    }
}

impl futures::Stream for Metered {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        match inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                self.meter.feed(&bytes);
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(error))) => {
                self.finish("stream_error", false);
                Poll::Ready(Some(Err(std::io::Error::other(error))))
            }
            Poll::Ready(None) => {
                let status = if self.meter.finished { "ok" } else { "stream_incomplete" };
                self.finish(status, true);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Metered {
    /// The client went away before the stream ended: drain the rest in a task of the
    /// gateway's (unless the server is stopping), so the recorded usage is the
    /// provider's.
    fn drop(&mut self) {
        let Some(pending) = self.pending.as_ref() else { return };
        if self.inner.is_none() || pending.stop.is_cancelled() || tokio::runtime::Handle::try_current().is_err() {
            self.finish("client_closed", false);
            return;
        }
        let (calls, stop) = (pending.calls.clone(), pending.stop.clone());
        let rest = Metered {
            inner: self.inner.take(),
            meter: std::mem::replace(&mut self.meter, StreamMeter::new(pending.kind)),
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
