//! The report's rows: each scenario's figures beside their baselines and
//! targets, and the baseline binary's figure ("before") when there is one.

use super::rounds::Slow;
use crate::report::Row;
use crate::scenario::{
    ConnectionsResult, FanoutResult, PreauthConfig, PreauthResult, RpcResult, StalledResult,
    StormResult,
};

/// The pre-auth cap the hub should hold an unauthenticated frame to (KiB).
const PREAUTH_CAP_KIB: f64 = 16.0;

/// The per-socket figure the pre-auth scenario accepts as "16 KiB class":
/// the capped frame, the read buffer's rounding, and an idle connection.
const PREAUTH_TARGET_KIB: f64 = 64.0;

pub(super) fn fanout(
    rows: &mut Vec<Row>,
    name: &str,
    p: &FanoutResult,
    b: Option<&FanoutResult>,
    n: &FanoutResult,
) {
    rows.push(
        Row::new(
            &format!("{name}: delivered/s"),
            p.delivered_per_sec,
            "nats",
            n.delivered_per_sec,
            true,
        )
        .target(
            "≥ 1.0× NATS",
            p.delivered_per_sec >= n.delivered_per_sec * 0.99,
        )
        .before(b.map(|b| b.delivered_per_sec)),
    );
    rows.push(
        Row::new(
            &format!("{name}: p99 µs"),
            p.latency.p99_us,
            "nats",
            n.latency.p99_us,
            false,
        )
        .target("≤ NATS", p.latency.p99_us <= n.latency.p99_us)
        .before(b.map(|b| b.latency.p99_us)),
    );
}

/// The publish window a saturating run used (Plexus: what the hub allowed).
pub(super) fn window(
    rows: &mut Vec<Row>,
    name: &str,
    p: &FanoutResult,
    b: Option<&FanoutResult>,
    n: &FanoutResult,
) {
    let w = |r: &FanoutResult| r.window.unwrap_or(0) as f64;
    rows.push(
        Row::new(
            &format!("{name}: publish window used"),
            w(p),
            "nats",
            w(n),
            true,
        )
        .before(b.map(w)),
    );
}

pub(super) fn connections(
    rows: &mut Vec<Row>,
    asked: usize,
    c: &ConnectionsResult,
    b: Option<&ConnectionsResult>,
) {
    rows.push(
        Row::new(
            &format!("{} idle connections: hub KiB/connection", c.opened),
            c.kib_per_connection,
            "target",
            8.0,
            false,
        )
        .target("≤ 8 KiB", c.kib_per_connection <= 8.0 && c.opened == asked)
        .before(b.map(|c| c.kib_per_connection)),
    );
    rows.push(
        Row::new(
            "idle connections: connects/s",
            c.connect_rate,
            "—",
            0.0,
            true,
        )
        .before(b.map(|c| c.connect_rate)),
    );
}

pub(super) fn rpc(
    rows: &mut Vec<Row>,
    p: &RpcResult,
    b: Option<&RpcResult>,
    f: &RpcResult,
    n: &RpcResult,
) {
    rows.push(
        Row::new(
            "rpc 10×16 ping: calls/s",
            p.calls_per_sec,
            "floor",
            f.calls_per_sec,
            true,
        )
        .target("≥ 0.7× floor", p.calls_per_sec >= 0.7 * f.calls_per_sec)
        .before(b.map(|b| b.calls_per_sec)),
    );
    rows.push(
        Row::new(
            "rpc 10×16 ping: p99 µs",
            p.latency.p99_us,
            "floor",
            f.latency.p99_us,
            false,
        )
        .before(b.map(|b| b.latency.p99_us)),
    );
    rows.push(
        Row::new(
            "rpc 10×16: calls/s vs NATS request/reply",
            p.calls_per_sec,
            "nats",
            n.calls_per_sec,
            true,
        )
        .before(b.map(|b| b.calls_per_sec)),
    );
}

/// Routed RPC beside NATS request/reply: calls/s (target ≥ 1.5× NATS at
/// 64×16) and p99 (≤ NATS), p50 for one call in flight.
pub(super) fn routed(
    rows: &mut Vec<Row>,
    cfg: &crate::scenario::RpcConfig,
    callees: usize,
    p: &RpcResult,
    n: &RpcResult,
) {
    let name = format!(
        "routed rpc {}×{} → {callees} callee(s)",
        cfg.connections, cfg.in_flight
    );
    let saturating = cfg.connections * cfg.in_flight > 1;
    let mut calls = Row::new(
        &format!("{name}: calls/s"),
        p.calls_per_sec,
        "nats",
        n.calls_per_sec,
        true,
    );
    if saturating {
        calls = calls.target("≥ 1.5× NATS", p.calls_per_sec >= 1.5 * n.calls_per_sec);
    }
    rows.push(calls);
    if !saturating {
        rows.push(Row::new(
            &format!("{name}: p50 µs"),
            p.latency.p50_us,
            "nats",
            n.latency.p50_us,
            false,
        ));
    }
    rows.push(
        Row::new(
            &format!("{name}: p99 µs"),
            p.latency.p99_us,
            "nats",
            n.latency.p99_us,
            false,
        )
        .target("≤ NATS", p.latency.p99_us <= n.latency.p99_us),
    );
    rows.push(Row::new(
        &format!("{name}: errors"),
        p.errors as f64,
        "nats",
        n.errors as f64,
        false,
    ));
}

pub(super) fn storm(
    rows: &mut Vec<Row>,
    p: &StormResult,
    b: Option<&StormResult>,
    n: &StormResult,
) {
    let name = format!("reconnect storm, {} clients", p.clients);
    let ms = |us: f64| us / 1e3;
    rows.push(
        Row::new(
            &format!("{name}: all resubscribed, ms"),
            p.total_ms,
            "nats",
            n.total_ms,
            false,
        )
        .target(
            "≤ NATS, none failed",
            p.total_ms <= n.total_ms && p.failed == 0 && p.reconnected == p.clients,
        )
        .before(b.map(|b| b.total_ms)),
    );
    rows.push(
        Row::new(
            &format!("{name}: p50 per client, ms"),
            ms(p.per_client.p50_us),
            "nats",
            ms(n.per_client.p50_us),
            false,
        )
        .before(b.map(|b| ms(b.per_client.p50_us))),
    );
    rows.push(
        Row::new(
            &format!("{name}: p99 per client, ms"),
            ms(p.per_client.p99_us),
            "nats",
            ms(n.per_client.p99_us),
            false,
        )
        .target("≤ NATS", p.per_client.p99_us <= n.per_client.p99_us)
        .before(b.map(|b| ms(b.per_client.p99_us))),
    );
    rows.push(
        Row::new(
            &format!("{name}: retried attempts"),
            p.retries as f64,
            "nats",
            n.retries as f64,
            false,
        )
        .before(b.map(|b| b.retries as f64)),
    );
}

pub(super) fn slow(rows: &mut Vec<Row>, s: &Slow, b: Option<&Slow>) {
    rows.push(
        Row::new(
            &format!(
                "slow consumers: fast p99 µs with 5 stalled ({} rounds pooled)",
                s.rounds
            ),
            s.stalled.latency.p99_us,
            "no stalled",
            s.baseline.latency.p99_us,
            false,
        )
        .target(
            "≤ 1.10×",
            s.stalled.latency.p99_us <= s.baseline.latency.p99_us * 1.10,
        )
        .before(b.map(|b| b.stalled.latency.p99_us)),
    );
    rows.push(
        Row::new(
            &format!(
                "slow consumers: fast delivered/s with 5 stalled (median of {})",
                s.rounds
            ),
            s.stalled.delivered_per_sec,
            "no stalled",
            s.baseline.delivered_per_sec,
            true,
        )
        .target(
            "≥ 0.99×",
            s.stalled.delivered_per_sec >= s.baseline.delivered_per_sec * 0.99,
        )
        .before(b.map(|b| b.stalled.delivered_per_sec)),
    );
    let closed = |s: &Slow| {
        s.stalled
            .stalled_closed
            .iter()
            .filter(|c| **c == Some(4006))
            .count()
    };
    rows.push(
        Row::new(
            "slow consumers: stalled closed with 4006",
            closed(s) as f64,
            "stalled",
            (5 * s.rounds) as f64,
            true,
        )
        .target("all", closed(s) == 5 * s.rounds)
        .before(b.map(|b| closed(b) as f64)),
    );
}

pub(super) fn preauth(
    rows: &mut Vec<Row>,
    cfg: &PreauthConfig,
    p: &PreauthResult,
    b: Option<&PreauthResult>,
) {
    rows.push(
        Row::new(
            &format!(
                "pre-auth: {} sockets × {} B of a {} B frame: hub KiB/socket (peak)",
                p.opened,
                cfg.frame_bytes - 1,
                cfg.frame_bytes
            ),
            p.peak_kib_per_socket,
            "16 KiB cap",
            PREAUTH_CAP_KIB,
            false,
        )
        .target(
            "≤ 64 KiB (16 KiB class)",
            p.peak_kib_per_socket <= PREAUTH_TARGET_KIB && p.opened == cfg.sockets,
        )
        .before(b.map(|b| b.peak_kib_per_socket)),
    );
}

pub(super) fn stalled(rows: &mut Vec<Row>, p: &StalledResult, b: Option<&StalledResult>) {
    let name = format!(
        "stalled subscribers, {} on {} topic(s)",
        p.subscribers, p.topics
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    rows.push(
        Row::new(
            &format!("{name}: peak hub growth MiB vs subscribers × max-outbound-bytes"),
            mib(p.rss_peak_kib.saturating_sub(p.rss_idle_kib)),
            "bound",
            mib(p.bound_kib),
            false,
        )
        .target("≤ 1.0× bound", p.peak_over_bound <= 1.0)
        .before(b.map(|b| mib(b.rss_peak_kib.saturating_sub(b.rss_idle_kib)))),
    );
    rows.push(
        Row::new(
            &format!("{name}: hub growth MiB once all closed (sockets unread)"),
            mib(p.rss_after_close_kib.saturating_sub(p.rss_idle_kib)),
            "peak growth",
            mib(p.rss_peak_kib.saturating_sub(p.rss_idle_kib)),
            false,
        )
        .before(b.map(|b| mib(b.rss_after_close_kib.saturating_sub(b.rss_idle_kib)))),
    );
    rows.push(
        Row::new(
            &format!("{name}: hub growth MiB over its start once they disconnected"),
            mib(p.rss_after_disconnect_kib.saturating_sub(p.rss_before_kib)),
            "peak growth",
            mib(p.rss_peak_kib.saturating_sub(p.rss_idle_kib)),
            false,
        )
        .before(b.map(|b| mib(b.rss_after_disconnect_kib.saturating_sub(b.rss_before_kib)))),
    );
    let closed = |r: &StalledResult| r.close_codes.get(&4006).copied().unwrap_or(0);
    rows.push(
        Row::new(
            &format!("{name}: closed with 4006"),
            closed(p) as f64,
            "subscribers",
            p.subscribers as f64,
            true,
        )
        .target("all", closed(p) == p.subscribers && p.subscribers > 0)
        .before(b.map(|b| closed(b) as f64)),
    );
}
