# Everyday commands. Each recipe is a plain cargo command; nothing requires `just`.

# Formatting and lints, as CI runs them.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The README's test command.
test:
    cargo test --workspace

# The conformance suite against fresh hubs (the logic is in conformance/run.sh).
conformance:
    bash conformance/run.sh

# Everything CI runs.
ci:
    bash .ci/run

# The benchmark suite (Plexus beside NATS and the echo floor) and the codec benches.
bench *args:
    bash bench/run.sh {{args}}

# Criterion benches of the protocol codec.
bench-codec:
    cargo bench -p plexus-protocol --bench codec

# Fuzz the frame decoder (needs `cargo install cargo-fuzz`; see protocol/fuzz/README.md).
# New inputs go to the ignored decode-work/; the committed seeds stay clean.
fuzz seconds="60":
    cd protocol && RUSTC_BOOTSTRAP=1 cargo fuzz run decode fuzz/corpus/decode-work fuzz/corpus/decode -- -max_total_time={{seconds}}

# Run the hub.
run:
    cargo run --release -p plexus-server
