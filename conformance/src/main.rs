//! `plexus-conformance`: checks a `plexus.v1` server over the wire against
//! `docs/protocol.md`. See `docs/conformance.md`.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use plexus_conformance::jwt::{SecretEncoding, read_secret};
use plexus_conformance::runner::{self, Outcome, Progress, Settings, Silent, coverage, report};
use plexus_conformance::suite;
use plexus_conformance::tokens::TokenSource;

/// Checks a plexus.v1 server over the wire against docs/protocol.md.
///
/// Exit status: 0 when no case failed (skips are fine), 1 when a case
/// failed, 2 when the run could not start.
#[derive(Debug, Parser)]
#[command(name = "plexus-conformance", version, about, long_about = None)]
struct Cli {
    /// The server's endpoint, e.g. ws://127.0.0.1:7700/v1/ws.
    #[arg(long, required_unless_present_any = ["list", "coverage"])]
    url: Option<String>,
    /// Sign tokens with this HS256 secret file (the hub's
    /// data/dev-signing-key works as is).
    #[arg(long, value_name = "PATH", conflicts_with = "token_cmd")]
    hs256_secret_file: Option<PathBuf>,
    /// How the secret file is read.
    #[arg(long, value_enum, default_value = "auto")]
    secret_encoding: Encoding,
    /// Get tokens from a command: {sub} and {claims_json} are replaced by
    /// shell-quoted values; it prints the token.
    #[arg(long, value_name = "CMD")]
    token_cmd: Option<String>,
    /// The issuer (iss) the server requires.
    #[arg(long)]
    issuer: Option<String>,
    /// The audience (aud) the server requires.
    #[arg(long)]
    audience: Option<String>,
    /// An Origin on the server's allow-list (enables the Origin cases).
    #[arg(long, value_name = "ORIGIN")]
    origin_allowed: Option<String>,
    /// The largest frame the server accepts before auth.
    #[arg(long, default_value_t = 16384)]
    preauth_frame_size: usize,
    /// The server's auth deadline.
    #[arg(long, default_value_t = 10_000)]
    auth_timeout_ms: u64,
    /// The server's keepalive (Pong) timeout.
    #[arg(long, default_value_t = 10_000)]
    pong_timeout_ms: u64,
    /// The server's JWT clock leeway.
    #[arg(long, default_value_t = 5_000)]
    jwt_leeway_ms: u64,
    /// The server's per-request time limit.
    #[arg(long, default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// The server's outbound queue bound per connection, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    outbound_bytes: u64,
    /// Rate-limited requests in a row before the server closes with 4007.
    #[arg(long, default_value_t = 50)]
    rate_strikes: u32,
    /// The server's per-user connection limit.
    #[arg(long, default_value_t = 64)]
    max_connections_per_user: u32,
    /// How long the server lingers after its Close frame.
    #[arg(long, default_value_t = 2_000)]
    close_linger_ms: u64,
    /// A command that makes the server shut down gracefully (enables the
    /// shutdown case, which runs last).
    #[arg(long, value_name = "CMD")]
    shutdown_cmd: Option<String>,
    /// Skip time-dependent cases that would wait longer than this.
    #[arg(long, default_value_t = 15_000)]
    max_wait_ms: u64,
    /// Slack on every timing check.
    #[arg(long, default_value_t = 500)]
    tolerance_ms: u64,
    /// Cases run at once.
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    /// Upper bound on one case.
    #[arg(long, default_value_t = 40_000)]
    case_timeout_ms: u64,
    /// The golden vectors to send.
    #[arg(long, value_name = "DIR", default_value = plexus_conformance::vectors::VECTORS_DIR)]
    vectors: PathBuf,
    /// Run only cases whose id matches (repeatable, or comma-separated):
    /// `*` and `?` wildcards; a plain name selects itself and its sub-ids.
    #[arg(long, value_name = "GLOB", value_delimiter = ',')]
    filter: Vec<String>,
    /// Skip cases whose id matches (repeatable, or comma-separated).
    #[arg(long, value_name = "GLOB", value_delimiter = ',')]
    exclude: Vec<String>,
    /// Stop starting cases after the first failure.
    #[arg(long)]
    fail_fast: bool,
    /// A prefix of topics in a durable namespace of the server, e.g.
    /// `conf.durable.` for a `[[streams]]` pattern `conf.durable.>` with no
    /// retention limits (enables the durable cases, protocol.md §23).
    #[arg(long, value_name = "PREFIX")]
    durable_prefix: Option<String>,
    /// A prefix of topics in a second durable namespace that keeps at most
    /// --durable-capped-events events per topic (enables the too_old case).
    #[arg(long, value_name = "PREFIX")]
    durable_capped_prefix: Option<String>,
    /// The capped namespace's max-events.
    #[arg(long, default_value_t = 4)]
    durable_capped_events: u64,
    /// The server serves record sync (enables the sync cases, protocol.md
    /// §24).
    #[arg(long)]
    sync: bool,
    /// The server's max_records per sync space (enables the quota case;
    /// at most 500).
    #[arg(long, value_name = "N")]
    sync_max_records: Option<u64>,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
    /// List the spec sections the cases cover, and those without a case.
    #[arg(long)]
    coverage: bool,
    /// Markdown for --list and --coverage.
    #[arg(long)]
    markdown: bool,
    /// Write a JSON report.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write a JUnit XML report.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Colour the table.
    #[arg(long, value_enum, default_value = "auto")]
    color: Color,
    /// Print only failures and the summary.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Encoding {
    Auto,
    Raw,
    Base64url,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cases = suite::all(&cli.vectors);
    let cases = runner::select(cases, &cli.filter);
    let cases: Vec<_> = cases
        .into_iter()
        .filter(|c| !cli.exclude.iter().any(|p| runner::glob::matches(p, &c.id)))
        .collect();
    if cli.list {
        print!("{}", report::list(&cases, cli.markdown));
        return ExitCode::SUCCESS;
    }
    if cli.coverage {
        print!("{}", coverage::report(&cases, cli.markdown));
        return ExitCode::SUCCESS;
    }
    if cases.is_empty() {
        eprintln!("plexus-conformance: no case matches the filter");
        return ExitCode::from(2);
    }
    let tokens = match (&cli.hs256_secret_file, &cli.token_cmd) {
        (Some(path), _) => {
            let enc = match cli.secret_encoding {
                Encoding::Auto => SecretEncoding::Auto,
                Encoding::Raw => SecretEncoding::Raw,
                Encoding::Base64url => SecretEncoding::Base64Url,
            };
            match read_secret(path, enc) {
                Ok(key) => TokenSource::Hs256 { key },
                Err(e) => {
                    eprintln!("plexus-conformance: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        (None, Some(cmd)) => TokenSource::Command {
            template: cmd.clone(),
        },
        (None, None) => {
            eprintln!("plexus-conformance: give --hs256-secret-file PATH or --token-cmd CMD");
            return ExitCode::from(2);
        }
    };
    let url = cli.url.clone().unwrap_or_default();
    let mut s = Settings::new(url.clone(), tokens);
    s.issuer = cli.issuer.clone();
    s.audience = cli.audience.clone();
    s.origin_allowed = cli.origin_allowed.clone();
    s.preauth_frame_size = cli.preauth_frame_size;
    s.auth_timeout = Duration::from_millis(cli.auth_timeout_ms);
    s.pong_timeout = Duration::from_millis(cli.pong_timeout_ms);
    s.jwt_leeway = Duration::from_millis(cli.jwt_leeway_ms);
    s.request_timeout = Duration::from_millis(cli.request_timeout_ms);
    s.outbound_bytes = cli.outbound_bytes;
    s.rate_strikes = cli.rate_strikes;
    s.max_connections_per_user = cli.max_connections_per_user;
    s.close_linger = Duration::from_millis(cli.close_linger_ms);
    s.shutdown_cmd = cli.shutdown_cmd.clone();
    s.max_wait = Duration::from_millis(cli.max_wait_ms);
    s.tolerance = Duration::from_millis(cli.tolerance_ms);
    s.jobs = cli.jobs.max(1);
    s.case_timeout =
        Duration::from_millis(cli.case_timeout_ms).max(s.max_wait + Duration::from_secs(10));
    s.vectors_dir = cli.vectors.clone();
    s.fail_fast = cli.fail_fast;
    s.durable_prefix = cli.durable_prefix.clone();
    s.durable_capped_prefix = cli.durable_capped_prefix.clone();
    s.durable_capped_events = cli.durable_capped_events.max(1);
    s.sync = cli.sync;
    s.sync_max_records = cli.sync_max_records;

    let tty = std::io::stdout().is_terminal();
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => tty && std::env::var_os("NO_COLOR").is_none(),
    };
    let line = std::io::stderr()
        .is_terminal()
        .then(|| Arc::new(report::Line::new(color)));
    let progress: Arc<dyn Progress> = match &line {
        Some(l) => l.clone(),
        None => Arc::new(Silent),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("plexus-conformance: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let results = match rt.block_on(runner::run(s, cases, progress)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("plexus-conformance: {e}");
            return ExitCode::from(2);
        }
    };
    let elapsed = started.elapsed();
    if let Some(l) = &line {
        l.clear();
    }
    let shown: Vec<_> = if cli.quiet {
        results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
            .cloned()
            .collect()
    } else {
        results.clone()
    };
    let mut table = report::table(&shown, elapsed, color);
    if cli.quiet {
        // The summary counts every case, not only those shown.
        let all = report::table(&results, elapsed, color);
        if let Some(last) = all.lines().last() {
            table = table
                .lines()
                .take(table.lines().count().saturating_sub(1))
                .collect::<Vec<_>>()
                .join("\n");
            table.push('\n');
            table.push_str(last);
            table.push('\n');
        }
    }
    print!("{table}");
    let mut code = if results
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Fail(_)))
    {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    if let Some(p) = &cli.json
        && let Err(e) = std::fs::write(p, report::json(&results, &url, elapsed))
    {
        eprintln!("plexus-conformance: writing {}: {e}", p.display());
        code = ExitCode::from(2);
    }
    if let Some(p) = &cli.junit
        && let Err(e) = std::fs::write(p, report::junit(&results, elapsed))
    {
        eprintln!("plexus-conformance: writing {}: {e}", p.display());
        code = ExitCode::from(2);
    }
    code
}
