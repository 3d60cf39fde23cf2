#!/usr/bin/env bash
# Records the instances.insert bodies gcloud sends for the GPU shapes cloudrun builds, into
# launcher/tests/fixtures/gcloud-<case>.json, so the tests can compare cloudrun's body with
# Google's own CLI field by field. Offline: gcloud talks to a local stub that logs each POST
# body and answers with a DONE operation. Re-run after a gcloud upgrade.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=launcher/tests/fixtures
WORK="$(mktemp -d)"
trap 'kill "$STUB_PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT="${PORT:-18097}"

cat >"$WORK/stub.py" <<'PY'
import http.server, json, sys
out = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def _op(self):
        body = json.dumps({"kind": "compute#operation", "id": "1", "name": "operation-1",
                           "status": "DONE", "operationType": "insert", "progress": 100,
                           "zone": "http://127.0.0.1/compute/v1/projects/test-proj/zones/us-central1-a",
                           "targetLink": "http://127.0.0.1/compute/v1/projects/test-proj/zones/us-central1-a/instances/x"})
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.end_headers(); self.wfile.write(body.encode())
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(n)
        if self.path.split("?")[0].endswith("/instances"):
            open(out, "wb").write(data)
        self._op()
    def do_GET(self): self._op()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$WORK/stub.py" "$PORT" "$WORK/body.json" &
STUB_PID=$!
sleep 1

export CLOUDSDK_CONFIG="$WORK/gcloud"
gcloud config set auth/disable_credentials true >/dev/null 2>&1
gcloud config set core/project test-proj >/dev/null 2>&1
gcloud config set api_endpoint_overrides/compute "http://127.0.0.1:${PORT}/compute/v1/" >/dev/null 2>&1
printf '#!/bin/bash\necho hi\n' >"$WORK/startup.sh"
IMG=projects/deeplearning-platform-release/global/images/family/common-cu128-ubuntu-2204-nvidia-570

record() { # case machine-type spot(yes/no) [accelerator]
  local name="$1" mt="$2" spot="$3" acc="${4:-}"
  local args=(compute instances create trainer-x --zone us-central1-a --machine-type "$mt"
    --image "$IMG" --boot-disk-size 100GB --boot-disk-type pd-balanced
    --maintenance-policy TERMINATE --instance-termination-action DELETE --max-run-duration 3600s
    --metadata-from-file startup-script="$WORK/startup.sh" --labels cloudrun-managed=true
    --scopes cloud-platform --service-account default --quiet)
  [ -n "$acc" ] && args+=(--accelerator "$acc")
  if [ "$spot" = yes ]; then args+=(--provisioning-model SPOT); else args+=(--provisioning-model STANDARD); fi
  rm -f "$WORK/body.json"
  gcloud "${args[@]}" >/dev/null 2>&1 || true
  python3 -m json.tool --sort-keys "$WORK/body.json" >"$OUT/gcloud-$name.json"
  echo "recorded $OUT/gcloud-$name.json" >&2
}

record n1-t4-standard n1-standard-8 no type=nvidia-tesla-t4,count=1
record n1-t4-spot n1-standard-8 yes type=nvidia-tesla-t4,count=1
record g2-l4-spot g2-standard-8 yes
record a2-a100x2-standard a2-highgpu-2g no
record a3-h100x8-spot a3-highgpu-8g yes
