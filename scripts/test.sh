#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run calls exactly this).
# Installs what the tests need on a fresh machine, then format-checks, lints and tests,
# and ends with one line totalling every test binary: "tests: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# The whole-flow tests run the real agent; cargo test never builds its executable, so
# build it once here (the tests would otherwise build it themselves on first use).
cargo build --locked -p cloudrun-agent --bin cloudrun-agent
export CLOUDRUN_AGENT_BINARY=$PWD/target/debug/cloudrun-agent

# Most tests wait on timers, child processes and emulators rather than on the CPU, so they
# run more at a time than there are cores (measured on 2 cores: the whole-flow suites in
# 94 s each instead of 180-196 s, the agent's unit tests in 11 s instead of 48 s).
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-6}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
