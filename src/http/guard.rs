//! The rules every route applies before anything else: `Host`, `Origin` and
//! `Content-Type`. Together they keep a web page on another site from driving a
//! sandgate the browser can reach (in local mode, any page the developer opens).
//!
//! - **Host.** `[http] allowed_hosts` when set; otherwise loopback names
//!   (`localhost`, `127.x.x.x`, `[::1]`) in local mode, and any host in keyed mode,
//!   where every request must also carry a key. A name the rule does not know is 403:
//!   DNS rebinding gives a foreign page a foreign Host.
//! - **Origin.** Browsers send `Origin` with every cross-origin request and with
//!   every `POST`. A request whose `Origin` is not the server's own (the `Host` it was
//!   sent to) is 403 unless `[http] cors_origins` lists it; listed origins also get
//!   CORS headers and preflight answers, nothing else does.
//! - **Content-Type.** A `POST` or `PATCH` body must be `application/json` (415
//!   otherwise). A browser sends such a request cross-origin only after a CORS
//!   preflight, which an unlisted origin never passes, so a page cannot use a
//!   `text/plain` "simple request" to slip one through. A `PUT` (file uploads) may
//!   carry any type: no `PUT` is ever a simple request, so a browser always
//!   preflights it.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::config::HttpConfig;
use crate::error::Kind;
use crate::service::Mode;

/// Which `Host` values are accepted.
#[derive(Clone, Debug)]
enum HostRule {
    /// `localhost`, `127.0.0.0/8` and `[::1]`, on any port.
    Loopback,
    /// The configured names (`name` matches any port, `name:port` only that port).
    Listed(Vec<String>),
    Any,
}

/// The `Host`/`Origin`/`Content-Type` rules in force, fixed at start.
#[derive(Clone, Debug)]
pub struct Guard {
    hosts: HostRule,
    cors_origins: Vec<String>,
}

impl Guard {
    pub fn new(config: &HttpConfig, mode: Mode) -> Self {
        let hosts = match (&config.allowed_hosts, mode) {
            (Some(hosts), _) => HostRule::Listed(hosts.iter().map(|h| h.to_ascii_lowercase()).collect()),
            (None, Mode::Local) => HostRule::Loopback,
            (None, Mode::Keyed) => HostRule::Any,
        };
        Self { hosts, cors_origins: config.cors_origins.clone() }
    }

    /// The CORS layer for the listed origins, if any are listed.
    pub fn cors(&self) -> Option<tower_http::cors::CorsLayer> {
        use tower_http::cors::{AllowOrigin, CorsLayer};
        if self.cors_origins.is_empty() {
            return None;
        }
        let origins: Vec<HeaderValue> =
            self.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        let names = |list: &[&'static str]| list.iter().map(|n| header::HeaderName::from_static(n)).collect::<Vec<_>>();
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers(names(&[
                    "authorization",
                    "content-type",
                    "accept",
                    "last-event-id",
                    "mcp-session-id",
                    "mcp-protocol-version",
                    "x-api-key",
                    "anthropic-version",
                ]))
                .expose_headers(names(&[
                    "mcp-session-id",
                    "x-sandgate-model",
                    "x-sandgate-tier",
                    "x-sandgate-fallbacks",
                    "retry-after",
                ]))
                .max_age(std::time::Duration::from_secs(600)),
        )
    }

    /// Why `headers` break a rule, if they do.
    fn check(&self, method: &Method, headers: &HeaderMap, authority: Option<&str>) -> Result<(), ApiError> {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).or(authority);
        if !self.host_allowed(host) {
            crate::telemetry::record_rejection("host");
            let rule = match &self.hosts {
                HostRule::Loopback => {
                    "this server runs without keys, so it answers only to loopback names \
                                       (localhost, 127.0.0.1, [::1]); set [http] allowed_hosts to add others"
                }
                _ => "add it to [http] allowed_hosts to accept it",
            };
            return Err(ApiError::new(
                Kind::Forbidden,
                format!("Host `{}` is not allowed: {rule}", host.unwrap_or("")),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let same = host.is_some_and(|host| same_origin(origin, host));
            if !same && !self.cors_origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
                crate::telemetry::record_rejection("origin");
                return Err(ApiError::new(Kind::Forbidden, format!("requests from the web origin `{origin}` are refused: list it in [http] cors_origins to allow it")));
            }
        }
        if matches!(*method, Method::POST | Method::PATCH) && !is_json(headers) {
            crate::telemetry::record_rejection("content_type");
            let sent = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("none");
            return Err(ApiError::new(
                Kind::InvalidRequest,
                format!("request bodies must be JSON: send `Content-Type: application/json` (got {sent})"),
            )
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        Ok(())
    }

    fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(host) = host else {
            return matches!(self.hosts, HostRule::Any);
        };
        let host = host.to_ascii_lowercase();
        let (name, _port) = split_port(&host);
        match &self.hosts {
            HostRule::Any => true,
            HostRule::Loopback => is_loopback_name(name),
            HostRule::Listed(list) => list.iter().any(|entry| *entry == host || *entry == name),
        }
    }
}

/// The `Host`/`Origin`/`Content-Type` middleware on every route.
pub async fn enforce(State(guard): State<std::sync::Arc<Guard>>, request: Request, next: Next) -> Response {
    let authority = request.uri().authority().map(|a| a.as_str().to_string());
    match guard.check(request.method(), request.headers(), authority.as_deref()) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// `host` split into name and port; a bracketed IPv6 address keeps its brackets.
fn split_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => (&host[..=end], host[end + 1..].strip_prefix(':')),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => (name, Some(port)),
        _ => (host, None),
    }
}

fn is_loopback_name(name: &str) -> bool {
    name == "localhost"
        || name.ends_with(".localhost")
        || name == "[::1]"
        || name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// True when `origin` (`scheme://host[:port]`) names the server the request was sent
/// to, i.e. its authority is the request's `Host`.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let normalise = |value: &str| {
        let value = value.to_ascii_lowercase();
        match split_port(&value) {
            (name, Some(port)) => format!("{name}:{port}"),
            (name, None) => format!("{name}:{default_port}"),
        }
    };
    normalise(authority) == normalise(host)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(header::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn guard(mode: Mode, hosts: Option<&[&str]>, cors: &[&str]) -> Guard {
        let config = HttpConfig {
            allowed_hosts: hosts.map(|h| h.iter().map(|s| s.to_string()).collect()),
            cors_origins: cors.iter().map(|s| s.to_string()).collect(),
            ..HttpConfig::default()
        };
        Guard::new(&config, mode)
    }

    #[test]
    fn hosts_follow_the_mode_and_the_list() {
        let local = guard(Mode::Local, None, &[]);
        for host in ["localhost:8420", "127.0.0.1:8420", "127.1.2.3", "[::1]:8420", "LOCALHOST", "app.localhost:1"] {
            assert!(local.host_allowed(Some(host)), "{host}");
        }
        for host in ["evil.example:8420", "127.0.0.1.evil.example", "0.0.0.0:8420", "[::2]:1"] {
            assert!(!local.host_allowed(Some(host)), "{host}");
        }
        assert!(!local.host_allowed(None));
        let keyed = guard(Mode::Keyed, None, &[]);
        assert!(keyed.host_allowed(Some("anything.example")) && keyed.host_allowed(None));
        let listed = guard(Mode::Keyed, Some(&["sandgate.example.com", "api.example.com:8443"]), &[]);
        assert!(listed.host_allowed(Some("sandgate.example.com:443")));
        assert!(listed.host_allowed(Some("api.example.com:8443")));
        assert!(!listed.host_allowed(Some("api.example.com:9000")));
        assert!(!listed.host_allowed(Some("localhost")));
    }

    #[test]
    fn foreign_origins_and_non_json_bodies_are_refused() {
        let local = guard(Mode::Local, None, &["https://console.example.com"]);
        let post = Method::POST;
        let ok = |pairs: &[(&str, &str)]| local.check(&post, &headers(pairs), None).map_err(|e| e.status);
        assert_eq!(ok(&[("host", "127.0.0.1:8420"), ("content-type", "application/json")]), Ok(()));
        assert_eq!(
            ok(&[
                ("host", "127.0.0.1:8420"),
                ("content-type", "application/json; charset=utf-8"),
                ("origin", "http://127.0.0.1:8420")
            ]),
            Ok(())
        );
        assert_eq!(
            ok(&[("host", "127.0.0.1:8420"), ("content-type", "application/json"), ("origin", "http://evil.example")]),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            ok(&[("host", "127.0.0.1:8420"), ("content-type", "application/json"), ("origin", "null")]),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            ok(&[
                ("host", "127.0.0.1:8420"),
                ("content-type", "application/json"),
                ("origin", "https://console.example.com")
            ]),
            Ok(())
        );
        assert_eq!(
            ok(&[("host", "127.0.0.1:8420"), ("content-type", "text/plain")]),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(ok(&[("host", "127.0.0.1:8420")]), Err(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert_eq!(ok(&[("host", "evil.example"), ("content-type", "application/json")]), Err(StatusCode::FORBIDDEN));
        assert!(local.check(&Method::GET, &headers(&[("host", "localhost:1")]), None).is_ok());
        // A PUT (an upload) may be any type: browsers always preflight it; its origin still counts.
        let put = |pairs: &[(&str, &str)]| local.check(&Method::PUT, &headers(pairs), None).map_err(|e| e.status);
        assert_eq!(put(&[("host", "127.0.0.1:8420"), ("content-type", "application/octet-stream")]), Ok(()));
        assert_eq!(
            put(&[("host", "127.0.0.1:8420"), ("content-type", "text/plain"), ("origin", "http://evil.example")]),
            Err(StatusCode::FORBIDDEN)
        );
        assert!(same_origin("http://localhost", "localhost:80"));
        assert!(!same_origin("https://localhost", "localhost:80"));
    }
}
