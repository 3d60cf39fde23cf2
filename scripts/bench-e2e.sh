#!/bin/bash
# Whole-flow benchmark on the emulated VM (launcher/tests/e2e_bench.rs): seconds from the
# job's exit to the delete call, from the last busy GPU sample to the stop, and the
# agent's RSS and CPU during a happy-path run. Prints the BENCH lines.
#
#   scripts/bench-e2e.sh            # debug build (what the tests use)
#   scripts/bench-e2e.sh --release  # release build of both binaries
set -euo pipefail
cd "$(dirname "$0")/.."
profile=()
if [ "${1:-}" = --release ]; then profile=(--release); fi
cargo build -q "${profile[@]}" -p cloudrun-agent --bin cloudrun-agent
cargo test -q "${profile[@]}" -p cloudrun-launch --test e2e_bench -- --ignored --nocapture 2>&1 \
  | grep -E '^BENCH|test result|panicked'
