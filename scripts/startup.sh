#!/bin/bash
# cloudrun startup script: the guest agent runs it as root at EVERY boot, so it is
# idempotent. It fetches the cloudrun agent named in instance metadata from Cloud Storage
# with the VM's own token, checks its SHA-256, and starts it under systemd
# (Restart=always, output to the journal and the serial console), or detached where
# there is no systemd. If the agent cannot be fetched after retries, the VM deletes
# itself through the Compute API rather than sit there billing.
#
# Metadata keys (must match src/contract.rs; a test checks):
#   attributes/cloudrun-agent-url      gs://bucket/object of the static agent
#   attributes/cloudrun-agent-sha256   its SHA-256 (hex)
#   attributes/cloudrun-storage-host   optional GCS emulator host (tests only)
# Environment honoured (tests, emulated VMs):
#   GCE_METADATA_HOST                        metadata server host[:port]
#   CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE  Compute API base URL
#   CLOUDRUN_INSTALL_DIR                     where the agent, its work and state dirs are
#                                            kept (/var/lib/cloudrun)
#   CLOUDRUN_CONSOLE                         the agent's serial console (/dev/console)
#   CLOUDRUN_INIT                            systemd | detached | auto (default)
#   CLOUDRUN_FETCH_ATTEMPTS, CLOUDRUN_FETCH_PAUSE_SECS  retry schedule (tests shorten it)
set -uo pipefail

META_HOST="${GCE_METADATA_HOST:-metadata.google.internal}"
META="http://${META_HOST}/computeMetadata/v1"
COMPUTE="${CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE:-https://compute.googleapis.com/compute/v1/}"
COMPUTE="${COMPUTE%/}"
INSTALL_DIR="${CLOUDRUN_INSTALL_DIR:-/var/lib/cloudrun}"
BIN="${INSTALL_DIR}/bin/cloudrun-agent"
CONSOLE="${CLOUDRUN_CONSOLE:-/dev/console}"
# The agent's own directories live under the install dir, so that an emulated VM that
# moves INSTALL_DIR into its private root gets them there too.
AGENT_ARGS=(--work-dir "${INSTALL_DIR}/work" --state-dir "${INSTALL_DIR}/state" --console "$CONSOLE")
UNIT=/etc/systemd/system/cloudrun-agent.service
FETCH_ATTEMPTS="${CLOUDRUN_FETCH_ATTEMPTS:-8}"        # tries to fetch the agent before giving up
FETCH_FIRST_PAUSE_SECS="${CLOUDRUN_FETCH_PAUSE_SECS:-5}" # first pause between tries (doubles)
FETCH_MAX_BACKOFF_SECS=60                             # longest pause between tries
CURL_TIMEOUT_SECS=300     # one download of the agent (a few MB)
META_TIMEOUT_SECS=10      # one metadata request

log() { echo "cloudrun-startup: $*" >&2; }

meta() {
  curl -fsS --max-time "$META_TIMEOUT_SECS" -H 'Metadata-Flavor: Google' "${META}/$1"
}

# The VM's access token, or nothing.
token() {
  meta instance/service-accounts/default/token 2>/dev/null \
    | sed -n 's/.*"access_token"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p'
}

# Percent-encode everything outside the unreserved set ("/" too, as GCS wants).
urlencode() {
  local s="$1" out="" c i
  local LC_ALL=C
  for ((i = 0; i < ${#s}; i++)); do
    c="${s:i:1}"
    case "$c" in
      [a-zA-Z0-9.~_-]) out+="$c" ;;
      *) printf -v c '%%%02X' "'$c"; out+="$c" ;;
    esac
  done
  printf '%s' "$out"
}

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

delete_self() {
  local project zone name tok rid
  project="$(meta project/project-id)" || project=""
  zone="$(meta instance/zone)" || zone=""
  zone="${zone%/}"; zone="${zone##*/}"
  name="$(meta instance/name)" || name=""
  tok="$(token)"
  rid="$(cat /proc/sys/kernel/random/uuid 2>/dev/null || echo "")"
  log "deleting this VM ($project/$zone/$name) so that it does not bill idle"
  if [ -n "$project" ] && [ -n "$zone" ] && [ -n "$name" ] &&
    curl -fsS --max-time 60 -X DELETE -H "Authorization: Bearer ${tok}" \
      "${COMPUTE}/projects/${project}/zones/${zone}/instances/${name}?requestId=${rid}" >/dev/null; then
    return 0
  fi
  log "delete failed; powering off (maxRunDuration deletes the VM later)"
  if [ "${CLOUDRUN_INIT:-auto}" != detached ]; then
    shutdown -h now || poweroff || true
  fi
  return 1
}

fetch_agent() {
  local url="$1" sha="$2" host bucket object base tok tmp attempt=1 pause="$FETCH_FIRST_PAUSE_SECS"
  host="$(meta instance/attributes/cloudrun-storage-host 2>/dev/null)" || host=""
  if [ -n "$host" ]; then
    case "$host" in http://* | https://*) base="${host%/}" ;; *) base="http://${host%/}" ;; esac
  else
    base="https://storage.googleapis.com"
  fi
  url="${url#gs://}"
  bucket="${url%%/*}"
  object="${url#*/}"
  mkdir -p "${INSTALL_DIR}/bin"
  tmp="$(mktemp "${INSTALL_DIR}/bin/.agent.XXXXXX")" || return 1
  while [ "$attempt" -le "$FETCH_ATTEMPTS" ]; do
    tok="$(token)"
    if curl -fsS --max-time "$CURL_TIMEOUT_SECS" ${tok:+-H "Authorization: Bearer ${tok}"} \
      -o "$tmp" "${base}/storage/v1/b/${bucket}/o/$(urlencode "$object")?alt=media"; then
      if sha_ok "$tmp" "$sha"; then
        chmod 0755 "$tmp" && mv -f "$tmp" "$BIN"
        return 0
      fi
      log "agent download does not match sha256 ${sha} (attempt ${attempt})"
    else
      log "agent download failed (attempt ${attempt} of ${FETCH_ATTEMPTS})"
    fi
    attempt=$((attempt + 1))
    [ "$attempt" -le "$FETCH_ATTEMPTS" ] && sleep "$pause"
    pause=$((pause * 2 > FETCH_MAX_BACKOFF_SECS ? FETCH_MAX_BACKOFF_SECS : pause * 2))
  done
  rm -f "$tmp"
  return 1
}

use_systemd() {
  case "${CLOUDRUN_INIT:-auto}" in
    systemd) return 0 ;;
    detached) return 1 ;;
    *) [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 ;;
  esac
}

# KillMode=process: when the agent dies, systemd restarts it without killing the rest of
# the unit's cgroup, so the training job (held by the agent's job shim, writing to files)
# keeps running and the new agent adopts it. The agent ends the job itself at teardown;
# a power-off ends everything anyway.
start_systemd() {
  local unit env_lines="" v
  for v in GCE_METADATA_HOST CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE STORAGE_EMULATOR_HOST; do
    if [ -n "${!v:-}" ]; then env_lines+="Environment=${v}=${!v}"$'\n'; fi
  done
  unit="[Unit]
Description=cloudrun agent: runs the training job, syncs outputs, deletes this VM
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=${BIN} ${AGENT_ARGS[*]}
Restart=always
RestartSec=5
KillMode=process
StandardOutput=journal+console
StandardError=journal+console
${env_lines}
[Install]
WantedBy=multi-user.target
"
  if [ ! -f "$UNIT" ] || [ "$(cat "$UNIT")" != "$unit" ]; then
    printf '%s' "$unit" >"$UNIT"
    systemctl daemon-reload
  fi
  systemctl enable cloudrun-agent.service >/dev/null 2>&1 || true
  systemctl start cloudrun-agent.service
}

start_detached() {
  local pidfile="${INSTALL_DIR}/agent.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    log "agent already running (pid $(cat "$pidfile"))"
    return 0
  fi
  # 9>&-: the agent (and the job it starts) must not hold this script's lock, or the
  # next boot's (or restart's) run of this script would wait for the job to end.
  nohup setsid "$BIN" "${AGENT_ARGS[@]}" >>"${INSTALL_DIR}/agent.log" 2>&1 </dev/null 9>&- &
  echo $! >"$pidfile"
  log "agent started detached (pid $!)"
}

main() {
  local url sha
  mkdir -p "$INSTALL_DIR"
  exec 9>"${INSTALL_DIR}/.startup.lock"
  flock 9 || true
  url="$(meta instance/attributes/cloudrun-agent-url)" || url=""
  sha="$(meta instance/attributes/cloudrun-agent-sha256)" || sha=""
  if [ -z "$url" ] || [ -z "$sha" ]; then
    log "metadata lacks cloudrun-agent-url or cloudrun-agent-sha256; nothing to run"
    delete_self
    exit 1
  fi
  if sha_ok "$BIN" "$sha"; then
    log "agent ${sha:0:12} already installed"
  elif ! fetch_agent "$url" "$sha"; then
    log "could not fetch the agent from ${url}"
    delete_self
    exit 1
  fi
  if use_systemd; then
    start_systemd
  else
    start_detached
  fi
}

main "$@"
