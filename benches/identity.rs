//! What validating a bearer token costs a request, with the issuer's keys cached:
//! `Issuers::verify` for an RS256 token like the ones identity providers issue,
//! beside an API key's lookup. Two cases:
//! - a token seen for the first time (header, RSA signature, `iss`/`aud`/`exp`/`nbf`,
//!   claims to a principal), over 2,000 distinct tokens;
//! - a token sent again, as a client does with every request until it expires: its
//!   SHA-256 finds it among the tokens already verified.
//!
//! The issuer (discovery and JWKS) is served in this process; it is fetched once
//! before measuring.
//!
//!     cargo bench --bench identity

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sandgate::auth::oidc::{Issuers, OidcConfig};
use serde_json::json;

const PRIVATE_PEM: &[u8] = include_bytes!("../tests/fixtures/token-signing-key.pem");

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    sandgate::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let key = EncodingKey::from_rsa_pem(PRIVATE_PEM).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("bench".into());
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (discovery, jwks) = (json!({"issuer": url, "jwks_uri": format!("{url}/jwks")}), json!({"keys": [jwk]}));
    runtime.spawn(async move {
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(move || async move { axum::Json(discovery) }))
            .route("/jwks", get(move || async move { axum::Json(jwks) }));
        axum::serve(listener, app).await.unwrap();
    });
    let config = OidcConfig {
        name: "sso".into(),
        issuer: url.clone(),
        audiences: vec!["https://sandgate.example.com/mcp".into()],
        header: None,
        user_claim: "email".into(),
        teams_claim: "groups".into(),
        teams: Default::default(),
        default_team: None,
        admin_groups: vec!["admins".into()],
        leeway: Duration::from_secs(60),
        jwks_refresh: Duration::from_secs(30),
        client_id: None,
        client_secret_env: None,
        cli_client_id: None,
        scopes: vec![],
    };
    let issuers = Issuers::new(&[config]);
    runtime.block_on(issuers.warm());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({
        "iss": url, "aud": "https://sandgate.example.com/mcp", "sub": "a1b2c3", "email": "ada@example.com",
        "groups": ["eng-platform", "eng-all", "admins"], "scope": "openid email groups",
        "iat": now, "exp": now + 3600,
    });
    let token =
        jsonwebtoken::encode(&Header { kid: Some("bench".into()), ..Header::new(Algorithm::RS256) }, &claims, &key)
            .unwrap();
    runtime.block_on(issuers.verify(&token)).expect("the token verifies");
    const FIRST: usize = 2_000;
    let fresh: Vec<String> = (0..FIRST)
        .map(|i| {
            let mut claims = claims.clone();
            claims["jti"] = json!(format!("token-{i}"));
            let header = Header { kid: Some("bench".into()), ..Header::new(Algorithm::RS256) };
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        })
        .collect();
    let mut first = Vec::with_capacity(FIRST);
    runtime.block_on(async {
        for token in &fresh {
            let start = Instant::now();
            std::hint::black_box(issuers.verify(std::hint::black_box(token)).await.unwrap());
            first.push(start.elapsed());
        }
    });
    let ring = sandgate::auth::KeyRing::new(&[]);
    let api_key = sandgate::auth::generate_key();
    const N: usize = 20_000;
    let mut tokens = Vec::with_capacity(N);
    let mut keys = Vec::with_capacity(N);
    runtime.block_on(async {
        for _ in 0..N {
            let start = Instant::now();
            std::hint::black_box(issuers.verify(std::hint::black_box(&token)).await.unwrap());
            tokens.push(start.elapsed());
            let start = Instant::now();
            std::hint::black_box(ring.authenticate(std::hint::black_box(&api_key)));
            keys.push(start.elapsed());
        }
    });
    first.sort();
    tokens.sort();
    keys.sort();
    println!("bearer authentication, warm JWKS cache ({} byte RS256 token)", token.len());
    for (name, times) in [("token, first use", &first), ("token, sent again", &tokens), ("API key", &keys)] {
        println!(
            "  {name:<18} {:>6} runs   p50 {:>7.1} µs   p99 {:>7.1} µs",
            times.len(),
            percentile(times, 0.50).as_secs_f64() * 1e6,
            percentile(times, 0.99).as_secs_f64() * 1e6
        );
    }
}
