//! The conformance runner: named cases, each citing the section of
//! `docs/protocol.md` it checks, run against a live server over the wire.
//!
//! [`suite::all`](crate::suite::all) lists the cases; [`run`] runs a
//! selection of them with a [`Settings`] and returns their results;
//! [`report`] renders results as a table, JSON or JUnit XML; [`coverage`]
//! maps cases to spec sections.

pub mod coverage;
pub mod ctx;
pub mod glob;
pub mod report;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;

pub use ctx::{Ctx, Env, Limits};

use crate::check::{CaseError, CaseResult};
use crate::tokens::TokenSource;

/// What the runner knows about the server beyond what `auth` announces:
/// its unannounced settings (with the defaults documented in
/// `docs/protocol.md` Appendix B) and how to reach it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `ws://` or `wss://` URL of the endpoint.
    pub url: String,
    /// Where tokens come from.
    pub tokens: TokenSource,
    /// The `iss` the server requires, if any.
    pub issuer: Option<String>,
    /// The `aud` the server requires, if any.
    pub audience: Option<String>,
    /// An `Origin` on the server's allow-list (enables the Origin cases).
    pub origin_allowed: Option<String>,
    /// The largest frame accepted before auth (§4.6, P12; 16384).
    pub preauth_frame_size: usize,
    /// The auth deadline (§9.2; default 10 s).
    pub auth_timeout: Duration,
    /// The keepalive timeout (§16; default 10 s).
    pub pong_timeout: Duration,
    /// The JWT clock leeway (§9.3; reference default 5 s).
    pub jwt_leeway: Duration,
    /// The per-request time limit (§14.2; default 30 s).
    pub request_timeout: Duration,
    /// The outbound queue bound (§18; default 4 MiB).
    pub outbound_bytes: u64,
    /// Consecutive rate-limited requests before 4007 (§17; default 50).
    pub rate_strikes: u32,
    /// Per-user connection limit (§9.7; default 64).
    pub max_connections_per_user: u32,
    /// How long the server lingers after its Close frame (P11; default 2 s).
    pub close_linger: Duration,
    /// A shell command that makes the server shut down gracefully (§19).
    pub shutdown_cmd: Option<String>,
    /// Time-dependent cases that would wait longer than this are skipped.
    pub max_wait: Duration,
    /// Slack allowed on every timing check.
    pub tolerance: Duration,
    /// Cases run at once.
    pub jobs: usize,
    /// Upper bound on one case.
    pub case_timeout: Duration,
    /// The golden vectors sent over the wire.
    pub vectors_dir: PathBuf,
    /// Stop starting cases after the first failure.
    pub fail_fast: bool,
    /// A prefix of topics in a durable namespace (§23.1), e.g. `conf.durable.`
    /// for a namespace `conf.durable.>`; without it the `durable` cases skip.
    pub durable_prefix: Option<String>,
    /// A prefix of topics in a durable namespace whose retention keeps at most
    /// [`Settings::durable_capped_events`] events per topic (the `too_old`
    /// case).
    pub durable_capped_prefix: Option<String>,
    /// `max-events` of the capped namespace.
    pub durable_capped_events: u64,
    /// The server serves record sync (§24); without it the `sync` cases
    /// skip.
    pub sync: bool,
    /// The server's `max_records` per sync space (the quota case; not
    /// announced, §24.5).
    pub sync_max_records: Option<u64>,
}

impl Settings {
    /// Settings with the documented defaults for `url` and `tokens`.
    pub fn new(url: impl Into<String>, tokens: TokenSource) -> Settings {
        Settings {
            url: url.into(),
            tokens,
            issuer: None,
            audience: None,
            origin_allowed: None,
            preauth_frame_size: 16384,
            auth_timeout: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(10),
            jwt_leeway: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            outbound_bytes: 4 * 1024 * 1024,
            rate_strikes: 50,
            max_connections_per_user: 64,
            close_linger: Duration::from_secs(2),
            shutdown_cmd: None,
            max_wait: Duration::from_secs(15),
            tolerance: Duration::from_millis(500),
            jobs: 8,
            case_timeout: Duration::from_secs(40),
            vectors_dir: PathBuf::from(crate::vectors::VECTORS_DIR),
            fail_fast: false,
            durable_prefix: None,
            durable_capped_prefix: None,
            durable_capped_events: 4,
            sync: false,
            sync_max_records: None,
        }
    }
}

/// The body of a case.
pub type CaseFn = Arc<dyn Fn(Ctx) -> BoxFuture<'static, CaseResult> + Send + Sync>;

/// One named case.
#[derive(Clone)]
pub struct Case {
    /// Unique id, `group.name`.
    pub id: String,
    /// The part of the id before the first dot.
    pub group: String,
    /// The sections of `docs/protocol.md` it checks, e.g. `9.2` or
    /// `9.2, 15.1`; decisions are cited as `P11`.
    pub section: String,
    /// What it checks, in one sentence.
    pub title: String,
    /// Takes seconds (timers): started first.
    pub slow: bool,
    /// Affects the whole server (shutdown): runs alone, last.
    pub exclusive: bool,
    /// The body.
    pub run: CaseFn,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("id", &self.id)
            .field("section", &self.section)
            .finish_non_exhaustive()
    }
}

impl Case {
    /// A case; `id` is `group.name`.
    pub fn new<F, Fut>(id: &str, section: &str, title: &str, f: F) -> Case
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CaseResult> + Send + 'static,
    {
        Case {
            id: id.to_owned(),
            group: id.split('.').next().unwrap_or(id).to_owned(),
            section: section.to_owned(),
            title: title.to_owned(),
            slow: false,
            exclusive: false,
            run: Arc::new(move |ctx| Box::pin(f(ctx))),
        }
    }

    /// Marks the case as taking seconds.
    pub fn slow(mut self) -> Case {
        self.slow = true;
        self
    }

    /// Marks the case as affecting the whole server.
    pub fn exclusive(mut self) -> Case {
        self.exclusive = true;
        self
    }

    /// The sections cited, each without `§`.
    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.section
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Pass,
    /// It failed; why.
    Fail(String),
    /// It did not run; why.
    Skip(String),
}

impl Outcome {
    /// `pass`, `fail` or `skip`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail(_) => "fail",
            Outcome::Skip(_) => "skip",
        }
    }

    /// The failure or skip text.
    pub fn detail(&self) -> &str {
        match self {
            Outcome::Pass => "",
            Outcome::Fail(s) | Outcome::Skip(s) => s,
        }
    }
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// The case id.
    pub id: String,
    /// Its group.
    pub group: String,
    /// The sections it cites.
    pub section: String,
    /// What it checks.
    pub title: String,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// Called as cases start and finish (the live progress line).
pub trait Progress: Send + Sync {
    /// A case finished; `done` of `total` are finished.
    fn finished(&self, report: &CaseReport, done: usize, total: usize);
    /// Cases now running.
    fn running(&self, _ids: &[String]) {}
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn finished(&self, _: &CaseReport, _: usize, _: usize) {}
}

/// Why the run could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The URL is not a WebSocket URL.
    #[error("{0}")]
    Url(String),
    /// The first connection (handshake and `auth`) failed, so no case can
    /// run.
    #[error("cannot authenticate a first connection to {url}: {why}")]
    Probe {
        /// The URL.
        url: String,
        /// What went wrong.
        why: String,
    },
}

/// Selects the cases whose id matches any of `patterns` (all if empty).
pub fn select(cases: Vec<Case>, patterns: &[String]) -> Vec<Case> {
    if patterns.is_empty() {
        return cases;
    }
    cases
        .into_iter()
        .filter(|c| patterns.iter().any(|p| glob::matches(p, &c.id)))
        .collect()
}

/// Runs `cases` against the server in `settings`; results in the order of
/// `cases`.
pub async fn run(
    settings: Settings,
    cases: Vec<Case>,
    progress: Arc<dyn Progress>,
) -> Result<Vec<CaseReport>, RunError> {
    let env = Arc::new(Env::probe(settings).await?);
    let total = cases.len();
    let jobs = env.settings.jobs.max(1);
    let limit = Arc::new(Semaphore::new(jobs));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let running = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));

    // Slow cases first, so their timers overlap the quick ones; exclusive
    // ones last, alone.
    let mut order: Vec<usize> = (0..total).collect();
    order.sort_by_key(|&i| (cases[i].exclusive, !cases[i].slow));
    let mut results: Vec<Option<CaseReport>> = vec![None; total];
    let mut tasks = tokio::task::JoinSet::new();
    for i in order {
        let case = cases[i].clone();
        if case.exclusive {
            // Wait for everything else to finish.
            while let Some(r) = tasks.join_next().await {
                if let Ok((j, rep)) = r {
                    results[j] = Some(rep);
                }
            }
        }
        let permit = match limit.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => break,
        };
        let (env, stop, done, progress, running) = (
            env.clone(),
            stop.clone(),
            done.clone(),
            progress.clone(),
            running.clone(),
        );
        let exclusive = case.exclusive;
        tasks.spawn(async move {
            let rep = if stop.load(Ordering::SeqCst) {
                report_of(
                    &case,
                    Outcome::Skip("--fail-fast: an earlier case failed".into()),
                    Duration::ZERO,
                )
            } else {
                lock(&running).push(case.id.clone());
                progress.running(&lock(&running));
                let rep = run_one(&env, &case).await;
                lock(&running).retain(|id| *id != case.id);
                rep
            };
            if matches!(rep.outcome, Outcome::Fail(_)) && env.settings.fail_fast {
                stop.store(true, Ordering::SeqCst);
            }
            let n = done.fetch_add(1, Ordering::SeqCst) + 1;
            progress.finished(&rep, n, total);
            drop(permit);
            (i, rep)
        });
        if exclusive {
            while let Some(r) = tasks.join_next().await {
                if let Ok((j, rep)) = r {
                    results[j] = Some(rep);
                }
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok((j, rep)) = r {
            results[j] = Some(rep);
        }
    }
    Ok(results
        .into_iter()
        .zip(cases.iter())
        .map(|(r, c)| {
            r.unwrap_or_else(|| {
                report_of(
                    c,
                    Outcome::Fail("the case's task was lost (panic)".into()),
                    Duration::ZERO,
                )
            })
        })
        .collect())
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn report_of(case: &Case, outcome: Outcome, elapsed: Duration) -> CaseReport {
    CaseReport {
        id: case.id.clone(),
        group: case.group.clone(),
        section: case.section.clone(),
        title: case.title.clone(),
        outcome,
        elapsed,
    }
}

async fn run_one(env: &Arc<Env>, case: &Case) -> CaseReport {
    let ctx = Ctx::new(env.clone(), &case.id);
    let started = Instant::now();
    let body = (case.run)(ctx);
    // A panic in a case is a runner bug; report it as a failure of that
    // case instead of losing the run.
    let handle = tokio::spawn(body);
    let abort = handle.abort_handle();
    let outcome = match tokio::time::timeout(env.settings.case_timeout, handle).await {
        Ok(Ok(Ok(()))) => Outcome::Pass,
        Ok(Ok(Err(CaseError::Fail(s)))) => Outcome::Fail(s),
        Ok(Ok(Err(CaseError::Skip(s)))) => Outcome::Skip(s),
        Ok(Err(e)) => Outcome::Fail(format!("the case panicked (a runner bug): {e}")),
        Err(_) => {
            abort.abort();
            Outcome::Fail(format!(
                "the case did not finish within {:?}",
                env.settings.case_timeout
            ))
        }
    };
    report_of(case, outcome, started.elapsed())
}
