//! `[mcp]` validated into [`McpConfig`].

use std::path::Path;
use std::time::Duration;

use super::raw::RawMcp;
use crate::mcp::{McpConfig, Transport, UpstreamConfig};

pub(super) fn build(raw: RawMcp, config_path: &Path) -> Result<McpConfig, (String, String)> {
    if raw.allowed_hosts.is_some() {
        return Err((
            "mcp.allowed_hosts".into(),
            "moved to `[http] allowed_hosts`: the Host rule now applies to every route".into(),
        ));
    }
    let defaults = McpConfig::default();
    let max_sessions = raw.max_sessions.unwrap_or(defaults.max_sessions);
    let max_sessions_per_principal = raw.max_sessions_per_principal.unwrap_or(defaults.max_sessions_per_principal);
    if max_sessions == 0 || max_sessions_per_principal == 0 {
        return Err((
            "mcp.max_sessions".into(),
            "`max_sessions` and `max_sessions_per_principal` must be at least 1".into(),
        ));
    }
    let call_timeout = raw.call_timeout_ms.map(Duration::from_millis).unwrap_or(defaults.call_timeout);
    let mut servers = Vec::new();
    for (name, server) in raw.servers.unwrap_or_default() {
        if !crate::mcp::is_identifier(&name) {
            return Err((
                format!("mcp.servers.{name}"),
                format!("server name `{name}` must be a JavaScript identifier (letters, digits, `_`, `$`; not a reserved word): code calls it as `tools.{name}.<tool>()`"),
            ));
        }
        let transport = match (server.command, server.url) {
            (Some(command), None) => {
                if !server.headers.is_empty() {
                    return Err((
                        format!("mcp.servers.{name}.headers"),
                        format!("server `{name}`: `headers` is for `url` servers"),
                    ));
                }
                Transport::Stdio {
                    command,
                    args: server.args,
                    env: server.env,
                    cwd: server.cwd.map(|dir| super::relative_to(config_path, dir)),
                }
            }
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err((
                        format!("mcp.servers.{name}.url"),
                        format!("server `{name}`: `{url}` is not an http(s) URL"),
                    ));
                }
                if !server.args.is_empty() || !server.env.is_empty() || server.cwd.is_some() {
                    return Err((
                        format!("mcp.servers.{name}"),
                        format!("server `{name}`: `args`, `env` and `cwd` are for `command` servers"),
                    ));
                }
                Transport::Http { url, headers: server.headers.into_iter().collect() }
            }
            _ => {
                return Err((
                    format!("mcp.servers.{name}"),
                    format!("server `{name}` needs exactly one of `command` (stdio) or `url` (streamable HTTP)"),
                ))
            }
        };
        servers.push(UpstreamConfig {
            name,
            transport,
            call_timeout: server.call_timeout_ms.map(Duration::from_millis).unwrap_or(call_timeout),
            description: server.description,
        });
    }
    let search_defaults = crate::mcp::SearchConfig::default();
    let search = raw.search.unwrap_or_default();
    let rerank_candidates = search.rerank_candidates.unwrap_or(search_defaults.rerank_candidates);
    if !(2..=50).contains(&rerank_candidates) {
        return Err(("mcp.search.rerank_candidates".into(), "must be 2 to 50".into()));
    }
    if search.rerank_timeout_ms == Some(0) {
        return Err(("mcp.search.rerank_timeout_ms".into(), "must be at least 1 ms".into()));
    }
    let search = crate::mcp::SearchConfig {
        rerank: search.rerank.map(|r| r.trim().to_string()).filter(|r| !r.is_empty()),
        rerank_candidates,
        rerank_timeout: search.rerank_timeout_ms.map(Duration::from_millis).unwrap_or(search_defaults.rerank_timeout),
    };
    Ok(McpConfig {
        search,
        servers,
        call_timeout,
        connect_timeout: raw.connect_timeout_ms.map(Duration::from_millis).unwrap_or(defaults.connect_timeout),
        max_argument_bytes: raw.max_argument_bytes.unwrap_or(defaults.max_argument_bytes),
        max_result_bytes: raw.max_result_bytes.unwrap_or(defaults.max_result_bytes),
        max_sessions,
        max_sessions_per_principal: max_sessions_per_principal.min(max_sessions),
    })
}
