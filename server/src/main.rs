//! The `plexus` binary: `plexus serve` (the default), `plexus token`,
//! `plexus config`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use plexus_server::auth::{Authenticator, KeySource, MintRequest, mint_hs};
use plexus_server::config::{self, Config, Dur, Settings};
use plexus_server::{KeyOrigin, Server, ServerOptions};

/// Plexus: a realtime hub speaking plexus.v1 over WebSocket.
#[derive(Debug, Parser)]
#[command(name = "plexus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML file with settings (the same names as the flags, kebab-case).
    #[arg(long, env = "PLEXUS_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub (the default).
    Serve,
    /// Mint a token signed with the configured HMAC key (or the development key).
    Token {
        /// The user (`sub` claim).
        #[arg(long)]
        sub: String,
        /// A topic pattern the user may subscribe to (repeatable).
        #[arg(long = "sub-allow")]
        sub_allow: Vec<String>,
        /// A topic pattern the user may publish on (repeatable).
        #[arg(long = "pub-allow")]
        pub_allow: Vec<String>,
        /// Allow `presence.set`.
        #[arg(long)]
        presence: bool,
        /// Lifetime, e.g. `1h`, `30m`.
        #[arg(long, default_value = "1h")]
        ttl: Dur,
    },
    /// Print the effective configuration, secrets masked.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file = match cli.config.as_deref().map(config::read_file).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            eprintln!("plexus: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = Config::resolve(cli.settings, file);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", config.to_masked_toml());
            ExitCode::SUCCESS
        }
        Command::Token {
            sub,
            sub_allow,
            pub_allow,
            presence,
            ttl,
        } => token(&config, sub, sub_allow, pub_allow, presence, ttl.0),
        Command::Serve => serve(config),
    }
}

fn token(
    config: &Config,
    sub: String,
    subscribe: Vec<String>,
    publish: Vec<String>,
    presence: bool,
    ttl: Duration,
) -> ExitCode {
    let (settings, _) = match plexus_server::auth_settings(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("plexus: {e}");
            return ExitCode::FAILURE;
        }
    };
    let KeySource::Hmac { secret, alg } = settings.key else {
        eprintln!(
            "plexus: `plexus token` signs with an HMAC key (--jwt-secret or the development key); the configured key is a public key or a JWKS URL"
        );
        return ExitCode::FAILURE;
    };
    let req = MintRequest {
        sub,
        subscribe,
        publish,
        presence,
        ttl,
        issuer: settings.issuer,
        audience: settings.audience,
    };
    match mint_hs(&secret, alg, &req) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("plexus: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> ExitCode {
    plexus_server::logging::init();
    // Each connection is a file descriptor: use all the kernel allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("plexus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (settings, origin) = match plexus_server::auth_settings(&config) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("plexus: {e}");
                return ExitCode::FAILURE;
            }
        };
        let auth = match Authenticator::new(settings) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("plexus: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The binary owns the process-wide metrics recorder (the library
        // never installs one).
        let mut options = ServerOptions::default();
        match plexus_server::metrics::install_recorder() {
            Ok(handle) => options = options.with_metrics(handle),
            Err(e) => tracing::warn!(error = %e, "metrics disabled: cannot install the recorder"),
        }
        let server = match Server::start_with(config.clone(), auth, options).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("plexus: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = server.local_addr();
        tracing::info!(%addr, "plexus listening");
        println!("plexus {} listening on ws://{addr}/v1/ws (subprotocol plexus.v1)", env!("CARGO_PKG_VERSION"));
        if let KeyOrigin::DevKey { created } = origin {
            let what = if created { "generated a" } else { "using the" };
            println!(
                "{what} development signing key in {} (HS256). Mint a token with:\n  TOKEN=$(cargo run -q --release -p plexus-server -- token --data-dir {} --sub alice --sub-allow 'demo.>' --pub-allow 'demo.>' --presence --ttl 1h)\nthen run an example, e.g. `cargo run -p plexus-client --example chat -- --token \"$TOKEN\"` (see docs/sdk.md and client-sdk/examples/).",
                config.data_dir.display(),
                config.data_dir.display()
            );
        }
        wait_for_signal().await;
        tracing::info!("shutting down: draining connections");
        let left = server.shutdown().await;
        if left > 0 {
            tracing::warn!(left, "connections still open at the drain deadline");
        }
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
