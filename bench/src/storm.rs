//! The reconnect storm, one harness for every target: N clients connect and
//! subscribe, all drop their connections at once (as when a server restarts
//! or drains), and all reconnect at once. Each client's time is measured
//! from the common start of the reconnect to the confirmation of its
//! subscription; a failed attempt is retried with the same backoff for
//! every target.
//!
//! The target supplies one function, "open, authenticate and subscribe
//! client i", which is all that differs between Plexus and NATS.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::scenario::{StormConfig, StormResult};
use crate::stats::Latency;

/// The longest one connect-and-subscribe attempt may take before it counts
/// as failed and is retried (the NATS driver's own handshake bound).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The first retry's backoff; it doubles per attempt up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest backoff between two attempts of one client.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Open files the load generator keeps for itself beyond the clients'
/// sockets.
const SPARE_FILES: u64 = 256;

/// Why a storm cannot run.
#[derive(Debug, thiserror::Error)]
pub enum StormError {
    /// More clients than the open-file limit allows.
    #[error(
        "{clients} clients need more open files than the limit of {limit} per process \
         (the generator and each server are separate processes, each under the same cap); \
         use --clients {max} or fewer, or raise the hard limit"
    )]
    TooManyClients {
        /// Clients asked for.
        clients: usize,
        /// The soft open-file limit.
        limit: u64,
        /// Most clients that fit.
        max: u64,
    },
}

/// Checks that `clients` sockets fit this process's open-file limit (the
/// servers run under the same hard limit and raise their soft limit to it).
pub fn check_file_limit(clients: usize) -> Result<(), StormError> {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let max = limit.saturating_sub(SPARE_FILES);
    if clients as u64 > max {
        return Err(StormError::TooManyClients {
            clients,
            limit,
            max,
        });
    }
    Ok(())
}

/// The backoff before attempt `attempt + 1` of client `i`: exponential
/// from [`FIRST_BACKOFF`], capped at [`MAX_BACKOFF`], with a jitter of up
/// to half of it that depends only on `i` (the same for every target).
pub fn backoff(i: usize, attempt: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let spread = (i as u64).wrapping_mul(2_654_435_761) % 1000;
    base.mul_f64(0.5 + spread as f64 / 2000.0)
}

/// What one reconnecting client did.
struct Outcome<C> {
    /// From the storm's start to its subscription's confirmation.
    took: Option<Duration>,
    /// Failed attempts.
    retries: u32,
    /// The connection, held until every client is done.
    conn: Option<C>,
}

/// Runs the storm. `connect(i)` opens client `i`, authenticates it and
/// subscribes it, returning once the subscription is confirmed.
pub async fn run<C, E, F, Fut>(cfg: &StormConfig, connect: F) -> StormResult
where
    C: Send + 'static,
    E: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<C, E>> + Send + 'static,
{
    let connect = Arc::new(connect);

    // 1. Everyone connected and subscribed (not measured beyond its rate).
    let started = Instant::now();
    let first: Vec<C> = futures_util::stream::iter(0..cfg.clients)
        .map(|i| {
            let connect = connect.clone();
            async move { tokio::time::timeout(ATTEMPT_TIMEOUT, connect(i)).await }
        })
        .buffer_unordered(cfg.concurrency.max(1))
        .filter_map(|r| async move { r.ok().and_then(Result::ok) })
        .collect()
        .await;
    let connected = first.len();
    let first_secs = started.elapsed().as_secs_f64();

    // 2. All gone at once, then a pause for the server to see it.
    drop(first);
    tokio::time::sleep(cfg.settle).await;

    // 3. All back at once.
    let t0 = Instant::now();
    let give_up = t0 + cfg.deadline;
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|i| {
            let connect = connect.clone();
            tokio::spawn(async move {
                let mut retries = 0u32;
                loop {
                    if let Ok(Ok(conn)) = tokio::time::timeout(ATTEMPT_TIMEOUT, connect(i)).await {
                        return Outcome {
                            took: Some(t0.elapsed()),
                            retries,
                            conn: Some(conn),
                        };
                    }
                    retries += 1;
                    let next = Instant::now() + backoff(i, retries);
                    if next >= give_up {
                        return Outcome {
                            took: None,
                            retries,
                            conn: None,
                        };
                    }
                    tokio::time::sleep_until(next).await;
                }
            })
        })
        .collect();
    let mut latency = Latency::new();
    let mut held = Vec::with_capacity(cfg.clients);
    let (mut retries, mut failed, mut last) = (0u64, 0usize, Duration::ZERO);
    for t in tasks {
        match t.await {
            Ok(o) => {
                retries += u64::from(o.retries);
                match o.took {
                    Some(took) => {
                        latency.record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                        last = last.max(took);
                    }
                    None => failed += 1,
                }
                held.extend(o.conn);
            }
            Err(_) => failed += 1,
        }
    }
    let reconnected = held.len();
    drop(held);
    StormResult {
        clients: cfg.clients,
        connected,
        first_connects_per_sec: connected as f64 / first_secs.max(1e-9),
        reconnected,
        failed,
        retries,
        total_ms: last.as_secs_f64() * 1e3,
        per_client: latency.summary(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_per_client() {
        for i in [0, 1, 7, 9_999] {
            for attempt in 1..20 {
                let b = backoff(i, attempt);
                assert!(b <= MAX_BACKOFF, "{b:?}");
                assert!(b >= FIRST_BACKOFF / 2, "{b:?}");
            }
            assert!(backoff(i, 2) >= backoff(i, 1));
        }
        assert_ne!(backoff(1, 1), backoff(2, 1));
    }

    #[test]
    fn more_clients_than_files_is_refused() {
        assert!(check_file_limit(10).is_ok());
        assert!(matches!(
            check_file_limit(usize::MAX >> 2),
            Err(StormError::TooManyClients { .. })
        ));
    }

    // The paused clock runs the backoff without waiting for it.
    #[tokio::test(start_paused = true)]
    async fn every_client_reconnects_and_retries_are_counted() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let cfg = StormConfig {
            clients: 20,
            concurrency: 4,
            topics: 20,
            settle: Duration::ZERO,
            deadline: Duration::from_secs(10),
            sources: Vec::new(),
        };
        let counter = calls.clone();
        // The first 25 attempts succeed (the 20 initial ones and 5
        // reconnects); the next 3 fail once each, then all succeed.
        let r = run(&cfg, move |i| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if (25..28).contains(&n) {
                    Err(())
                } else {
                    Ok(i)
                }
            }
        })
        .await;
        assert_eq!(r.connected, 20);
        assert_eq!(r.reconnected, 20);
        assert_eq!(r.failed, 0);
        assert_eq!(r.retries, 3);
        assert_eq!(r.per_client.samples, 20);
        assert_eq!(calls.load(Ordering::SeqCst), 43);
    }
}
