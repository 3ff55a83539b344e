#!/bin/bash
# Throughput share and 0.5 s-window CV of one shape alone under force, for
# several caps and share periods (LIBVGPU_SHARE_PERIOD_MS).
# Usage: share_vs_period.sh OUTDIR SHAPE SECONDS "CAPS" "PERIODS"
set -u
out=${1:?OUTDIR}; shape=${2:?SHAPE}; seconds=${3:-8}; caps=${4:-30}; periods=${5:-20}
here=$(dirname "$0"); mkdir -p "$out"
lib=$(cd / && python3 -c 'import hami_kernel; print(hami_kernel.library_path())')
w="python3 $here/../workloads.py $shape --seconds $seconds --json"
$w > "$out/$shape.native.json" 2>/dev/null
for c in $caps; do for p in $periods; do
    d=$(mktemp -d)
    LD_PRELOAD="$lib" CUDA_DEVICE_MEMORY_LIMIT=16g CUDA_DEVICE_SM_LIMIT=$c GPU_CORE_UTILIZATION_POLICY=force \
        LIBVGPU_SHARE_PERIOD_MS=$p LIBCUDA_LOG_LEVEL=3 CUDA_DEVICE_MEMORY_SHARED_CACHE=$d/region \
        LIBVGPU_ARBITER_DIR=$d $w > "$out/$shape.$c.$p.json" 2> "$out/$shape.$c.$p.err"
    python3 - "$out/$shape.native.json" "$out/$shape.$c.$p.json" "$shape force $c% period $p ms" <<'PY'
import json, statistics, sys
def load(path):
    r = json.loads(open(path).read().splitlines()[-1])
    rates = [n / (e - s) for s, e, n in r["windows"]]
    return r["iterations"] / sum(e - s for s, e, _ in r["windows"]), rates
native, _ = load(sys.argv[1]); rate, rates = load(sys.argv[2])
print(f"{sys.argv[3]:>32}: share {100 * rate / native:5.1f}%  cv {100 * statistics.pstdev(rates[1:]) / statistics.mean(rates[1:]):4.1f}%")
PY
    grep -ho -e "turns.*" -e "power:.*" "$out/$shape.$c.$p.err" | head -2
done; done
