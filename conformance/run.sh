#!/usr/bin/env bash
# The conformance suite against fresh `plexus` hubs: builds the hub and the
# runner, starts each hub on a free port with a temporary data dir, runs its
# share of the cases, stops it, and fails if any case failed.
#
#   bash conformance/run.sh            # what `just conformance` and .ci/run do
#   CONFORMANCE_OUT=dir bash conformance/run.sh   # where the JSON/JUnit reports go
#   PLEXUS_BIN=path PLEXUS_CONFORMANCE_BIN=path bash conformance/run.sh   # prebuilt binaries
#
# Four hubs, because some cases need settings that would slow or break the
# others (docs/conformance.md, "The CI run"):
#   main      every case, with short auth deadline / leeway / request timeout,
#             an Origin allow-list, an issuer and an audience, and a config
#             file with two durable namespaces (protocol.md section 23):
#             conf.durable.> (no retention limits) and conf.capped.>
#             (max-events 4), which the runner is told with --durable-prefix
#             and --durable-capped-prefix, and record sync (section 24) with
#             max-records 40 per space (--sync --sync-max-records 40)
#   timers    keepalive and rate cases: 1 s pings, 1 s pong timeout, 5 req/s
#   small     size, limit and presence cases at a 64 KiB frame size
#   shutdown  the graceful-shutdown case, which stops its hub
set -euo pipefail
cd "$(dirname "$0")/.."

out="${CONFORMANCE_OUT:-target/conformance}"
mkdir -p "$out"
started=$SECONDS

if [[ -z "${PLEXUS_BIN:-}" || -z "${PLEXUS_CONFORMANCE_BIN:-}" ]]; then
  echo "== building plexus and plexus-conformance (debug: the debug.* methods are compiled in)"
  cargo build -q -p plexus-server -p plexus-conformance
fi
plexus="${PLEXUS_BIN:-target/debug/plexus}"
runner="${PLEXUS_CONFORMANCE_BIN:-target/debug/plexus-conformance}"

work="$(mktemp -d "${TMPDIR:-/tmp}/plexus-conformance.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME ARGS...: starts a hub; sets URL and PID. With TRY=1 a hub
# that does not start returns 1 instead of ending the run.
start() {
  local name="$1"
  shift
  rm -rf "$work/$name"
  mkdir -p "$work/$name"
  PLEXUS_DEBUG_METHODS=true RUST_LOG="${RUST_LOG:-warn}" \
    "$plexus" --data-dir "$work/$name/data" --listen 127.0.0.1:0 "$@" \
    >"$work/$name/stdout" 2>"$work/$name/stderr" &
  PID=$!
  pids+=("$PID")
  URL=""
  for _ in $(seq 1 200); do
    URL="$(grep -o 'ws://[^ ]*/v1/ws' "$work/$name/stdout" 2>/dev/null | head -n1 || true)"
    [[ -n "$URL" ]] && break
    if ! kill -0 "$PID" 2>/dev/null; then
      echo "conformance: the $name hub did not start:" >&2
      cat "$work/$name/stderr" >&2
      if [[ "${TRY:-0}" == 1 ]]; then
        return 1
      fi
      exit 2
    fi
    sleep 0.05
  done
  if [[ -z "$URL" ]]; then
    echo "conformance: the $name hub printed no URL" >&2
    exit 2
  fi
  KEY="$work/$name/data/dev-signing-key"
}

status=0
# suite NAME ARGS...: runs the runner against the hub just started.
suite() {
  local name="$1"
  shift
  echo "== $name hub at $URL"
  local rc=0
  "$runner" --url "$URL" --hs256-secret-file "$KEY" \
    --json "$out/$name.json" --junit "$out/$name.xml" --quiet \
    "$@" ${PLEXUS_CONFORMANCE_ARGS:-} || rc=$?
  if [[ $rc -ne 0 ]]; then
    status=$rc
  fi
}

# The durable namespaces of the main hub (server/src/streams/config.rs).
streams_config="$work/main-streams.toml"
cat >"$streams_config" <<'TOML'
[[streams]]
pattern = "conf.durable.>"

[[streams]]
pattern = "conf.capped.>"
max-events = 4
durability = "committed"

# Record sync (protocol.md section 24, server/src/config.rs SyncSettings):
# a small quota so the quota case can reach it (told with --sync-max-records).
[sync]
enabled = true
max-records = 40
TOML
durable=(--durable-prefix conf.durable. --durable-capped-prefix conf.capped. --durable-capped-events 4
  --sync --sync-max-records 40)
main_args=(
  --auth-timeout 1500ms --jwt-leeway 2s --request-timeout 2s
  --max-in-flight 16 --max-subscriptions 64 --max-connections-per-user 8
  --max-outbound-bytes 2097152 --allowed-origins https://app.example
  --jwt-issuer plexus-ci --jwt-audience plexus-conformance
)
if ! TRY=1 start main --config "$streams_config" "${main_args[@]}"; then
  # A hub without durable streams or record sync refuses the [[streams]]
  # or [sync] tables: run without them, and the durable and sync cases skip
  # with the reason.
  echo "conformance: the main hub does not take [[streams]]/[sync]; durable and sync cases will skip" >&2
  durable=()
  start main "${main_args[@]}"
fi
suite main \
  --auth-timeout-ms 1500 --jwt-leeway-ms 2000 --request-timeout-ms 2000 \
  --max-connections-per-user 8 --outbound-bytes 2097152 \
  --origin-allowed https://app.example --issuer plexus-ci --audience plexus-conformance \
  "${durable[@]}" --exclude 'keepalive,shutdown'
kill "$PID" 2>/dev/null || true

start timers --ping-interval 1s --pong-timeout 1s --rate-per-sec 5 --rate-burst 10 --rate-strikes 5
suite timers --pong-timeout-ms 1000 --rate-strikes 5 --filter 'keepalive,rate'
kill "$PID" 2>/dev/null || true

start small --max-frame-size 65536 --max-payload 32768 --max-outbound-bytes 262144 \
  --max-presence-info 1024 --max-subscriptions 32 --max-connections-per-user 256
suite small --outbound-bytes 262144 --max-connections-per-user 256 \
  --filter 'size,limits,presence,slow,chunks'

start shutdown --shutdown-grace 5s
suite shutdown --filter 'shutdown' --shutdown-cmd "kill -TERM $PID"

echo "== conformance: reports in $out; $((SECONDS - started)) s in all"
exit "$status"
