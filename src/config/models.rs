//! Validates `[providers]`, `[models]`, `[tiers]` and `[router]` into a [`Catalog`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::{RawModel, RawProvider, RawRouter};
use crate::model::{Catalog, Model, Price, Provider, RouterSettings, Tier};

type Invalid = (String, String);

pub(super) fn build(
    providers: BTreeMap<String, RawProvider>,
    models: BTreeMap<String, RawModel>,
    tiers: &[(String, Vec<String>)],
    router: RawRouter,
    env: &super::Env,
) -> Result<Catalog, Invalid> {
    let mut built_providers = Vec::new();
    for (name, raw) in providers {
        let url = raw.base_url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err((
                format!("providers.{name}.base_url"),
                format!("provider `{name}`: `{url}` is not an http(s) URL"),
            ));
        }
        let api_key = raw.api_key_env.as_ref().map(|var| env.get(var).unwrap_or_default().to_string());
        built_providers.push(Provider {
            name,
            kind: raw.kind,
            base_url: url,
            api_key_env: raw.api_key_env,
            api_key,
            timeout: Duration::from_millis(raw.timeout_ms.unwrap_or(120_000)),
            connect_timeout: Duration::from_millis(raw.connect_timeout_ms.unwrap_or(5_000)),
            max_concurrency: raw.max_concurrency.unwrap_or(256).max(1),
        });
    }
    let tier_names: Vec<&str> = tiers.iter().map(|(name, _)| name.as_str()).collect();
    let mut built_models = BTreeMap::new();
    for (name, raw) in models {
        let Some(provider) = built_providers.iter().position(|p| p.name == raw.provider) else {
            return Err((format!("models.{name}.provider"), format!("model `{name}`: no provider `{}`", raw.provider)));
        };
        if !tier_names.contains(&raw.tier.as_str()) {
            return Err((
                format!("models.{name}.tier"),
                format!("model `{name}`: unknown tier `{}` (known: {})", raw.tier, tier_names.join(", ")),
            ));
        }
        let prices = [Some(raw.input_per_mtok), Some(raw.output_per_mtok), raw.cached_input_per_mtok];
        if prices.iter().flatten().any(|p| !p.is_finite() || *p < 0.0) {
            return Err((format!("models.{name}"), format!("model `{name}`: prices must be finite and not negative")));
        }
        built_models.insert(
            name.clone(),
            Model {
                upstream: raw.upstream.unwrap_or_else(|| name.clone()),
                name,
                provider,
                tier: raw.tier,
                price: Price {
                    input_per_mtok: raw.input_per_mtok,
                    output_per_mtok: raw.output_per_mtok,
                    cached_input_per_mtok: raw.cached_input_per_mtok.unwrap_or(raw.input_per_mtok),
                },
                context: raw.context.unwrap_or(128_000),
                capabilities: raw.capabilities,
                reserve_output: raw.reserve_output_tokens,
            },
        );
    }
    let mut built_tiers = Vec::new();
    for (name, listed) in tiers {
        let mut members = Vec::new();
        for model in listed {
            match built_models.get(model) {
                None => {
                    return Err((
                        format!("tiers.{name}.models"),
                        format!("tier `{name}` lists unknown model `{model}`"),
                    ))
                }
                Some(m) if &m.tier != name => {
                    return Err((
                        format!("tiers.{name}.models"),
                        format!("tier `{name}` lists `{model}`, whose tier is `{}`", m.tier),
                    ))
                }
                Some(_) => members.push(model.clone()),
            }
        }
        // Models of this tier not listed explicitly follow, by name.
        for model in built_models.values().filter(|m| &m.tier == name) {
            if !members.contains(&model.name) {
                members.push(model.name.clone());
            }
        }
        built_tiers.push(Tier { name: name.clone(), models: members });
    }
    // Cheapest first: by the cheapest model's input + output price; tiers without
    // models keep their written order, after the priced ones.
    let cost = |tier: &Tier| {
        tier.models
            .iter()
            .filter_map(|m| built_models.get(m))
            .map(|m| m.price.input_per_mtok + m.price.output_per_mtok)
            .fold(f64::INFINITY, f64::min)
    };
    built_tiers.sort_by(|a, b| cost(a).partial_cmp(&cost(b)).unwrap_or(std::cmp::Ordering::Equal));
    let downgrade = router.downgrade_below_usd.unwrap_or(0.0);
    if !downgrade.is_finite() || downgrade < 0.0 {
        return Err(("router.downgrade_below_usd".into(), "must be a non-negative number".into()));
    }
    Ok(Catalog {
        providers: built_providers,
        models: built_models,
        tiers: built_tiers,
        router: RouterSettings {
            retries: router.retries.unwrap_or(1),
            backoff: Duration::from_millis(router.backoff_ms.unwrap_or(100)),
            breaker_failures: router.breaker_failures.unwrap_or(5).max(1),
            breaker_cooldown: Duration::from_millis(router.breaker_cooldown_ms.unwrap_or(30_000)),
            downgrade_below_usd: downgrade,
            default_max_tokens: router.default_max_tokens.unwrap_or(1024),
            reserve_output_tokens: router.reserve_output_tokens.unwrap_or(4096).max(1),
            drop_hosted_tools: router.drop_hosted_tools.clone().unwrap_or_default(),
        },
    })
}
