#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run calls exactly this).
# Installs what the tests need on a fresh machine, then formats-checks, lints and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
