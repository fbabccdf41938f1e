//! Subscription lookups as the index grows.
//!
//! Run with `cargo bench -p plexus-server --bench matcher`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use plexus_protocol::topic::Pattern;
use plexus_server::broker::Matcher;
use plexus_server::conn::Conn;

fn conn(id: u64) -> Arc<Conn> {
    Arc::new(Conn::new(id, format!("s{id}").into(), 1 << 20))
}

fn pattern(s: &str) -> Pattern {
    Pattern::parse(s, 256).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("matcher");
    for &topics in &[1_000usize, 100_000] {
        // `topics` exact topics with one subscriber each.
        let m = Matcher::default();
        for i in 0..topics {
            m.insert(&pattern(&format!("room.{i}.msgs")), conn(i as u64), |_| {});
        }
        g.bench_with_input(BenchmarkId::new("exact_hit", topics), &m, |b, m| {
            b.iter(|| {
                m.for_each_match(black_box("room.77.msgs"), |c| {
                    black_box(c);
                })
            })
        });
        g.bench_with_input(BenchmarkId::new("exact_miss", topics), &m, |b, m| {
            b.iter(|| {
                m.for_each_match(black_box("nobody.here"), |c| {
                    black_box(c);
                })
            })
        });
        // Add wildcard patterns: one per 10 topics, `room.N.*`, plus `room.>`.
        for i in (0..topics).step_by(10) {
            m.insert(
                &pattern(&format!("room.{i}.*")),
                conn((topics + i) as u64),
                |_| {},
            );
        }
        m.insert(&pattern("room.>"), conn(u64::MAX), |_| {});
        g.bench_with_input(
            BenchmarkId::new("with_wildcards_hit", topics),
            &m,
            |b, m| {
                b.iter(|| {
                    m.for_each_match(black_box("room.70.msgs"), |c| {
                        black_box(c);
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("with_wildcards_miss", topics),
            &m,
            |b, m| {
                b.iter(|| {
                    m.for_each_match(black_box("nobody.here"), |c| {
                        black_box(c);
                    })
                })
            },
        );
    }
    // Fan-out of one topic to 1,000 subscribers: the per-subscriber cost.
    let m = Matcher::default();
    for i in 0..1000 {
        m.insert(&pattern("feed"), conn(i), |_| {});
    }
    g.bench_function("exact_1000_subscribers", |b| {
        b.iter(|| {
            m.for_each_match(black_box("feed"), |c| {
                black_box(c);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
