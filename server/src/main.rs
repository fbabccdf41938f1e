//! The `plexus` binary: `plexus serve` (the default), `plexus token`,
//! `plexus config`, `plexus migrate`, `plexus streams`, and the client
//! commands `plexus pub`, `sub`, `call`, `history`, `sync pull`,
//! `rpc call` and `rpc serve` (module `cli`, docs/cli.md).
#![forbid(unsafe_code)]

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use plexus_server::auth::{Authenticator, KeySource, MintRequest, mint_hs};
use plexus_server::config::{self, Config, Dur, Settings};
use plexus_server::{KeyOrigin, Server, ServerOptions};

/// jemalloc rather than glibc's allocator: a routed call allocates on one
/// worker and frees on another, and glibc's per-arena locks made that the
/// hub's largest cost under load (decision H9, docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        /// A record-sync space pattern the user may pull from (repeatable).
        #[arg(long = "sync-read")]
        sync_read: Vec<String>,
        /// A record-sync space pattern the user may push to and pull from
        /// (repeatable).
        #[arg(long = "sync-write")]
        sync_write: Vec<String>,
        /// A procedure pattern the user may register as a callee (repeatable).
        #[arg(long = "rpc-register")]
        rpc_register: Vec<String>,
        /// A procedure pattern the user may call (repeatable).
        #[arg(long = "rpc-call")]
        rpc_call: Vec<String>,
        /// Allow `rpc.list`.
        #[arg(long = "rpc-admin")]
        rpc_admin: bool,
        /// Lifetime, e.g. `1h`, `30m`.
        #[arg(long, default_value = "1h")]
        ttl: Dur,
    },
    /// Print the effective configuration, secrets masked (the streams
    /// settings included).
    Config,
    /// Apply the database migrations and exit.
    Migrate,
    /// List the durable topics in the database: events, bytes, first and
    /// last offsets, epoch.
    Streams,
    #[command(flatten)]
    Client(cli::ClientCommand),
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
    let config = Config::resolve_file(cli.settings, file);
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
            sync_read,
            sync_write,
            rpc_register,
            rpc_call,
            rpc_admin,
            ttl,
        } => token(
            &config,
            MintRequest {
                sub,
                subscribe: sub_allow,
                publish: pub_allow,
                presence,
                sync_read,
                sync_write,
                rpc_register,
                rpc_call,
                rpc_admin,
                ttl: ttl.0,
                ..MintRequest::default()
            },
        ),
        Command::Serve => serve(config),
        Command::Migrate => with_runtime(migrate(config)),
        Command::Streams => with_runtime(list_streams(config)),
        Command::Client(command) => cli::run(command, &config),
    }
}

fn with_runtime(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(r) => r.block_on(f),
        Err(e) => {
            eprintln!("plexus: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: Config) -> ExitCode {
    let mut options = config.store_options();
    options.migrate = true;
    match plexus_server::storage::migrate(&options).await {
        Ok(applied) if applied.is_empty() => {
            println!("{}: up to date", config.database_display());
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            let v: Vec<String> = applied.iter().map(i64::to_string).collect();
            println!(
                "{}: applied migrations {}",
                config.database_display(),
                v.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("plexus: {}: {e}", config.database_display());
            ExitCode::FAILURE
        }
    }
}

/// Topics `plexus streams` reads per query.
const LIST_PAGE: u32 = 1000;

async fn list_streams(config: Config) -> ExitCode {
    let mut options = config.store_options();
    // A listing never changes the database: a missing file is reported,
    // not created, and migrations are not applied.
    options.migrate = false;
    if let Some(path) = options.sqlite_path()
        && !path.exists()
    {
        println!("no database at {} (no durable topic yet)", path.display());
        return ExitCode::SUCCESS;
    }
    let store = match plexus_server::storage::open(&options).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("plexus: {}: {e}", config.database_display());
            return ExitCode::FAILURE;
        }
    };
    let code = match print_streams(&*store).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plexus: {}: {e}", config.database_display());
            ExitCode::FAILURE
        }
    };
    store.close().await;
    code
}

async fn print_streams(
    store: &dyn plexus_server::storage::Store,
) -> Result<(), plexus_server::storage::StorageError> {
    let namespaces = store.namespaces().await?;
    println!("namespaces: {}", namespaces.len());
    for n in &namespaces {
        println!(
            "  {}  epoch {}  last position {}",
            n.pattern, n.epoch, n.last_position
        );
    }
    println!(
        "{:<40} {:>12} {:>14} {:>12} {:>12}  epoch",
        "topic", "events", "bytes", "first", "last"
    );
    let mut after: Option<String> = None;
    let mut topics = 0u64;
    loop {
        let rows = store.list_topics(after.as_deref(), LIST_PAGE).await?;
        let full = rows.len() >= LIST_PAGE as usize;
        for t in &rows {
            topics += 1;
            println!(
                "{:<40} {:>12} {:>14} {:>12} {:>12}  {}",
                t.name,
                t.count(),
                t.bytes,
                t.first_offset,
                t.last_offset,
                t.epoch
            );
        }
        match rows.last() {
            Some(t) if full => after = Some(t.name.to_string()),
            _ => break,
        }
    }
    println!("{topics} durable topics");
    Ok(())
}

fn token(config: &Config, mut req: MintRequest) -> ExitCode {
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
    req.issuer = settings.issuer;
    req.audience = settings.audience;
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
        let durable = config.streams.streams.len();
        if durable == 0 && !config.sync.enabled {
            println!(
                "durable streams: none configured (add [[streams]] to the config file; database {} not opened)",
                config.database_display()
            );
        } else if durable == 0 {
            println!("durable streams: none configured (add [[streams]] to the config file)");
        } else {
            println!(
                "durable streams: {durable} namespace{} configured, database {}",
                if durable == 1 { "" } else { "s" },
                config.database_display()
            );
        }
        if config.sync.enabled {
            println!(
                "record sync: on (tokens with sync_read/sync_write), database {}",
                config.database_display()
            );
        } else {
            println!("record sync: off ([sync] enabled = false)");
        }
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

/// Resolves on Ctrl-C or SIGTERM (`serve`, and the client commands that
/// run until stopped).
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
