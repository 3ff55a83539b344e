#!/bin/bash
# Does the SM clock of a capped, compute-bound process depend on the share's
# period? Runs 4096^3 bf16 matmuls natively and under force 30% with several
# periods, sampling SM clock and power with nvidia-smi every 50 ms.
# Usage: bench/experiments/clock_vs_period.sh OUTDIR [SECONDS] [PERIODS...]
set -u
out=${1:?OUTDIR}; seconds=${2:-8}; shift 2 || true
periods=${*:-20 50 100 200}
source "$(dirname "$0")/common.sh"; mkdir -p "$out"
w=$workloads
run() {  # name, env...
    local name=$1; shift
    nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,utilization.gpu --format=csv,noheader,nounits \
        -lms 50 > "$out/$name.smi.csv" &
    local smi=$!
    env "$@" $w matmul --seconds "$seconds" --json > "$out/$name.json" 2> "$out/$name.err"
    kill $smi; wait $smi 2>/dev/null
    python3 - "$out/$name" <<'PY'
import json, sys, statistics
base = sys.argv[1]
r = json.loads(open(base + ".json").read().splitlines()[-1])
rate = r["iterations"] / sum(w[1] - w[0] for w in r["windows"])
rows = [l.split(", ") for l in open(base + ".smi.csv") if l.count(",") == 3]
clk = [float(x[1]) for x in rows]; pw = [float(x[2]) for x in rows]
busy = [float(x[1]) for x in rows if float(x[3]) > 0]
print(f"{base.split('/')[-1]:>12}: {rate:8.1f} it/s  sm clock mean {statistics.mean(clk):6.0f} "
      f"min {min(clk):5.0f} max {max(clk):5.0f} MHz  power mean {statistics.mean(pw):5.0f} W max {max(pw):5.0f} W")
PY
}
run native
for p in $periods; do
    run "force30_p$p" $(slice_env 30 force) LIBVGPU_SHARE_PERIOD_MS=$p
done
