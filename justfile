# Everyday commands. Each recipe is a plain cargo command; nothing requires `just`.

# Formatting and lints, as CI runs them.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The README's test command.
test:
    cargo test --workspace

# Everything CI runs.
ci:
    bash .ci/run

# Criterion benches of the protocol codec.
bench:
    cargo bench -p plexus-protocol --bench codec

# Fuzz the frame decoder (needs cargo-fuzz; see docs/protocol.md, "Fuzzing").
fuzz seconds="60":
    cd protocol && RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time={{seconds}}

# Run the hub.
run:
    cargo run --release -p plexus-server
