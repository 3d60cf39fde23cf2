#!/usr/bin/env bash
# The README's first command: build cloudrun-launch and cloudrun-agent, then run
# examples/quickstart on this machine with `--local --follow` (no cloud account needed):
# live logs, checkpoints mirrored to the local store, the receipt, the outputs pulled
# back into examples/quickstart/checkpoint/. Exits with the run's exit code.
#
#   CLOUDRUN_PROFILE=debug   use the debug build
#   CARGO_TARGET_DIR         where cargo builds (as cargo itself reads it)
#   CLOUDRUN_BIN_DIR=DIR     use the cloudrun-launch and cloudrun-agent already in DIR and
#                            build nothing (the test does: `cargo test` built them, and a
#                            plain `cargo build` would rebuild them without the
#                            dev-dependencies' features)
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${CLOUDRUN_PROFILE:-release}"
case "$profile" in
  release) cargo_profile=release ;;
  debug) cargo_profile=dev ;;
  *) echo "CLOUDRUN_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
target_dir="${CARGO_TARGET_DIR:-target}"

if [ -n "${CLOUDRUN_BIN_DIR:-}" ]; then
  bin_dir=$CLOUDRUN_BIN_DIR
else
  cargo build --quiet --profile "$cargo_profile" -p cloudrun-launch -p cloudrun-agent >&2
  bin_dir=$target_dir/$profile
fi
exec "$bin_dir/cloudrun-launch" --local --follow examples/quickstart/main.py "$@"
