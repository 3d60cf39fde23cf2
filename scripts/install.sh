#!/usr/bin/env bash
# Installs cloudrun in one command:
#   scripts/install.sh [x86_64|aarch64|all]        (default x86_64; PREFIX, default ~/.local)
# builds the release launcher and the static agent(s) (scripts/build-agent.sh) and installs
#   PREFIX/bin/cloudrun-launch
#   PREFIX/lib/cloudrun/cloudrun-agent-<target>   e.g. cloudrun-agent-x86_64-unknown-linux-musl
# side by side, where cloudrun-launch finds the agent for the VM's architecture with no
# setting (--agent-binary / CLOUDRUN_AGENT_BINARY still override it).
# CARGO_TARGET_DIR is honoured (the build reuses that target dir); CLOUDRUN_INSTALL_PROFILE
# (default `release`) and CLOUDRUN_AGENT_PROFILE (default `agent`) pick other cargo
# profiles, e.g. `dev` for the test that installs into a temporary PREFIX.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-x86_64}
prefix=${PREFIX:-$HOME/.local}
target_dir=${CARGO_TARGET_DIR:-target}
profile=${CLOUDRUN_INSTALL_PROFILE:-release}
case $profile in
  dev) profile_dir=debug ;;
  *) profile_dir=$profile ;;
esac
case $which in
  x86_64) triples=(x86_64-unknown-linux-musl) ;;
  aarch64) triples=(aarch64-unknown-linux-musl) ;;
  all) triples=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl) ;;
  *) echo "usage: PREFIX=~/.local scripts/install.sh [x86_64|aarch64|all]" >&2; exit 2 ;;
esac

echo "install: building cloudrun-launch ($profile)" >&2
cargo build --locked -p cloudrun-launch --bin cloudrun-launch --profile "$profile" >&2
echo "install: building the static agent(s)" >&2
scripts/build-agent.sh "$which" >&2

agent_profile=${CLOUDRUN_AGENT_PROFILE:-agent}
case $agent_profile in
  dev) agent_dir=debug ;;
  *) agent_dir=$agent_profile ;;
esac
install -d "$prefix/bin" "$prefix/lib/cloudrun"
install -m 0755 "$target_dir/$profile_dir/cloudrun-launch" "$prefix/bin/cloudrun-launch"
for triple in "${triples[@]}"; do
  dest=$prefix/lib/cloudrun/cloudrun-agent-$triple
  install -m 0755 "$target_dir/$triple/$agent_dir/cloudrun-agent" "$dest"
  # The `agent` profile strips already; a dev-profile agent carries ~180 MB of debug info
  # that every launch would upload, so the installed copy loses it.
  if [ "$agent_profile" = dev ]; then
    case $triple in
      x86_64-*) strip_tool=strip ;;
      aarch64-*) strip_tool=aarch64-linux-gnu-strip ;;
    esac
    if command -v "$strip_tool" >/dev/null; then "$strip_tool" "$dest"; fi
  fi
done
echo "installed $prefix/bin/cloudrun-launch"
for triple in "${triples[@]}"; do
  echo "installed $prefix/lib/cloudrun/cloudrun-agent-$triple"
done
"$prefix/bin/cloudrun-launch" --version
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on PATH: add  export PATH=\"$prefix/bin:\$PATH\"  to your shell's profile" >&2 ;;
esac
