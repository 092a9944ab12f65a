//! The command line: `sandgate serve` and `sandgate exec`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::auth::Principal;
use crate::config::Config;
use crate::sandbox::{ExecuteRequest, LimitsRequest};
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
    /// Serve the HTTP API (embedded defaults: loopback, default limits).
    Serve {
        /// Address to listen on; overrides `listen` in the config file.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Configuration file (sandgate.toml); without it the embedded defaults apply.
        #[arg(long, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Log format; overrides `log_format` in the config file.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Run one file of JavaScript (`-` for stdin) and print the outcome as JSON.
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
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sandgate: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve {
            listen,
            config,
            log_format,
        } => runtime.block_on(serve(listen, config, log_format)),
        Command::Exec {
            file,
            input,
            limits,
            config,
        } => runtime.block_on(exec(file, input, limits, config)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sandgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    })
}

async fn serve(
    listen: Option<SocketAddr>,
    config: Option<PathBuf>,
    log_format: Option<LogFormat>,
) -> anyhow::Result<ExitCode> {
    let mut config = load_config(config)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(format) = log_format {
        config.log_format = format;
    }
    telemetry::init_logging(config.log_format);
    telemetry::prometheus();
    if !config.listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {}: sandgate has no API keys yet, so it serves loopback addresses only",
            config.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let server = tokio::task::spawn_blocking(move || crate::Server::new(config)).await??;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("sandgate listening on http://{addr}");
    server.serve(listener, crate::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn exec(
    file: PathBuf,
    input: Option<String>,
    limits: Option<String>,
    config: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    telemetry::init_logging(LogFormat::Text);
    let code = if file.as_os_str() == "-" {
        let mut code = String::new();
        std::io::stdin().read_to_string(&mut code)?;
        code
    } else {
        std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
    };
    let input = input
        .map(|text| {
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--input is not JSON: {e}"))
        })
        .transpose()?;
    let limits: LimitsRequest = match limits {
        Some(text) => serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--limits: {e}"))?,
        None => LimitsRequest::default(),
    };
    let request = ExecuteRequest {
        code,
        input,
        limits,
    };
    let job = request.into_job(&config.limits, Arc::new(Principal::local()))?;
    let sandbox = tokio::task::spawn_blocking(move || crate::build_sandbox(&config)).await??;
    let outcome = sandbox.execute(job, None).await?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
