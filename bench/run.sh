#!/usr/bin/env bash
# The standard benchmark suite: builds the hub and the bench kit in release
# mode, then runs every scenario against Plexus and its baselines (NATS over
# WebSocket, the tokio-tungstenite echo floor) and writes
# bench/results/<date>.json and .md. Every argument goes to `plexus-bench
# suite` (e.g. `--quick`, `--baseline-plexus /path/to/old/plexus`; see
# docs/benchmarks.md).
# Loopback only; every run ends by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
  echo "bench: nats-server is missing; installing Debian's package" >&2
  apt-get install -y nats-server || { echo "bench: run 'apt-get update && apt-get install nats-server'" >&2; exit 1; }
fi
cargo build --release -p plexus-server -p plexus-bench
# The hub and the load generator raise their own soft limits to the hard one.
exec target/release/plexus-bench suite "$@"
