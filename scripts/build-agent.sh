#!/usr/bin/env bash
# Builds cloudrun-agent fully static (musl) for the VMs:
#   scripts/build-agent.sh [x86_64|aarch64|all]     (default x86_64)
# Installs what it needs (musl-tools, the Arm cross gcc, the rustup targets). Results:
#   target/<triple>/agent/cloudrun-agent, and a line per binary with size, sha256 and
#   what `ldd` says (it must say "statically linked" / "not a dynamic executable").
# Docker users can use `cross` instead (Cross.toml); nothing here needs it.
# CARGO_TARGET_DIR moves target/ as cargo does; CLOUDRUN_AGENT_PROFILE (default `agent`:
# small, LTO) picks another cargo profile, e.g. `dev` for a quicker build in tests.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-x86_64}
target_dir=${CARGO_TARGET_DIR:-target}
profile=${CLOUDRUN_AGENT_PROFILE:-agent}
# cargo's output folder per profile: dev builds land in debug/.
case $profile in
  dev) profile_dir=debug ;;
  *) profile_dir=$profile ;;
esac

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  echo "build-agent: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

build() {
  local triple=$1
  rustup target list --installed | grep -qx "$triple" || rustup target add "$triple" >&2
  case $triple in
    x86_64-unknown-linux-musl)
      apt_install musl-tools
      ;;
    aarch64-unknown-linux-musl)
      apt_install gcc-aarch64-linux-gnu
      export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
      ;;
  esac
  cargo build --locked -p cloudrun-agent --bin cloudrun-agent --profile "$profile" --target "$triple" >&2
  local bin=$target_dir/$triple/$profile_dir/cloudrun-agent
  local size sha linked
  size=$(stat -c %s "$bin")
  sha=$(sha256sum "$bin" | cut -d' ' -f1)
  # ldd exits non-zero for static binaries (and for foreign ones); it is the text that counts.
  linked=$( (ldd "$bin" 2>&1 || true) | head -1 | sed 's/^[[:space:]]*//')
  echo "$bin size=$size sha256=$sha ldd=\"$linked\" file=\"$(file -b "$bin" | cut -d, -f1-2,4)\""
}

case $which in
  x86_64) build x86_64-unknown-linux-musl ;;
  aarch64) build aarch64-unknown-linux-musl ;;
  all) build x86_64-unknown-linux-musl; build aarch64-unknown-linux-musl ;;
  *) echo "usage: scripts/build-agent.sh [x86_64|aarch64|all]" >&2; exit 2 ;;
esac
