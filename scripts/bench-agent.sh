#!/usr/bin/env bash
# Measures the static agent supervising a real job (agent/examples/bench_agent.rs):
#   scripts/bench-agent.sh supervise [JOB_SECS]            (default 60)
#   scripts/bench-agent.sh idle [BUSY_SECS] [WINDOW_SECS]   (needs a GPU and PyTorch)
# Prints one JSON object. Without nvidia-smi (and without CLOUDRUN_NVIDIA_SMI) the
# supervise run samples a stand-in that replays a recorded busy H200, so the GPU path is
# exercised every 5 s as on a VM.
# On a machine without Rust, set CLOUDRUN_AGENT_BINARY and BENCH_AGENT_BIN to binaries
# built elsewhere (both static: `cargo build --release --target x86_64-unknown-linux-musl
# -p cloudrun-agent --example bench_agent`).
set -euo pipefail
cd "$(dirname "$0")/.."
agent=${CLOUDRUN_AGENT_BINARY:-}
bench=${BENCH_AGENT_BIN:-}
if [ -z "$agent" ]; then
  # Always through cargo (a no-op when fresh): a stale agent refuses a newer spec.
  scripts/build-agent.sh x86_64 >&2
  agent=target/x86_64-unknown-linux-musl/agent/cloudrun-agent
fi
if [ -z "$bench" ]; then
  cargo build -q --release -p cloudrun-agent --example bench_agent >&2
  bench=target/release/examples/bench_agent
fi
if [ -z "${CLOUDRUN_NVIDIA_SMI:-}" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  stand_in=$(mktemp -d)/nvidia-smi
  fixture=$PWD/agent/tests/fixtures/nvidia-smi/h200-busy-real.txt
  printf '#!/bin/sh\ncat %s\n' "$fixture" > "$stand_in"
  chmod +x "$stand_in"
  export CLOUDRUN_NVIDIA_SMI=$stand_in
  echo "bench-agent: no nvidia-smi here; replaying $fixture" >&2
fi
exec "$bench" "$agent" "$@"
