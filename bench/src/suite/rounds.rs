//! Rounds: each scenario run against every target in turn, repeated, and
//! the runs combined into one figure per target.

use super::{BoxError, Suite};
use crate::nats::{self, NatsServer};
use crate::plexus;
use crate::procs::{EchoProcess, HubBinary};
use crate::scenario::{FanoutConfig, FanoutResult, RpcConfig, RpcResult, StormConfig, StormResult};
use crate::stats::Latency;

impl Suite {
    /// Plexus (current, then baseline) and NATS fan-out, alternated;
    /// medians (delivered/s from the median-throughput run, p99 from the
    /// median-latency run).
    pub(super) async fn fanout_rounds(
        &self,
        cfg: &FanoutConfig,
    ) -> Result<(FanoutResult, Option<FanoutResult>, FanoutResult), BoxError> {
        let args = self.args(&[]);
        let (mut ps, mut bs, mut ns) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.rounds() {
            let (p, b) = self
                .each_hub(|bin| {
                    let args = &args;
                    async move { Ok(plexus::fanout(&bin.start(args).await?, cfg).await) }
                })
                .await?;
            ps.push(p);
            bs.extend(b);
            ns.push(nats::fanout(&NatsServer::start().await?, cfg).await);
        }
        let combine = |runs: &[FanoutResult]| {
            let mut r = median_by(runs, |r| r.delivered_per_sec);
            r.latency = median_by(runs, |r| r.latency.p99_us).latency;
            r
        };
        Ok((
            combine(&ps),
            some_if(!bs.is_empty(), || combine(&bs)),
            combine(&ns),
        ))
    }

    /// Plexus `ping` (current, then baseline), the echo floor and NATS
    /// request/reply, alternated; medians as for fan-out.
    pub(super) async fn rpc_rounds(
        &self,
        cfg: &RpcConfig,
    ) -> Result<(RpcResult, Option<RpcResult>, RpcResult, RpcResult), BoxError> {
        let args = self.args(&[]);
        let (mut ps, mut bs, mut fs, mut ns) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.rounds() {
            let (p, b) = self
                .each_hub(|bin| {
                    let args = &args;
                    async move { Ok(plexus::rpc(&bin.start(args).await?.url(), cfg, true).await) }
                })
                .await?;
            ps.push(p);
            bs.extend(b);
            let floor = EchoProcess::start().await?;
            fs.push(plexus::rpc(&floor.url(), cfg, false).await);
            drop(floor);
            ns.push(nats::request_reply(&NatsServer::start().await?, cfg).await);
        }
        let combine = |runs: &[RpcResult]| {
            let mut r = median_by(runs, |r| r.calls_per_sec);
            r.latency = median_by(runs, |r| r.latency.p99_us).latency;
            r
        };
        Ok((
            combine(&ps),
            some_if(!bs.is_empty(), || combine(&bs)),
            combine(&fs),
            combine(&ns),
        ))
    }

    /// Routed RPC through the current hub and NATS request/reply,
    /// alternated: the median calls/s run, with the median p99.
    pub(super) async fn routed_rounds(
        &self,
        cfg: &RpcConfig,
        callees: usize,
    ) -> Result<(RpcResult, RpcResult), BoxError> {
        let args = self.args(&[]);
        let (mut ps, mut ns) = (Vec::new(), Vec::new());
        for _ in 0..self.rounds() {
            let hub = self.current.start(&args).await?;
            ps.push(plexus::routed(&hub.url(), cfg, callees).await);
            drop(hub);
            ns.push(nats::request_reply_shared(&NatsServer::start().await?, cfg, callees).await);
        }
        let combine = |runs: &[RpcResult]| {
            let mut r = median_by(runs, |r| r.calls_per_sec);
            r.latency = median_by(runs, |r| r.latency.p99_us).latency;
            r
        };
        Ok((combine(&ps), combine(&ns)))
    }

    /// The reconnect storm against Plexus (current, then baseline) and
    /// NATS, alternated; the run with the median total, with the
    /// per-client percentiles of the median-p99 run.
    pub(super) async fn storm_rounds(
        &self,
        cfg: &StormConfig,
    ) -> Result<(StormResult, Option<StormResult>, StormResult), BoxError> {
        let (mut ps, mut bs, mut ns) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.rounds() {
            let (p, b) = self
                .each_hub(|bin| async move {
                    let args = self.args(&plexus::storm_hub_args(&bin, plexus::LISTEN_BACKLOG));
                    Ok(plexus::reconnect_storm(&bin.start(&args).await?, cfg).await)
                })
                .await?;
            ps.push(p);
            bs.extend(b);
            ns.push(nats::reconnect_storm(&NatsServer::start().await?, cfg).await);
        }
        let combine = |runs: &[StormResult]| {
            let mut r = median_by(runs, |r| r.total_ms);
            r.per_client = median_by(runs, |r| r.per_client.p99_us).per_client;
            r
        };
        Ok((
            combine(&ps),
            some_if(!bs.is_empty(), || combine(&bs)),
            combine(&ns),
        ))
    }

    /// The slow-consumer comparison on one hub binary: [`super::SLOW_ROUNDS`]
    /// alternating runs without and with 5 stalled subscribers, each
    /// variant's samples pooled.
    pub(super) async fn slow_rounds(
        &self,
        bin: HubBinary,
        cfg: &FanoutConfig,
    ) -> Result<Slow, BoxError> {
        // A stalled reader must overflow within the run: a 1 MiB budget
        // (with a frame size a hub that validates its settings accepts with
        // it) and a small kernel send buffer.
        let args = self.args(&plexus::stalled_hub_args(1 << 20));
        let mut cfg = cfg.clone();
        let (mut bases, mut withs) = (Vec::new(), Vec::new());
        let rounds = self.slow_rounds_count();
        for _ in 0..rounds {
            cfg.stalled = 0;
            bases.push(plexus::fanout(&bin.start(&args).await?, &cfg).await);
            cfg.stalled = 5;
            withs.push(plexus::fanout(&bin.start(&args).await?, &cfg).await);
        }
        Ok(Slow {
            baseline: pooled(&bases),
            stalled: pooled(&withs),
            rounds,
        })
    }
}

/// The slow-consumer comparison's result on one hub.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Slow {
    /// Without stalled subscribers.
    pub(super) baseline: FanoutResult,
    /// With 5 stalled subscribers.
    pub(super) stalled: FanoutResult,
    /// Rounds of each.
    pub(super) rounds: usize,
}

/// `Some(f())` if `cond`.
pub(super) fn some_if<T>(cond: bool, f: impl FnOnce() -> T) -> Option<T> {
    cond.then(f)
}

/// The run with the median of `key`.
pub(super) fn median_by<T: Clone>(runs: &[T], key: impl Fn(&T) -> f64) -> T {
    let mut v: Vec<&T> = runs.iter().collect();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v[v.len() / 2].clone()
}

/// Every round's samples pooled (one p99 over all of them is steadier than
/// a median of per-run p99s), with the median delivered/s.
pub(super) fn pooled(runs: &[FanoutResult]) -> FanoutResult {
    let mut h = Latency::new();
    for r in runs {
        h.merge(&r.histogram);
    }
    FanoutResult {
        delivered_per_sec: median_by(runs, |r| r.delivered_per_sec).delivered_per_sec,
        latency: h.summary(),
        stalled_closed: runs.iter().flat_map(|r| r.stalled_closed.clone()).collect(),
        ..Default::default()
    }
}
