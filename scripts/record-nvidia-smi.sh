#!/usr/bin/env bash
# Records real nvidia-smi output for the agent's GPU-monitor fixtures, on a machine with
# an NVIDIA GPU: the agent's exact query at idle, under a real matrix-multiply load
# (PyTorch), and right after it; plus the failure shapes that can be provoked safely.
#   scripts/record-nvidia-smi.sh OUT_DIR [TAG]
# Files: OUT_DIR/TAG-idle.txt, TAG-busy.txt (several samples, one block each),
# TAG-after.txt, TAG-bad-field.txt (+ .rc), TAG-compute-apps-*.txt, TAG-full.txt.
set -u
out=${1:?usage: record-nvidia-smi.sh OUT_DIR [TAG]}
tag=${2:-gpu}
mkdir -p "$out"
Q=index,uuid,name,utilization.gpu,utilization.memory,memory.used,memory.total,power.draw,temperature.gpu
smi() { nvidia-smi --query-gpu=$Q --format=csv,noheader,nounits; }

nvidia-smi > "$out/$tag-full.txt" 2>&1
smi > "$out/$tag-idle.txt" 2>&1
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits \
  > "$out/$tag-compute-apps-idle.txt" 2>&1

load_secs=${LOAD_SECS:-45}
python3 - "$load_secs" <<'PY' &
import sys, time, torch
secs = float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + secs
n = 0
while time.time() < end:
    for _ in range(50):
        c = a @ b
    torch.cuda.synchronize()
    n += 50
print(f"load: {n} matmuls of 8192^3 bf16 in {secs:.0f} s", file=sys.stderr)
PY
load=$!
sleep 12
: > "$out/$tag-busy.txt"
for i in 1 2 3 4 5 6; do smi >> "$out/$tag-busy.txt" 2>&1; sleep 3; done
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits \
  > "$out/$tag-compute-apps-busy.txt" 2>&1
wait $load
sleep 5
smi > "$out/$tag-after.txt" 2>&1
nvidia-smi --query-gpu=index,no.such.field --format=csv,noheader,nounits > "$out/$tag-bad-field.txt" 2>&1
echo $? > "$out/$tag-bad-field.rc"
ls -l "$out"
head -50 "$out"/*.txt
