//! The model catalog as configured: providers, models with prices, tiers cheapest
//! first, router settings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The wire format a provider speaks (and a client's route speaks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderKind {
    /// OpenAI Chat Completions (OpenAI, vLLM, Ollama, OpenRouter, Moonshot, …).
    /// `base_url` includes the version, e.g. `https://api.openai.com/v1`.
    #[serde(rename = "openai")]
    Openai,
    /// Anthropic Messages. `base_url` is the host, e.g. `https://api.anthropic.com`.
    #[serde(rename = "anthropic")]
    Anthropic,
    /// OpenAI Responses. `base_url` includes the version, as for `openai`.
    #[serde(rename = "openai-responses")]
    Responses,
    /// Google's Gemini API. `base_url` is the host, e.g.
    /// `https://generativelanguage.googleapis.com`.
    #[serde(rename = "gemini")]
    Gemini,
}

impl ProviderKind {
    /// Its name in the configuration and in `GET /v1/models`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Responses => "openai-responses",
            Self::Gemini => "gemini",
        }
    }

    /// The route a client of this format calls.
    pub fn route(self) -> &'static str {
        match self {
            Self::Openai => "POST /v1/chat/completions",
            Self::Anthropic => "POST /v1/messages",
            Self::Responses => "POST /v1/responses",
            Self::Gemini => "POST /v1beta/models/{model}:generateContent",
        }
    }
}

/// What a model can do beyond plain chat; a request needing one goes only to models
/// that have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelCapability {
    Tools,
    Vision,
    Json,
}

#[derive(Clone, Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key_env: Option<String>,
    /// Read from `api_key_env` when the configuration was loaded.
    pub api_key: Option<String>,
    /// Longest wait for response headers.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_concurrency: u32,
}

/// USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cached_input_per_mtok: f64,
}

impl Price {
    /// Cost in nano-dollars of a call's tokens (cached input tokens are part of
    /// `input` and priced at the cached rate).
    pub fn cost_nanos(&self, input: u64, output: u64, cached: u64) -> i64 {
        let fresh = input.saturating_sub(cached) as f64;
        let usd = (fresh * self.input_per_mtok
            + cached as f64 * self.cached_input_per_mtok
            + output as f64 * self.output_per_mtok)
            / 1e6;
        (usd * 1e9).round() as i64
    }
}

#[derive(Clone, Debug)]
pub struct Model {
    /// The name clients use.
    pub name: String,
    /// Index into [`Catalog::providers`].
    pub provider: usize,
    /// The name the provider knows it by.
    pub upstream: String,
    pub tier: String,
    pub price: Price,
    /// Context window in tokens.
    pub context: u64,
    pub capabilities: Vec<ModelCapability>,
    /// Output tokens a streamed call holds against budgets before it starts (the
    /// operator's `reserve_output_tokens`); unset, the model's recent outputs decide.
    pub reserve_output: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Tier {
    pub name: String,
    /// Models in fallback order.
    pub models: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct RouterSettings {
    /// Extra attempts on the same model before falling back to the next.
    pub retries: u32,
    /// Base of the jittered exponential backoff between attempts.
    pub backoff: Duration,
    /// Consecutive failures that open a provider's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker keeps its provider out of rotation.
    pub breaker_cooldown: Duration,
    /// `auto` and `tier:` requests step down to the cheapest allowed tier when the
    /// caller's remaining USD budget is below this.
    pub downgrade_below_usd: f64,
    /// Output tokens assumed for budget reservations when a request sets no maximum.
    pub default_max_tokens: u64,
    /// Output tokens a streamed call holds before a model has a history of its own
    /// (`router.reserve_output_tokens`), and the step by which a stream's hold grows.
    pub reserve_output_tokens: u64,
    /// Hosted tools (by type, e.g. `web_search`) dropped from a request translated
    /// for a provider that cannot run them, instead of refusing it.
    pub drop_hosted_tools: Vec<String>,
}

/// Providers, models and tiers (cheapest first).
#[derive(Clone, Debug)]
pub struct Catalog {
    pub providers: Vec<Provider>,
    pub models: BTreeMap<String, Model>,
    pub tiers: Vec<Tier>,
    pub router: RouterSettings,
}

impl Catalog {
    pub fn provider_of(&self, model: &Model) -> &Provider {
        &self.providers[model.provider]
    }
}
