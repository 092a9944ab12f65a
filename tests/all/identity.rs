//! Identity from the organisation's single sign-on: OIDC bearer tokens on every
//! route, MCP's protected-resource metadata, and every hostile token refused.
//!
//! The hostile cases need an issuer the test controls (its keys, its availability,
//! how many times its JWKS is fetched), so this file serves discovery and JWKS itself
//! and signs tokens with a fixed test key. The flows against a real identity provider
//! (npm `oidc-provider`) are in `sso.rs`.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;

const PRIVATE_PEM: &[u8] = include_bytes!("../fixtures/token-signing-key.pem");
const PUBLIC_PEM: &[u8] = include_bytes!("../fixtures/token-signing-key.pub.pem");
const KID: &str = "test-key-1";
const AUDIENCE: &str = "http://sandgate.test/mcp";

/// How the test issuer answers its JWKS: normally, with 503, or after 20 s.
const NORMAL: u8 = 0;
const DOWN: u8 = 1;
const SLOW: u8 = 2;

/// A test issuer: discovery and JWKS on loopback, with a count of JWKS fetches.
struct TestIssuer {
    url: String,
    fetches: Arc<AtomicU32>,
    mode: Arc<AtomicU8>,
}

fn start_issuer() -> TestIssuer {
    use axum::routing::get;
    let fetches = Arc::new(AtomicU32::new(0));
    let mode = Arc::new(AtomicU8::new(NORMAL));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let key = EncodingKey::from_rsa_pem(PRIVATE_PEM).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(KID.into());
    let jwks = json!({ "keys": [jwk] });
    let discovery = json!({
        "issuer": url,
        "jwks_uri": format!("{url}/jwks"),
        "authorization_endpoint": format!("{url}/auth"),
        "token_endpoint": format!("{url}/token"),
    });
    let (counter, switch) = (fetches.clone(), mode.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new()
                .route("/.well-known/openid-configuration", get(move || async move { axum::Json(discovery) }))
                .route(
                    "/jwks",
                    get(move || {
                        let (jwks, counter, switch) = (jwks.clone(), counter.clone(), switch.clone());
                        async move {
                            use axum::response::IntoResponse;
                            counter.fetch_add(1, Ordering::SeqCst);
                            match switch.load(Ordering::SeqCst) {
                                DOWN => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                                SLOW => {
                                    tokio::time::sleep(Duration::from_secs(20)).await;
                                    axum::Json(jwks).into_response()
                                }
                                _ => axum::Json(jwks).into_response(),
                            }
                        }
                    }),
                );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    TestIssuer { url, fetches, mode }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A token `issuer` signs (RS256, the test key) with `claims` over the defaults.
fn token(issuer: &TestIssuer, claims: Value) -> String {
    token_with(Header { kid: Some(KID.into()), ..Header::new(Algorithm::RS256) }, issuer, claims)
}

fn token_with(header: Header, issuer: &TestIssuer, claims: Value) -> String {
    let mut body = json!({
        "iss": issuer.url,
        "aud": AUDIENCE,
        "sub": "ada",
        "email": "ada@example.com",
        "groups": ["eng-platform"],
        "iat": now(),
        "exp": now() + 300,
    });
    for (name, value) in claims.as_object().unwrap() {
        body[name] = value.clone();
    }
    let key = match header.alg {
        // Algorithm confusion: HMAC keyed with the issuer's *public* key.
        Algorithm::HS256 => EncodingKey::from_secret(PUBLIC_PEM).unwrap(),
        _ => EncodingKey::from_rsa_pem(PRIVATE_PEM).unwrap(),
    };
    jsonwebtoken::encode(&header, &body, &key).unwrap()
}

/// `base64url(json)` without padding.
fn segment(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn config(issuer: &TestIssuer, admin: &ApiKey) -> String {
    format!(
        r#"
[sandbox]
test_capability = true

[auth]
public_url = "http://sandgate.test"

[[auth.oidc]]
issuer = "{issuer}"
audiences = ["{AUDIENCE}", "http://sandgate.test"]
header = "Cf-Access-Jwt-Assertion"
admin_groups = ["sandgate-admins"]
teams = {{ "eng-platform" = "platform", "eng-payments" = "payments" }}
jwks_refresh_s = 30

{keys}"#,
        issuer = issuer.url,
        keys = admin.entry,
    )
}

const POLICY: &str = r#"
[[policy]]
name = "everyone"
principals = ["*"]
[policy.limits]
wall_ms = 10_000

[[policy]]
name = "payments-only"
principals = ["team:payments"]
[policy.tools]
allow = ["test.*"]
"#;

fn execute(base: &str, header: (&str, &str)) -> (StatusCode, Value, Option<String>) {
    block_on(async {
        let response = client()
            .post(format!("{base}/v1/execute"))
            .header(header.0, header.1)
            .json(&json!({"code": "return 6 * 7"}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
        (status, response.json().await.unwrap_or(Value::Null), challenge)
    })
}

fn bearer(base: &str, token: &str) -> (StatusCode, Value) {
    let (status, body, _) = execute(base, ("authorization", &format!("Bearer {token}")));
    (status, body)
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// Waits for the server's first fetch of the issuer's keys (at start).
fn wait_for_fetch(issuer: &TestIssuer, at_least: u32) {
    for _ in 0..200 {
        if issuer.fetches.load(Ordering::SeqCst) >= at_least {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the server never fetched the issuer's keys");
}

#[test]
fn tokens_from_the_issuer_authenticate_and_hostile_ones_are_refused() {
    let issuer = start_issuer();
    let admin = api_key("ops-laptop", "ops", "ops-team", "admin");
    let served = start_server_with(&config(&issuer, &admin), POLICY);
    let base = &served.base;
    wait_for_fetch(&issuer, 1);

    // A good token: the person and team come from its claims.
    let good = token(&issuer, json!({}));
    let (status, body) = bearer(base, &good);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], 42);
    let rows = ledger_rows_within(&served.ledger(), "SELECT user, team, key FROM executions", 1);
    assert_eq!(rows[0], vec![json!("ada@example.com"), json!("platform"), json!("sso")]);
    // API keys keep working beside tokens.
    assert_eq!(bearer(base, &admin.token).0, StatusCode::OK);
    // Within the leeway (60 s), a token just past its `exp` still counts.
    assert_eq!(bearer(base, &token(&issuer, json!({"exp": now() - 10}))).0, StatusCode::OK);

    // Each hostile token is a 401 that says why.
    let refused = |token: &str, why: &str| {
        let (status, body) = bearer(base, token);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {body}");
        assert_eq!(body["error"]["kind"], "unauthorized", "{why}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(why), "expected `{why}` in: {message}");
    };
    let claims = json!({"iss": issuer.url, "aud": AUDIENCE, "email": "eve@example.com", "groups": ["eng-payments"], "exp": now() + 300});
    let none = format!("{}.{}.", segment(&json!({"alg": "none", "kid": KID})), segment(&claims));
    refused(&none, "algorithm `none`");
    let confused = token_with(Header { kid: Some(KID.into()), ..Header::new(Algorithm::HS256) }, &issuer, json!({}));
    refused(&confused, "algorithm `HS256`");
    refused(&token(&issuer, json!({"iss": "http://127.0.0.1:1"})), "issuer `http://127.0.0.1:1`");
    refused(&token(&issuer, json!({"aud": "https://another-service.example/mcp"})), "another audience");
    refused(&token(&issuer, json!({"exp": now() - 600})), "expired");
    refused(&token(&issuer, json!({"nbf": now() + 600})), "not valid yet");
    // A token whose signature is of other claims.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = segment(&json!({"iss": issuer.url, "aud": AUDIENCE, "email": "eve@example.com", "exp": now() + 300}));
    refused(&parts.join("."), "signature");
    // Oversized: a token past 16 KiB is refused unread; a header past the server's
    // limit is refused by the HTTP layer. Neither harms the server.
    let huge = token(&issuer, json!({"padding": "x".repeat(20_000)}));
    refused(&huge, "larger than");
    let enormous = format!("Bearer {}", "y".repeat(1 << 20));
    let status = block_on(async {
        client()
            .post(format!("{base}/v1/execute"))
            .header("authorization", enormous)
            .json(&json!({"code": "1"}))
            .send()
            .await
            .map(|r| r.status())
    });
    assert!(status.as_ref().map_or(true, |s| s.is_client_error()), "{status:?}");

    // A token whose groups change: the next request sees the new team, and the
    // policies of that team.
    let moved = token(&issuer, json!({"groups": ["eng-payments", "eng-platform"]}));
    let code = json!({"code": "return await tools.test.echo({x: 1})"});
    let calls = |token: &str| {
        block_on(async {
            let response =
                client().post(format!("{base}/v1/execute")).bearer_auth(token).json(&code).send().await.unwrap();
            response.json::<Value>().await.unwrap()
        })
    };
    assert_eq!(calls(&good)["error"]["kind"], "tool_denied", "platform may not call test tools");
    let allowed = calls(&moved);
    assert!(allowed.get("error").is_none(), "payments may: {allowed}");
    let teams = ledger_rows_within(
        &served.ledger(),
        "SELECT DISTINCT team FROM executions WHERE user = 'ada@example.com' ORDER BY team",
        2,
    );
    assert_eq!(teams, vec![vec![json!("payments")], vec![json!("platform")]]);
    // Admin by group.
    let admin_token = token(&issuer, json!({"groups": ["eng-platform", "sandgate-admins"]}));
    let usage = get_json(&format!("{base}/v1/usage?group_by=user"), &admin_token);
    assert!(usage["rows"].as_array().unwrap().iter().any(|r| r["group"] == "ops"), "an admin sees everyone: {usage}");
    let own = get_json(&format!("{base}/v1/usage?group_by=user"), &good);
    assert!(own["rows"].as_array().unwrap().iter().all(|r| r["group"] == "ada@example.com"), "{own}");

    // An identity-aware proxy's assertion header is a credential too, on the API
    // and on the console.
    let (status, body, _) = execute(base, ("cf-access-jwt-assertion", &good));
    assert_eq!(status, StatusCode::OK, "{body}");
    let page = block_on(async {
        let response =
            client().get(format!("{base}/ui")).header("cf-access-jwt-assertion", &good).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    });
    assert_eq!(page.0, StatusCode::OK);
    assert!(page.1.contains("ada@example.com (team platform, member)"), "{}", page.1);

    // A flood of unknown `kid`s costs the issuer at most one JWKS fetch per interval.
    let before = issuer.fetches.load(Ordering::SeqCst);
    let flood: Vec<String> = (0..40)
        .map(|i| {
            token_with(
                Header { kid: Some(format!("made-up-{i}")), ..Header::new(Algorithm::RS256) },
                &issuer,
                json!({}),
            )
        })
        .collect();
    block_on(async {
        let sends = flood
            .iter()
            .map(|t| client().post(format!("{base}/v1/execute")).bearer_auth(t).json(&json!({"code": "1"})).send());
        for response in futures::future::join_all(sends).await {
            assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
        }
    });
    let after = issuer.fetches.load(Ordering::SeqCst);
    assert!(after - before <= 1, "{} fetches for 40 unknown kids", after - before);

    // The issuer down, then slow: tokens signed with known keys keep working from
    // the cache, and none waits on the issuer.
    issuer.mode.store(DOWN, Ordering::SeqCst);
    assert_eq!(bearer(base, &good).0, StatusCode::OK);
    issuer.mode.store(SLOW, Ordering::SeqCst);
    let (status, _) = bearer(base, &token(&issuer, json!({"email": "bo@example.com"})));
    assert_eq!(status, StatusCode::OK, "a known key needs no fetch, however slow the issuer");
    assert_healthy_at(base);
}

fn assert_healthy_at(base: &str) {
    let (status, _) = get_text(&format!("{base}/healthz"), "");
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn mcp_tells_clients_where_to_sign_in_and_takes_only_its_own_audience() {
    let issuer = start_issuer();
    let served = start_server_with(&config(&issuer, &api_key("k", "u", "t", "member")), POLICY);
    let base = &served.base;
    wait_for_fetch(&issuer, 1);
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    });
    let post = |auth: Option<String>| {
        block_on(async {
            let mut request = client()
                .post(format!("{base}/mcp"))
                .header("accept", "application/json, text/event-stream")
                .json(&initialize);
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().await.unwrap();
            let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
            (response.status(), challenge)
        })
    };
    // Unauthenticated: 401 naming the protected-resource metadata.
    let (status, challenge) = post(None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let metadata_url = "http://sandgate.test/.well-known/oauth-protected-resource/mcp";
    assert_eq!(challenge.as_deref(), Some(format!(r#"Bearer resource_metadata="{metadata_url}""#).as_str()));
    // The metadata (RFC 9728, path-suffixed for /mcp) names the issuer.
    let (status, text) = get_text(&format!("{base}/.well-known/oauth-protected-resource/mcp"), "");
    assert_eq!(status, StatusCode::OK);
    let metadata: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(metadata["resource"], "http://sandgate.test/mcp");
    assert_eq!(metadata["authorization_servers"], json!([issuer.url]));
    assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));
    let (_, root) = get_text(&format!("{base}/.well-known/oauth-protected-resource"), "");
    assert_eq!(serde_json::from_str::<Value>(&root).unwrap()["resource"], "http://sandgate.test");
    // A token minted for another resource is refused, and the client is told so.
    let foreign = token(&issuer, json!({"aud": "https://other-mcp.example/mcp"}));
    let (status, challenge) = post(Some(format!("Bearer {foreign}")));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.unwrap().ends_with(r#"error="invalid_token""#));
    // sandgate's own: in.
    let (status, _) = post(Some(format!("Bearer {}", token(&issuer, json!({})))));
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn a_server_with_keys_only_serves_no_resource_metadata() {
    let served = start_server_with(&api_key("k", "u", "t", "member").entry, TEST_POLICY);
    let (status, _) = get_text(&format!("{}/.well-known/oauth-protected-resource/mcp", served.base), "");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let response =
        block_on(async { client().post(format!("{}/mcp", served.base)).json(&json!({})).send().await.unwrap() });
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

const KEYS_POLICY: &str = r#"
[[policy]]
name = "everyone"
principals = ["*"]
[policy.limits]
wall_ms = 10_000

[[policy]]
name = "platform-keys"
principals = ["team:platform"]
[policy.keys]
max = 2
max_lifetime_days = 1
"#;

/// `method` on `base` + `path` with `credential` as a bearer token and `body`.
fn api(method: reqwest::Method, base: &str, path: &str, credential: &str, body: Option<Value>) -> (StatusCode, Value) {
    block_on(call(method, format!("{base}{path}"), credential, body))
}

#[test]
fn signed_in_people_issue_personal_keys_bound_to_them_limited_expiring_and_revocable() {
    use reqwest::Method;
    let issuer = start_issuer();
    let admin = api_key("ops-laptop", "ops", "ops-team", "admin");
    let served = start_server_with(&config(&issuer, &admin), KEYS_POLICY);
    let base = &served.base;
    wait_for_fetch(&issuer, 1);
    let ada = token(&issuer, json!({}));
    let subject = format!("{}#ada", issuer.url);

    let (status, me) = api(Method::GET, base, "/v1/me", &ada, None);
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["via"], "sso");
    assert_eq!(me["subject"], subject.as_str());

    // Issued to the person the token names, for their teams, for the time asked.
    let (status, issued) =
        api(Method::POST, base, "/v1/keys", &ada, Some(json!({"name": "ada-laptop", "expires_in_s": 3_600})));
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let key = issued["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sg_"), "{issued}");
    assert_eq!(issued["user"], "ada@example.com");
    assert_eq!(issued["teams"], json!(["platform"]));
    assert_eq!(issued["owner"], subject.as_str());
    let (status, me) = api(Method::GET, base, "/v1/me", &key, None);
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!((me["via"].as_str(), me["key"].as_str()), (Some("personal_key"), Some("ada-laptop")), "{me}");
    let (status, ran) = bearer(base, &key);
    assert_eq!((status, &ran["result"]), (StatusCode::OK, &json!(42)), "{ran}");
    let rows = ledger_rows_within(&served.ledger(), "SELECT user, team, key FROM executions", 1);
    assert_eq!(rows, vec![vec![json!("ada@example.com"), json!("platform"), json!("ada-laptop")]]);

    // Only the identity provider's own word issues keys: never a key, personal or not.
    for credential in [key.as_str(), admin.token.as_str()] {
        let (status, body) = api(Method::POST, base, "/v1/keys", credential, Some(json!({})));
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["kind"], "forbidden");
    }
    // A lifetime past the policy's, none at all, a bad or taken name: a clear 400.
    for body in [
        json!({"expires_in_s": 86_401}),
        json!({"expires_in_s": 0}),
        json!({"name": "has space"}),
        json!({"name": "sg_secretlike"}),
        json!({"name": "ada-laptop"}),
        json!({"name": "ops-laptop"}),
        json!({"lifetime": 5}),
    ] {
        let (status, answer) = api(Method::POST, base, "/v1/keys", &ada, Some(body.clone()));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"]["kind"], "invalid_request", "{answer}");
    }
    // A team no policy grants keys to gets none.
    let bo = token(&issuer, json!({"sub": "bo", "email": "bo@example.com", "groups": ["eng-payments"]}));
    let (status, body) = api(Method::POST, base, "/v1/keys", &bo, Some(json!({})));
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("[policy.keys]"), "{body}");

    // At most `max` live keys; the default lifetime is the longest the policy allows.
    let (status, second) = api(Method::POST, base, "/v1/keys", &ada, Some(json!({})));
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let second_name = second["name"].as_str().unwrap().to_string();
    assert!(second_name.starts_with("ada-"), "{second}");
    let (status, body) = api(Method::POST, base, "/v1/keys", &ada, Some(json!({})));
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("keys.max"), "{body}");

    // Each sees their own; an admin sees every key with its owner; others' are not there.
    let (_, mine) = api(Method::GET, base, "/v1/keys", &ada, None);
    let names: Vec<&str> = mine["keys"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "{mine}");
    assert!(names.contains(&"ada-laptop") && names.contains(&second_name.as_str()), "{mine}");
    assert!(mine.to_string().find("sg_").is_none(), "no secret is ever listed: {mine}");
    let (_, theirs) = api(Method::GET, base, "/v1/keys", &bo, None);
    assert_eq!(theirs["keys"], json!([]), "{theirs}");
    let (status, _) = api(Method::GET, base, "/v1/keys?all=true", &ada, None);
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, all) = api(Method::GET, base, "/v1/keys?all=true", &admin.token, None);
    assert_eq!(status, StatusCode::OK, "{all}");
    let laptop = all["keys"].as_array().unwrap().iter().find(|k| k["name"] == "ada-laptop").unwrap();
    assert_eq!(laptop["owner"], subject.as_str(), "{all}");
    let (status, _) = api(Method::DELETE, base, "/v1/keys/ada-laptop", &bo, None);
    assert_eq!(status, StatusCode::NOT_FOUND, "another person's key reads as none");

    // The key keeps the teams it was issued for when the person's groups change.
    let moved = token(&issuer, json!({"groups": ["eng-payments"]}));
    let (_, me) = api(Method::GET, base, "/v1/me", &moved, None);
    assert_eq!(me["teams"], json!(["payments"]));
    let (_, me) = api(Method::GET, base, "/v1/me", &key, None);
    assert_eq!(me["teams"], json!(["platform"]), "{me}");

    // Revoked by its owner: refused at once.
    let (status, _) = api(Method::DELETE, base, "/v1/keys/ada-laptop", &ada, None);
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api(Method::GET, base, "/v1/me", &key, None);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // Revoked by an admin.
    let (status, _) = api(Method::DELETE, base, &format!("/v1/keys/{second_name}"), &admin.token, None);
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Expired: refused, and no longer counted or listed.
    let (status, short) = api(Method::POST, base, "/v1/keys", &ada, Some(json!({"expires_in_s": 1})));
    assert_eq!(status, StatusCode::CREATED, "{short}");
    let short_key = short["key"].as_str().unwrap();
    assert_eq!(api(Method::GET, base, "/v1/me", short_key, None).0, StatusCode::OK);
    std::thread::sleep(Duration::from_millis(1_100));
    let (status, body) = api(Method::GET, base, "/v1/me", short_key, None);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (_, mine) = api(Method::GET, base, "/v1/keys", &ada, None);
    assert_eq!(mine["keys"], json!([]), "{mine}");
}
