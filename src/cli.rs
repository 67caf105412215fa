//! The command line: `ghgate serve` and `ghgate check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use url::Url;

use crate::config::{Overrides, Settings};

/// A caching, token-brokering gateway in front of the GitHub REST API.
#[derive(Debug, Parser)]
#[command(name = "ghgate", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Validate the configuration and exit (non-zero, naming the bad key, when invalid).
    CheckConfig(ConfigArgs),
    /// Print a new broker client key and the `key_sha256` to put in `[[clients]]`.
    GenClientKey,
    /// Exit 0 when URL answers 2xx within 2 s (a health check for images without curl).
    Probe {
        /// For example http://127.0.0.1:9090/readyz
        url: Url,
    },
}

/// Where settings come from.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML settings file; `GHGATE_<SECTION>__<KEY>` environment variables override it.
    #[arg(long, short, env = "GHGATE_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `serve` flags; they win over the file and the environment.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Proxy listener address (server.listen).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Admin listener address (server.admin_listen).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Upstream API base URL (upstream.url), e.g. https://ghe.example.com/api/v3.
    #[arg(long)]
    pub upstream: Option<Url>,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe { url } => probe(url),
        Command::GenClientKey => {
            let (key, hash) = crate::app_auth::generate_client_key();
            println!("client key (give it to the client; it is not stored): {key}");
            println!("key_sha256 (put it in [[clients]]):                  {hash}");
            ExitCode::SUCCESS
        }
        Command::CheckConfig(args) => match Settings::load(args.config.as_deref(), &Overrides::default())
            .and_then(|settings| crate::server::check_settings(&settings))
        {
            Ok(_) => {
                println!("configuration is valid");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Serve(args) => {
            let overrides =
                Overrides { listen: args.listen, admin_listen: args.admin_listen, upstream: args.upstream };
            let source = crate::config::SettingsSource { file: args.config.config.clone(), overrides };
            let loaded = source.load();
            let settings = match loaded.and_then(|s| crate::server::check_settings(&s).map(|()| s)) {
                Ok(s) => s,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = crate::telemetry::init_logging(&settings.log) {
                eprintln!("invalid setting {e}");
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async move {
                let running = match crate::server::start_from(settings, source).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("{e}");
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                };
                running.serve_until_signalled().await;
                tracing::info!("stopped");
                ExitCode::SUCCESS
            })
        }
    }
}

fn probe(url: Url) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let client =
            match reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_secs(2)).build() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
        match client.get(url.clone()).send().await {
            Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
            Ok(r) => {
                eprintln!("{url} answered {}", r.status());
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("{url}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
