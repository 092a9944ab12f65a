//! A person's commands against a running sandgate: `login`, `logout`, `token` and
//! `personal-key create|list|revoke`.
//!
//! `sandgate login` signs the person in at the organisation's identity provider once
//! and keeps the provider's refresh token in a file only they can read
//! (`$SANDGATE_CREDENTIALS`, else `$XDG_CONFIG_HOME/sandgate/credentials.json`, else
//! `~/.config/sandgate/credentials.json`). `sandgate token` prints an access token
//! for sandgate, refreshed when it has less than a minute left: a client's token
//! command (Claude Code's `apiKeyHelper`) runs it, so no long-lived secret sits in the
//! client's own settings.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::auth::client::{self, LoginInfo, LoginIssuer, Tokens};

/// A refreshed token is fetched again when it has less than this left.
const MIN_LEFT_S: u64 = 60;

/// How long `sandgate login` waits for the browser in the loopback flow.
const BROWSER_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, clap::Args)]
pub struct Server {
    /// sandgate's URL (default: the server of the last `sandgate login`).
    #[arg(long, env = "SANDGATE_URL")]
    server: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PersonalKeyCommand {
    /// Issue yourself a personal key (printed once), bound to your identity and teams
    /// as they are now. Needs `sandgate login`.
    Create {
        /// A name for the key (default: your name and a random suffix).
        #[arg(long)]
        name: Option<String>,
        /// How long it lives, e.g. `7d`, `12h` (default, and at most: what your
        /// policies allow).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        #[command(flatten)]
        server: Server,
    },
    /// List your live personal keys; `--all`: every key in the store (admins).
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Revoke one of your keys (an admin: any stored key).
    Revoke {
        name: String,
        #[command(flatten)]
        server: Server,
    },
}

/// What `login` keeps for one server.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Saved {
    issuer: String,
    client_id: String,
    resource: String,
    #[serde(flatten)]
    tokens: Tokens,
}

/// The credentials file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Credentials {
    /// The server of the last `login`: the one used when none is named.
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    servers: BTreeMap<String, Saved>,
}

fn credentials_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SANDGATE_CREDENTIALS") {
        return Ok(PathBuf::from(path));
    }
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("neither SANDGATE_CREDENTIALS nor HOME is set")?)
            .join(".config"),
    };
    Ok(config.join("sandgate").join("credentials.json"))
}

/// Holds the credentials file's lock: one process at a time reads, refreshes and
/// writes it, so two token commands at once never spend one refresh token twice
/// (which a provider that rotates them takes for theft).
struct Locked {
    path: PathBuf,
    _lock: std::fs::File,
}

impl Locked {
    fn open() -> anyhow::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let path = credentials_path()?;
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        Ok(Self { path, _lock: lock })
    }

    fn read(&self) -> anyhow::Result<Credentials> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid", self.path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Credentials::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    /// Replaces the file whole (a new file, readable by its owner only, renamed over).
    fn write(&self, credentials: &Credentials) -> anyhow::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let temporary = self.path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        file.write_all(&serde_json::to_vec_pretty(credentials)?)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.path).with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(())
    }
}

fn normalise(server: &str) -> anyhow::Result<String> {
    let server = server.trim().trim_end_matches('/');
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        bail!("`{server}` is not an http(s) URL: name sandgate's address, such as https://sandgate.example.com");
    }
    Ok(server.to_string())
}

/// The server named, or the last one signed in to.
fn server_of(named: Option<String>, credentials: &Credentials) -> anyhow::Result<String> {
    match named.or_else(|| credentials.default.clone()) {
        Some(server) => normalise(&server),
        None => bail!("name the server with --server (or SANDGATE_URL), or run `sandgate login --server URL` first"),
    }
}

/// A sandgate error answer's message, or the status and body.
async fn refusal(response: reqwest::Response) -> String {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.chars().take(300).collect());
    format!("{status}: {message}")
}

pub async fn login(server: Option<String>, issuer: Option<String>, browser: bool) -> anyhow::Result<ExitCode> {
    let Some(server) = server else { bail!("name the server to sign in to with --server URL (or SANDGATE_URL)") };
    let server = normalise(&server)?;
    let http = client::http();
    let url = format!("{server}/v1/auth/cli");
    let response = http.get(&url).send().await.with_context(|| format!("cannot reach {url}"))?;
    if !response.status().is_success() {
        bail!("{url}: {}", refusal(response).await);
    }
    let info: LoginInfo = response.json().await.with_context(|| format!("{url} answered something else"))?;
    let chosen: LoginIssuer = match &issuer {
        Some(name) => info.issuers.iter().find(|i| &i.name == name).cloned().with_context(|| {
            let names: Vec<&str> = info.issuers.iter().map(|i| i.name.as_str()).collect();
            format!("the server has no issuer `{name}` for the command line (it has: {})", names.join(", "))
        })?,
        None => info.issuers.first().cloned().context("the server names no issuer for the command line")?,
    };
    let discovery = client::discover(&http, &chosen.issuer).await?;
    let tokens = if discovery.device_authorization_endpoint.is_some() && !browser {
        let device = client::device_start(&http, &discovery, &chosen, &info.resource).await?;
        match &device.verification_uri_complete {
            Some(complete) => {
                eprintln!("To sign in, open this page and confirm the code {}:\n  {complete}", device.user_code)
            }
            None => eprintln!(
                "To sign in, open this page and enter the code {}:\n  {}",
                device.user_code, device.verification_uri
            ),
        }
        eprintln!("Waiting for the sign-in...");
        client::device_finish(&http, &discovery, &chosen, &device).await?
    } else {
        let pending = client::loopback_start(&discovery, &chosen, &info.resource).await?;
        eprintln!("To sign in, open this page in a browser on this machine:\n  {}", pending.url);
        eprintln!("Waiting for the sign-in...");
        client::loopback_finish(&http, &discovery, &chosen, &info.resource, pending, BROWSER_WAIT).await?
    };
    let me = whoami(&http, &server, &tokens.access_token).await?;
    let locked = Locked::open()?;
    let mut credentials = locked.read()?;
    credentials.servers.insert(
        server.clone(),
        Saved { issuer: chosen.issuer, client_id: chosen.client_id, resource: info.resource, tokens },
    );
    credentials.default = Some(server.clone());
    locked.write(&credentials)?;
    eprintln!(
        "Signed in to {server} as {} (teams {}, {}). `sandgate token` prints a fresh token for clients.",
        me["user"].as_str().unwrap_or("?"),
        me["teams"]
            .as_array()
            .map(|t| t.iter().filter_map(|t| t.as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        me["role"].as_str().unwrap_or("?"),
    );
    Ok(ExitCode::SUCCESS)
}

/// Who sandgate takes `token` for.
async fn whoami(http: &reqwest::Client, server: &str, token: &str) -> anyhow::Result<serde_json::Value> {
    let url = format!("{server}/v1/me");
    let response = http.get(&url).bearer_auth(token).send().await.with_context(|| format!("cannot reach {url}"))?;
    if !response.status().is_success() {
        bail!("sandgate does not accept the token the sign-in produced: {}", refusal(response).await);
    }
    Ok(response.json().await?)
}

/// A fresh access token for `server` (refreshed and saved when it has less than
/// [`MIN_LEFT_S`] left), and the server's URL.
async fn fresh_token(server: Option<String>) -> anyhow::Result<(String, String)> {
    let locked = Locked::open()?;
    let mut credentials = locked.read()?;
    let server = server_of(server, &credentials)?;
    let Some(saved) = credentials.servers.get(&server).cloned() else {
        bail!("not signed in to {server}: run `sandgate login --server {server}`");
    };
    if saved.tokens.expires_at > client::unix_now() + MIN_LEFT_S {
        return Ok((saved.tokens.access_token, server));
    }
    let Some(refresh_token) = &saved.tokens.refresh_token else {
        bail!("the sign-in to {server} has expired: run `sandgate login --server {server}`");
    };
    let http = client::http();
    let discovery = client::discover(&http, &saved.issuer).await?;
    let tokens =
        client::refresh(&http, &discovery, &saved.client_id, &saved.resource, refresh_token).await.with_context(
            || format!("the sign-in to {server} cannot be renewed: run `sandgate login --server {server}`"),
        )?;
    let access = tokens.access_token.clone();
    credentials.servers.insert(server.clone(), Saved { tokens, ..saved });
    locked.write(&credentials)?;
    Ok((access, server))
}

pub async fn token(server: Server) -> anyhow::Result<ExitCode> {
    let (token, _) = fresh_token(server.server).await?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

pub async fn logout(server: Server) -> anyhow::Result<ExitCode> {
    let locked = Locked::open()?;
    let mut credentials = locked.read()?;
    let server = server_of(server.server, &credentials)?;
    let Some(saved) = credentials.servers.remove(&server) else {
        eprintln!("not signed in to {server}");
        return Ok(ExitCode::SUCCESS);
    };
    if credentials.default.as_deref() == Some(server.as_str()) {
        credentials.default = credentials.servers.keys().next().cloned();
    }
    locked.write(&credentials)?;
    // The provider forgets the grant too, when it can be told to.
    let http = client::http();
    if let (Some(refresh_token), Ok(discovery)) =
        (&saved.tokens.refresh_token, client::discover(&http, &saved.issuer).await)
    {
        client::revoke(&http, &discovery, &saved.client_id, refresh_token).await;
    }
    eprintln!("signed out of {server}");
    Ok(ExitCode::SUCCESS)
}

pub async fn personal_key(command: PersonalKeyCommand) -> anyhow::Result<ExitCode> {
    let http = client::http();
    match command {
        PersonalKeyCommand::Create { name, expires_in, server } => {
            let (token, server) = fresh_token(server.server).await?;
            let body = serde_json::json!({"name": name, "expires_in_s": expires_in.map(|d| d.as_secs().max(1))});
            let response = http.post(format!("{server}/v1/keys")).bearer_auth(token).json(&body).send().await?;
            if !response.status().is_success() {
                bail!("no key was issued: {}", refusal(response).await);
            }
            let issued: serde_json::Value = response.json().await?;
            eprintln!(
                "key `{}` for {} (teams {}), expires {}; this is the only time it is shown:",
                issued["name"].as_str().unwrap_or("?"),
                issued["user"].as_str().unwrap_or("?"),
                issued["teams"]
                    .as_array()
                    .map(|t| t.iter().filter_map(|t| t.as_str()).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default(),
                issued["expires_at"].as_str().unwrap_or("never"),
            );
            println!("{}", issued["key"].as_str().unwrap_or_default());
        }
        PersonalKeyCommand::List { all, server } => {
            let (token, server) = fresh_token(server.server).await?;
            let url = format!("{server}/v1/keys{}", if all { "?all=true" } else { "" });
            let response = http.get(url).bearer_auth(token).send().await?;
            if !response.status().is_success() {
                bail!("{}", refusal(response).await);
            }
            let listed: serde_json::Value = response.json().await?;
            println!("{:<28} {:<28} {:<24} {:<20} {:<20} OWNER", "NAME", "USER", "TEAMS", "CREATED", "EXPIRES");
            for key in listed["keys"].as_array().into_iter().flatten() {
                let teams: Vec<&str> =
                    key["teams"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
                println!(
                    "{:<28} {:<28} {:<24} {:<20} {:<20} {}",
                    key["name"].as_str().unwrap_or_default(),
                    key["user"].as_str().unwrap_or_default(),
                    teams.join(","),
                    key["created_at"].as_str().unwrap_or_default(),
                    key["expires_at"].as_str().unwrap_or("never"),
                    key["owner"].as_str().unwrap_or("operator"),
                );
            }
        }
        PersonalKeyCommand::Revoke { name, server } => {
            let (token, server) = fresh_token(server.server).await?;
            let encoded: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
            let response = http.delete(format!("{server}/v1/keys/{encoded}")).bearer_auth(token).send().await?;
            if !response.status().is_success() {
                bail!("{}", refusal(response).await);
            }
            eprintln!("key `{name}` revoked: every server refuses it within seconds");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Calls waiting for approval that you may see: your own, and those you may
    /// decide (an admin: every one).
    List {
        /// `pending` (the default), `approved`, `denied`, `expired` or `all`.
        #[arg(long, default_value = "pending")]
        status: String,
        #[command(flatten)]
        who: Approver,
    },
    /// Approve a call: the paused execution goes on where it stopped.
    Approve {
        id: String,
        /// Why, kept with the decision.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        who: Approver,
    },
    /// Deny a call: it rejects in the code with `tool_denied` and your reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        who: Approver,
    },
    /// Approvals of the last days counted per tool and approver.
    Counts {
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[command(flatten)]
        who: Approver,
    },
}

/// Who decides: an API key, or the sign-in of `sandgate login`.
#[derive(Debug, clap::Args)]
pub struct Approver {
    #[command(flatten)]
    server: Server,
    /// An API key to act as (default: the sign-in of `sandgate login`).
    #[arg(long, env = "SANDGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl Approver {
    /// The server's URL and the bearer credential to present to it.
    async fn credential(self) -> anyhow::Result<(String, String)> {
        match self.api_key {
            Some(key) => {
                let Some(server) = self.server.server else {
                    bail!("name the server with --server URL (or SANDGATE_URL) to use an API key")
                };
                Ok((normalise(&server)?, key))
            }
            None => {
                let (token, server) = fresh_token(self.server.server).await?;
                Ok((server, token))
            }
        }
    }
}

pub async fn approvals(command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    let http = client::http();
    match command {
        ApprovalsCommand::List { status, who } => {
            let (server, token) = who.credential().await?;
            let encoded: String = form_urlencoded::byte_serialize(status.as_bytes()).collect();
            let response =
                http.get(format!("{server}/v1/approvals?status={encoded}")).bearer_auth(token).send().await?;
            if !response.status().is_success() {
                bail!("{}", refusal(response).await);
            }
            let listed: serde_json::Value = response.json().await?;
            println!("{:<32} {:<9} {:<36} {:<24} {:<26} WHY", "ID", "STATUS", "CALL", "CALLER", "EXPIRES");
            for approval in listed["approvals"].as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:<9} {:<36} {:<24} {:<26} {}",
                    approval["id"].as_str().unwrap_or_default(),
                    approval["status"].as_str().unwrap_or_default(),
                    approval["tool"].as_str().unwrap_or_default(),
                    format!(
                        "{} ({})",
                        approval["caller"]["user"].as_str().unwrap_or_default(),
                        approval["caller"]["team"].as_str().unwrap_or_default()
                    ),
                    approval["expires_at"].as_str().unwrap_or_default(),
                    approval["reason"].as_str().unwrap_or_default(),
                );
            }
        }
        ApprovalsCommand::Approve { id, reason, who } => decide(&http, who, &id, "approve", reason).await?,
        ApprovalsCommand::Deny { id, reason, who } => decide(&http, who, &id, "deny", reason).await?,
        ApprovalsCommand::Counts { days, who } => {
            let (server, token) = who.credential().await?;
            let response =
                http.get(format!("{server}/v1/approvals/counts?days={days}")).bearer_auth(token).send().await?;
            if !response.status().is_success() {
                bail!("{}", refusal(response).await);
            }
            let counts: serde_json::Value = response.json().await?;
            println!(
                "{:<36} {:<28} {:>9} {:>7} {:>8} {:>8} {:>12}",
                "TOOL", "APPROVER", "APPROVED", "DENIED", "EXPIRED", "PENDING", "MEDIAN_WAIT"
            );
            for row in counts["counts"].as_array().into_iter().flatten() {
                let approver = row["approver"].as_str().filter(|a| !a.is_empty()).unwrap_or("-");
                let wait = row["median_wait_ms"].as_i64().map(|ms| format!("{:.1}s", ms as f64 / 1000.0));
                println!(
                    "{:<36} {:<28} {:>9} {:>7} {:>8} {:>8} {:>12}",
                    row["tool"].as_str().unwrap_or_default(),
                    approver,
                    row["approved"],
                    row["denied"],
                    row["expired"],
                    row["pending"],
                    wait.unwrap_or_else(|| "-".into())
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn decide(
    http: &reqwest::Client,
    who: Approver,
    id: &str,
    decision: &str,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let (server, token) = who.credential().await?;
    let encoded: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
    let body = serde_json::json!({"decision": decision, "reason": reason});
    let response = http.post(format!("{server}/v1/approvals/{encoded}")).bearer_auth(token).json(&body).send().await?;
    if !response.status().is_success() {
        bail!("not decided: {}", refusal(response).await);
    }
    let decided: serde_json::Value = response.json().await?;
    eprintln!(
        "{} {} ({}) of {}: its execution {} goes on",
        decided["status"].as_str().unwrap_or_default(),
        decided["tool"].as_str().unwrap_or_default(),
        decided["id"].as_str().unwrap_or_default(),
        decided["caller"]["user"].as_str().unwrap_or_default(),
        decided["execution_id"].as_str().unwrap_or_default(),
    );
    Ok(())
}
