#!/bin/bash
# Does the power charge (csrc/src/power.h) hold on this GPU, and what would its gap power have
# to be? 4096^3 bf16 matmuls natively, then alone under force at each cap without the power
# charge (LIBVGPU_POWER_AWARE=0: the speed-up the headroom really gives) and with it (the share
# it gives); one thread spinning natively (the GPU's power at its working clocks while doing
# next to nothing, what it draws between turns); the GPU at rest. NVML's energy counter and SM
# clock are sampled every 5 ms; power_charge_summary.py makes the table.
# Usage: power_charge_check.sh OUTDIR [SECONDS] [CAPS...]   (about 3 min with the defaults)
set -u
out=${1:?OUTDIR}; seconds=${2:-8}; shift 2 || true
caps=${*:-10 30 50 70}
source "$(dirname "$0")/common.sh"; mkdir -p "$out"
sample() { python3 "$here/energy_sampler.py" "$1" 5 & sampler=$!; }
stop_sampling() { kill "$sampler"; wait "$sampler" 2>/dev/null; }
run() {  # NAME SHAPE [VARIABLE=VALUE...]
    local name=$1 shape=$2; shift 2
    sample "$out/$name.nvml.csv"
    sleep 1
    env "$@" $workloads "$shape" --seconds "$seconds" --json > "$out/$name.json" 2> "$out/$name.err"
    stop_sampling
}
sample "$out/rest.nvml.csv"; sleep 3; stop_sampling
run spin spin
run native matmul
for c in $caps; do
    run "force${c}_unaware" matmul $(slice_env "$c" force) LIBVGPU_POWER_AWARE=0
    run "force${c}_aware" matmul $(slice_env "$c" force)
done
python3 "$here/power_charge_summary.py" "$out"
