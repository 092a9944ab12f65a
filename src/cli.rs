//! The command line: `serve`, `exec`, `session open|list|show|end`, `mcp`, `key create|list|revoke`,
//! `policy check|explain`, `usage`; and a person's commands against a running server
//! (`login`, `logout`, `token`, `personal-key`, in `cli/account.rs`).

mod account;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::auth::{digest, generate_key, hash_key, KeyEntry, Principal, Role, KEY_PREFIX};
use crate::config::{Config, PolicySource};
use crate::error::Kind;
use crate::limits::PartialLimits;
use crate::policy::{LoadContext, PolicySet, Query};
use crate::request::{ExecuteRequest, Language};
use crate::service::admin::Ask;
use crate::service::{Outcome, Service, ServiceError, SessionView};
use crate::store::{self, GroupBy, UsageQuery};
use crate::telemetry::{self, LogFormat};

/// sandgate: run agent-written JavaScript in a WebAssembly sandbox with hard limits.
#[derive(Debug, Parser)]
#[command(name = "sandgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (embedded defaults: loopback, no keys, example policies).
    Serve {
        /// Address to listen on; overrides `listen` in the config file.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Configuration file (sandgate.toml); without it the embedded defaults apply.
        #[arg(long, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Policy directory; overrides `policies` in the config file.
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Log format; overrides `log_format` in the config file.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Run one file of JavaScript (`-` for stdin) as the local user and print the
    /// outcome as JSON.
    ///
    /// Exit status: 0 when the code succeeded, 1 when it failed, 2 when it could not run.
    Exec {
        /// The code to run, or `-` to read it from stdin.
        file: PathBuf,
        /// JSON value visible to the code as `input`.
        #[arg(long)]
        input: Option<String>,
        /// JSON object of limits to lower, e.g. '{"fuel": 1000000000}'.
        #[arg(long)]
        limits: Option<String>,
        /// Configuration file (sandgate.toml).
        #[arg(long, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Policy directory; overrides `policies` in the config file.
        #[arg(long)]
        policies: Option<PathBuf>,
        /// The code's language; default: typescript for `.ts` files, python for `.py`,
        /// else javascript.
        #[arg(long, value_parser = ["javascript", "typescript", "python"])]
        language: Option<String>,
        /// Run in this session (`sandgate session open`): what the code declares stays
        /// for the session's next execution.
        #[arg(long)]
        session: Option<String>,
    },
    /// Sessions of the local user, whose executions share state
    /// (`sandgate exec --session ID`).
    #[command(subcommand)]
    Session(SessionCommand),
    /// Serve the Code Mode MCP server (tools `search` and `execute`) on stdin and
    /// stdout, for MCP clients that start their servers as processes.
    ///
    /// With keys configured, the caller is the key in the `SANDGATE_API_KEY`
    /// environment variable; without keys, the local user.
    Mcp {
        /// Configuration file (sandgate.toml).
        #[arg(long, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Policy directory; overrides `policies` in the config file.
        #[arg(long)]
        policies: Option<PathBuf>,
    },
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check and explain capability policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print usage totals from the ledger as a table.
    Usage {
        /// What to group by.
        #[arg(long, value_enum, default_value = "user")]
        group_by: GroupBy,
        /// Start (inclusive): a date (2026-11-25) or RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// End (exclusive): a date or RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Only this user's usage.
        #[arg(long)]
        user: Option<String>,
        /// Configuration file (sandgate.toml), for the ledger's path.
        #[arg(long, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Sign in to a sandgate server through its identity provider (SSO), once:
    /// the device authorization grant when the provider offers it, else a browser
    /// sign-in that returns to this machine.
    Login {
        /// sandgate's URL, e.g. `https://sandgate.example.com`.
        #[arg(long, env = "SANDGATE_URL")]
        server: Option<String>,
        /// The identity provider, by its name in the server's configuration (default: the first).
        #[arg(long)]
        issuer: Option<String>,
        /// Sign in with a browser on this machine even when the device grant is offered.
        #[arg(long)]
        browser: bool,
    },
    /// Forget the sign-in to a server, here and at the identity provider.
    Logout {
        #[command(flatten)]
        server: account::Server,
    },
    /// Print a fresh access token for sandgate, for a client's token command
    /// (Claude Code's `apiKeyHelper`): refreshed when it has less than a minute left.
    Token {
        #[command(flatten)]
        server: account::Server,
    },
    /// Your personal keys on a server you signed in to with `sandgate login`.
    #[command(subcommand)]
    PersonalKey(account::PersonalKeyCommand),
    /// Calls waiting for a person: list them, approve or deny one, count decisions.
    #[command(subcommand)]
    Approvals(account::ApprovalsCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key: prints it once and records only its hash, in the shared
    /// store when one is configured (every replica has it within seconds), else in the
    /// configuration file.
    Create {
        #[arg(long)]
        user: String,
        #[arg(long)]
        team: String,
        /// A name for the key (default: the user and a random suffix); policies can match it as `key:NAME`.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum, default_value = "member")]
        role: Role,
        /// Where to record it (default: `store` with a PostgreSQL store, else `config`).
        #[arg(long = "in", value_enum)]
        home: Option<KeyHome>,
        /// The configuration file (created if missing when the key goes there).
        #[arg(long, env = "SANDGATE_CONFIG", default_value = "sandgate.toml")]
        config: PathBuf,
    },
    /// List the keys in force: the configuration file's and the store's.
    List {
        #[arg(long, env = "SANDGATE_CONFIG", default_value = "sandgate.toml")]
        config: PathBuf,
    },
    /// Revoke a key kept in the store: every replica refuses it within seconds.
    Revoke {
        name: String,
        #[arg(long, env = "SANDGATE_CONFIG", default_value = "sandgate.toml")]
        config: PathBuf,
    },
}

/// Where `sandgate key create` records a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyHome {
    /// The store (shared by every replica on it; revocable without a restart).
    Store,
    /// `[[keys]]` in the configuration file (one node; reloaded on SIGHUP).
    Config,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Open a session; prints it as JSON.
    Open {
        #[arg(long, value_parser = ["javascript", "typescript"], default_value = "javascript")]
        language: String,
        /// Seconds it lives unused (default and ceiling: the policies' sessions.idle_ttl_s).
        #[arg(long)]
        ttl_s: Option<u64>,
        #[arg(long, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List the live sessions, as JSON.
    List {
        #[arg(long, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show one session, as JSON.
    Show {
        id: String,
        #[arg(long, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// End a session.
    End {
        id: String,
        #[arg(long, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Load every policy file and report problems with file, line and column.
    ///
    /// Exit status: 0 valid, 1 invalid.
    Check {
        /// The policy directory (default: from the config file, else ./policies).
        dir: Option<PathBuf>,
        #[arg(long, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the decision for one principal and action, and the rule that made it.
    ///
    /// Exit status: 0 allowed, 1 denied (or waiting for approval), 2 the policies
    /// could not be loaded.
    Explain {
        /// The user (with --local: defaults to `local`).
        #[arg(long, required_unless_present = "local")]
        user: Option<String>,
        /// The team (with --local: defaults to `local`).
        #[arg(long, required_unless_present = "local")]
        team: Option<String>,
        /// As the single user of a server running without keys (the `local` selector).
        #[arg(long)]
        local: bool,
        /// The key name the principal uses.
        #[arg(long, default_value = "")]
        key: String,
        #[arg(long, value_enum, default_value = "member")]
        role: Role,
        /// A tool, as `server.tool`.
        #[arg(long, group = "action")]
        tool: Option<String>,
        /// A model name; its tier is the one the configuration's catalog gives it, as
        /// the server and the console read it.
        #[arg(long, group = "action")]
        model: Option<String>,
        /// A cost tier.
        #[arg(long, group = "action")]
        tier: Option<String>,
        /// Whether the principal may run code at all, and under which limits.
        #[arg(long, group = "action")]
        execute: bool,
        /// The arguments of a call to --tool (or the request to --model), as JSON: the
        /// rules' `when` conditions are evaluated for that call, and the decision
        /// names the rule and condition that decided.
        #[arg(long)]
        args: Option<String>,
        /// The policy directory (default: from the config file, else ./policies).
        #[arg(long)]
        policies: Option<PathBuf>,
        #[arg(long, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sandgate: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve { listen, config, policies, log_format } => {
            runtime.block_on(serve(listen, config, policies, log_format))
        }
        Command::Exec { file, input, limits, config, policies, language, session } => {
            runtime.block_on(exec(file, input, limits, config, policies, language, session))
        }
        Command::Session(command) => runtime.block_on(session(command)),
        Command::Mcp { config, policies } => runtime.block_on(mcp_stdio(config, policies)),
        Command::Key(KeyCommand::Create { user, team, name, role, home, config }) => {
            runtime.block_on(key_create(user, team, name, role, home, config))
        }
        Command::Key(KeyCommand::List { config }) => runtime.block_on(key_list(config)),
        Command::Key(KeyCommand::Revoke { name, config }) => runtime.block_on(key_revoke(name, config)),
        Command::Policy(PolicyCommand::Check { dir, config }) => policy_check(dir, config),
        Command::Policy(PolicyCommand::Explain {
            user,
            team,
            local,
            key,
            role,
            tool,
            model,
            tier,
            execute,
            args,
            policies,
            config,
        }) => {
            let principal = if local {
                let team = team.unwrap_or_else(|| "local".into());
                Principal {
                    user: user.unwrap_or_else(|| "local".into()),
                    teams: vec![team.clone()],
                    team,
                    ..Principal::local()
                }
            } else {
                Principal::of_key(&key, &user.unwrap_or_default(), &team.unwrap_or_default(), role)
            };
            let args = match args.as_deref().map(serde_json::from_str::<serde_json::Value>).transpose() {
                Ok(args) => args,
                Err(error) => {
                    eprintln!("sandgate: --args is not JSON: {error}");
                    return ExitCode::from(2);
                }
            };
            let ask = match (tool, model, tier, execute) {
                (Some(tool), _, _, _) => Ask::Tool(tool, args),
                (None, Some(name), _, _) => Ask::Model(name, args),
                (None, None, Some(tier), false) => Ask::Tier(tier),
                (None, None, _, true) => Ask::Execute,
                (None, None, None, false) => {
                    eprintln!("sandgate: say what to explain: --tool, --model, --tier or --execute");
                    return ExitCode::from(2);
                }
            };
            policy_explain(principal, ask, policies, config)
        }
        Command::Usage { group_by, since, until, user, config } => {
            runtime.block_on(usage(group_by, since, until, user, config))
        }
        Command::Login { server, issuer, browser } => runtime.block_on(account::login(server, issuer, browser)),
        Command::Logout { server } => runtime.block_on(account::logout(server)),
        Command::Token { server } => runtime.block_on(account::token(server)),
        Command::PersonalKey(command) => runtime.block_on(account::personal_key(command)),
        Command::Approvals(command) => runtime.block_on(account::approvals(command)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sandgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: Option<PathBuf>, policies: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if let Some(dir) = policies {
        config.policies = PolicySource::Dir(dir);
    }
    Ok(config)
}

async fn serve(
    listen: Option<SocketAddr>,
    config: Option<PathBuf>,
    policies: Option<PathBuf>,
    log_format: Option<LogFormat>,
) -> anyhow::Result<ExitCode> {
    let mut config = load_config(config, policies)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(format) = log_format {
        config.log_format = format;
    }
    telemetry::init_logging(config.log_format);
    let traces = telemetry::trace::init(&config.telemetry)?;
    let listen = config.listen;
    let server = crate::Server::new(config).await?;
    if !listen.ip().is_loopback() && server.service().mode() == crate::service::Mode::Local {
        // `Server::serve` refuses this too; checking first avoids binding the address.
        anyhow::bail!(
            "refusing to listen on {listen}: no API keys are configured, so sandgate serves loopback addresses only \
             (create one with `sandgate key create`)"
        );
    }
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("sandgate listening on http://{addr}");
    server.serve(listener, crate::shutdown_signal()).await?;
    if let Some(traces) = traces {
        tokio::task::spawn_blocking(move || traces.shutdown()).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn exec(
    file: PathBuf,
    input: Option<String>,
    limits: Option<String>,
    config: Option<PathBuf>,
    policies: Option<PathBuf>,
    language: Option<String>,
    session: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config, policies)?;
    telemetry::init_logging(LogFormat::Text);
    let language = match language.as_deref() {
        Some(language) => language.parse::<Language>().map_err(|e| anyhow::anyhow!(e))?,
        None => Language::of_file(&file),
    };
    let code = if file.as_os_str() == "-" {
        let mut code = String::new();
        std::io::stdin().read_to_string(&mut code)?;
        code
    } else {
        std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
    };
    let input = input
        .map(|text| serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--input is not JSON: {e}")))
        .transpose()?;
    let limits: PartialLimits = match limits {
        Some(text) => serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--limits: {e}"))?,
        None => PartialLimits::default(),
    };
    let request = ExecuteRequest {
        code,
        input,
        limits,
        language,
        session_id: session,
        trace: Default::default(),
        agent_session: None,
    };
    let service = Service::new(&config).await?;
    service.upstreams().settled().await;
    let outcome = service.execute(Arc::new(Principal::local()), request).await;
    service.finish(std::time::Duration::from_secs(10)).await?;
    let printed = print_outcome(outcome);
    // The answer is out; the optimised code being compiled (on an empty compile cache)
    // is finished and cached before the process ends, so the next command starts on it.
    let sandbox = service.sandbox().clone();
    tokio::task::spawn_blocking(move || sandbox.settle()).await?;
    printed
}

/// Prints an execution's outcome as `sandgate exec` answers, and says which status the
/// command exits with.
fn print_outcome(outcome: Result<Outcome, ServiceError>) -> anyhow::Result<ExitCode> {
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            let body =
                serde_json::json!({ "ok": false, "error": { "kind": error.kind(), "message": error.to_string() } });
            println!("{}", serde_json::to_string_pretty(&body)?);
            return Ok(ExitCode::from(exit_code(error.kind())));
        }
    };
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    if outcome.status == Some("paused") {
        eprintln!(
            "sandgate: the execution paused at a call that needs approval; once an approver decides it, a server on \
             this store resumes it (`GET /v1/executions/{}`)",
            outcome.execution_id
        );
        return Ok(ExitCode::from(3));
    }
    Ok(match &outcome.error {
        None => ExitCode::SUCCESS,
        Some(error) => ExitCode::from(exit_code(error.kind)),
    })
}

/// The exit status of a command that ends with an error of each kind: sandgate's one
/// table for the command line. 1: the code ran and failed, by its own fault or by a
/// door's answer; 2: it could not run (refused, malformed, the server or the store
/// unavailable).
pub fn exit_code(kind: Kind) -> u8 {
    match kind {
        Kind::Syntax
        | Kind::Exception
        | Kind::Timeout
        | Kind::OutOfFuel
        | Kind::OutOfMemory
        | Kind::StackOverflow
        | Kind::OutputLimit
        | Kind::CallLimit
        | Kind::Unsettled
        | Kind::ToolDenied
        | Kind::ToolError
        | Kind::FileError
        | Kind::ModelDenied
        | Kind::BudgetExceeded
        | Kind::UpstreamError => 1,
        Kind::Unauthorized
        | Kind::Forbidden
        | Kind::RateLimited
        | Kind::NotFound
        | Kind::SessionBusy
        | Kind::Conflict
        | Kind::InvalidRequest
        | Kind::Overloaded
        | Kind::Unavailable
        | Kind::Cancelled
        | Kind::Internal => 2,
    }
}

/// The session commands, in process, as the local user (as `exec` runs).
async fn session(command: SessionCommand) -> anyhow::Result<ExitCode> {
    let config = match &command {
        SessionCommand::Open { config, .. }
        | SessionCommand::List { config }
        | SessionCommand::Show { config, .. }
        | SessionCommand::End { config, .. } => config.clone(),
    };
    let service = Service::new(&load_config(config, None)?).await?;
    let local = Principal::local();
    let shown = match command {
        SessionCommand::Open { language, ttl_s, .. } => {
            let language = language.parse::<Language>().map_err(|e| anyhow::anyhow!(e))?;
            serde_json::to_value(SessionView::from(service.open_session(&local, language, ttl_s).await?))?
        }
        SessionCommand::List { .. } => {
            let sessions: Vec<SessionView> = service.sessions(&local).await?.into_iter().map(Into::into).collect();
            serde_json::json!({ "sessions": sessions })
        }
        SessionCommand::Show { id, .. } => {
            serde_json::to_value(SessionView::from(service.session(&local, &id).await?))?
        }
        SessionCommand::End { id, .. } => {
            service.end_session(&local, &id).await?;
            eprintln!("session `{id}` ended");
            service.finish(std::time::Duration::from_secs(1)).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!("{}", serde_json::to_string_pretty(&shown)?);
    service.finish(std::time::Duration::from_secs(1)).await?;
    Ok(ExitCode::SUCCESS)
}

async fn mcp_stdio(config: Option<PathBuf>, policies: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use rmcp::ServiceExt;

    let config = load_config(config, policies)?;
    telemetry::init_logging(config.log_format);
    let traces = telemetry::trace::init(&config.telemetry)?;
    let service = Arc::new(Service::new(&config).await?);
    let key = std::env::var("SANDGATE_API_KEY").ok();
    let principal = service.authenticate(key.as_deref()).await.map_err(|_| {
        anyhow::anyhow!(
            "set SANDGATE_API_KEY to a key from the configuration: keys are configured, so callers must name one"
        )
    })?;
    service.policies().clone().watch();
    service.upstreams().settled().await;
    let server = crate::mcp::server::CodeMode::stdio(service.clone(), principal);
    let running = server.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    service.finish(std::time::Duration::from_secs(10)).await?;
    if let Some(traces) = traces {
        tokio::task::spawn_blocking(move || traces.shutdown()).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The configuration at `path`, or the defaults (with the environment's store URL)
/// when there is no such file.
fn config_or_defaults(path: &std::path::Path) -> anyhow::Result<Config> {
    if path.exists() {
        Ok(Config::load(path)?)
    } else {
        Ok(Config::default())
    }
}

async fn key_create(
    user: String,
    team: String,
    name: Option<String>,
    role: Role,
    home: Option<KeyHome>,
    path: PathBuf,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!user.is_empty() && !team.is_empty(), "--user and --team must not be empty");
    let key = generate_key();
    let name =
        name.unwrap_or_else(|| format!("{user}-{}", &key[KEY_PREFIX.len()..KEY_PREFIX.len() + 6].to_lowercase()));
    anyhow::ensure!(!name.is_empty(), "--name must not be empty");
    let config = config_or_defaults(&path)?;
    let shared = matches!(config.store, store::StoreConfig::Postgres { .. });
    let place = match home.unwrap_or(if shared { KeyHome::Store } else { KeyHome::Config }) {
        KeyHome::Store => {
            let entry = KeyEntry::operator(name.clone(), user.clone(), team.clone(), role, digest(&key));
            let store = store::open(&config.store).await?;
            crate::service::admin::create_stored_key(store.as_ref(), &config.keys, entry).await?;
            "the store; every server on it has it within seconds".to_string()
        }
        KeyHome::Config => {
            // A name the store has, or had, stays its key's.
            let store_exists = match &config.store {
                store::StoreConfig::Sqlite { path, .. } => path.exists(),
                store::StoreConfig::Postgres { .. } => true,
            };
            if store_exists {
                let store = store::open(&config.store).await?;
                if let Some(why) = crate::service::admin::key_name_taken(store.as_ref(), &config.keys, &name).await? {
                    anyhow::bail!("{why}; choose another name");
                }
            }
            record_key_in_file(&path, &name, &user, &team, role, &key)?;
            format!("{}; send SIGHUP to a running server to load it", path.display())
        }
    };
    eprintln!("key `{name}` for user `{user}` (team `{team}`, {}) recorded in {place}", role.as_str());
    eprintln!("this is the only time the key is shown:");
    println!("{key}");
    Ok(ExitCode::SUCCESS)
}

fn record_key_in_file(
    path: &std::path::Path,
    name: &str,
    user: &str,
    team: &str,
    role: Role,
    key: &str,
) -> anyhow::Result<()> {
    let before = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    if let Some(text) = &before {
        let config = Config::parse(text, path)?;
        anyhow::ensure!(!config.keys.iter().any(|k| k.name == name), "{}: a key named `{name}` exists", path.display());
    }
    let created = crate::time::rfc3339_seconds(crate::time::now_ms());
    let entry = format!(
        "\n[[keys]]\nname = {}\nuser = {}\nteam = {}\nrole = \"{}\"\nhash = \"{}\"\ncreated = \"{created}\"\n",
        toml_string(name),
        toml_string(user),
        toml_string(team),
        role.as_str(),
        hash_key(key),
    );
    let after = format!("{}{entry}", before.as_deref().unwrap_or(""));
    Config::parse(&after, path).map_err(|e| anyhow::anyhow!("the new entry would not parse: {e}"))?;
    std::fs::write(path, after).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

async fn key_list(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = config_or_defaults(&path)?;
    let stored = store::open(&config.store).await?.keys().await?;
    println!(
        "{:<24} {:<16} {:<16} {:<7} {:<7} {:<20} {:<20} OWNER",
        "NAME", "USER", "TEAM", "ROLE", "IN", "CREATED", "EXPIRES"
    );
    for key in &config.keys {
        println!(
            "{:<24} {:<16} {:<16} {:<7} {:<7} {:<20} {:<20} -",
            key.name,
            key.user,
            key.team,
            key.role.as_str(),
            "config",
            "-",
            "never"
        );
    }
    // Personal keys show whom they were issued to (the identity provider's subject).
    for key in &stored {
        let e = &key.entry;
        println!(
            "{:<24} {:<16} {:<16} {:<7} {:<7} {:<20} {:<20} {}",
            e.name,
            e.user,
            e.team,
            e.role.as_str(),
            "store",
            crate::time::rfc3339_seconds(key.created_at_ms),
            e.expires_at_ms.map_or_else(|| "never".to_string(), crate::time::rfc3339_seconds),
            e.owner.as_deref().unwrap_or("-"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn key_revoke(name: String, path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = config_or_defaults(&path)?;
    if store::open(&config.store).await?.revoke_key(&name).await? {
        eprintln!("key `{name}` revoked: every server on this store refuses it within seconds");
        return Ok(ExitCode::SUCCESS);
    }
    if config.keys.iter().any(|k| k.name == name) {
        eprintln!(
            "key `{name}` is in {}: remove its [[keys]] entry there and send SIGHUP to the server",
            path.display()
        );
    } else {
        eprintln!("no key named `{name}` in the store or in {}", path.display());
    }
    Ok(ExitCode::from(1))
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn policy_set(config: &Config) -> anyhow::Result<PolicySet> {
    let context = LoadContext { known_tiers: config.tiers.clone(), max_memory_bytes: config.sandbox.max_memory_bytes };
    Ok(crate::service::Policies::load(config.policies.clone(), context)?.current().as_ref().clone())
}

fn policy_check(dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = load_config(config, dir)?;
    let source = match &config.policies {
        PolicySource::Dir(dir) => dir.display().to_string(),
        PolicySource::Embedded => "the embedded example policies".to_string(),
    };
    match policy_set(&config) {
        Ok(set) => {
            println!("ok: {} policies in {} files ({source})", set.len(), set.files());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn policy_explain(
    principal: Principal,
    ask: Ask,
    policies: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config, policies)?;
    let set = policy_set(&config)?;
    let (query, decision) = crate::service::admin::explain(&set, &config.models, &principal, ask);
    println!("{}", if decision.allowed { decision.to_string() } else { decision.denial() });
    if let Some(approval) = &decision.approval {
        println!(
            "approvers: {} (the call waits up to {} s{})",
            approval.approvers.join(", "),
            approval.expires_after_s,
            if approval.self_approval { "; the caller may approve it" } else { "" }
        );
    }
    if let (Query::Execute, true) = (&query, decision.allowed) {
        if let Some(limits) = set.capabilities(&principal).limits {
            println!("limits: {}", serde_json::to_string(&limits)?);
        }
    }
    Ok(if decision.allowed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn usage(
    group_by: GroupBy,
    since: Option<String>,
    until: Option<String>,
    user: Option<String>,
    config: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config, None)?;
    let bound = |t: Option<String>| t.map(|t| store::usage_time(&t)).transpose().map_err(|e| anyhow::anyhow!(e));
    let query = UsageQuery { group_by, since_ms: bound(since)?, until_ms: bound(until)?, user };
    let (query_since, query_until) = (query.since_ms, query.until_ms);
    // The operator on this machine, as the local admin: everyone's usage.
    let store = store::open(&config.store).await?;
    let rows = crate::service::admin::usage(store.as_ref(), &Principal::local(), query).await?;
    let total = store::total(&rows);
    println!(
        "{:<24} {:>10} {:>16} {:>10} {:>10} {:>11} {:>12} {:>12} {:>12} {:>8} {:>12} {:>12}",
        "GROUP",
        "EXECUTIONS",
        "FUEL",
        "WALL_MS",
        "HOST_CALLS",
        "MODEL_CALLS",
        "INPUT_TOK",
        "OUTPUT_TOK",
        "COST_USD",
        "SESSIONS",
        "STATE_BYTES",
        "FILE_BYTES"
    );
    for row in rows.iter().chain(std::iter::once(&total)) {
        println!(
            "{:<24} {:>10} {:>16} {:>10} {:>10} {:>11} {:>12} {:>12} {:>12.6} {:>8} {:>12} {:>12}",
            row.group,
            row.executions,
            row.fuel,
            row.wall_ms,
            row.host_calls,
            row.model_calls,
            row.input_tokens,
            row.output_tokens,
            row.cost_usd,
            row.sessions_opened,
            row.session_state_bytes,
            row.file_bytes_written
        );
    }
    let since = query_since.unwrap_or(0);
    let approvals =
        crate::service::approvals::approval_counts(store.as_ref(), &Principal::local(), since, query_until).await?;
    if !approvals.is_empty() {
        println!();
        println!(
            "{:<36} {:<28} {:>9} {:>7} {:>8} {:>8} {:>12}",
            "APPROVALS: TOOL", "APPROVER", "APPROVED", "DENIED", "EXPIRED", "PENDING", "MEDIAN_WAIT"
        );
        for count in &approvals {
            let approver = if count.approver.is_empty() { "-" } else { count.approver.as_str() };
            let wait = count.median_wait_ms.map_or_else(|| "-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
            println!(
                "{:<36} {:<28} {:>9} {:>7} {:>8} {:>8} {:>12}",
                count.tool, approver, count.approved, count.denied, count.expired, count.pending, wait
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
