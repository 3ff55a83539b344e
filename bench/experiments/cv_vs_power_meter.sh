#!/bin/bash
# Does the power meter's NVML sampling (every 0.5 s, on the statistics thread)
# disturb the launching thread? The same shape alone under force, with
# LIBVGPU_POWER_AWARE=1 and =0; prints each run's share, CV and window range.
# Usage: cv_vs_power_meter.sh OUTDIR SECONDS "SHAPE:SIZE:CAP ..."
set -u
out=${1:?OUTDIR}; seconds=${2:-10}; runs=${3:?"SHAPE:SIZE:CAP ..."}
here=$(dirname "$0"); mkdir -p "$out"
lib=$(cd / && python3 -c 'import hami_kernel; print(hami_kernel.library_path())')
for r in $runs; do
    IFS=: read -r shape size cap <<< "$r"
    w="python3 $here/../workloads.py $shape --size $size --seconds $seconds --json"
    [ -f "$out/$shape.$size.native.json" ] || $w > "$out/$shape.$size.native.json" 2>/dev/null
    for aware in 1 0; do
        d=$(mktemp -d); tag="$shape.$size.$cap.aware$aware"
        LD_PRELOAD="$lib" CUDA_DEVICE_MEMORY_LIMIT=16g CUDA_DEVICE_SM_LIMIT=$cap GPU_CORE_UTILIZATION_POLICY=force \
            LIBVGPU_POWER_AWARE=$aware LIBCUDA_LOG_LEVEL=3 CUDA_DEVICE_MEMORY_SHARED_CACHE=$d/region \
            LIBVGPU_ARBITER_DIR=$d $w > "$out/$tag.json" 2> "$out/$tag.err"
        python3 - "$out/$shape.$size.native.json" "$out/$tag.json" "$tag" <<'PY'
import json, statistics, sys
def load(path):
    r = json.loads(open(path).read().splitlines()[-1])
    w = r["windows"][1:]
    return sum(n for _, _, n in w) / sum(e - s for s, e, _ in w), [n / (e - s) for s, e, n in w]
native, _ = load(sys.argv[1]); rate, rates = load(sys.argv[2])
pct = [100 * x / native for x in rates]
print(f"{sys.argv[3]:>28}: share {100 * rate / native:5.1f}%  cv {100 * statistics.pstdev(rates) / statistics.mean(rates):4.1f}%  "
      f"windows " + " ".join(f"{p:.1f}" for p in pct))
PY
        grep -ho -e "turns.*" -e "power:.*" "$out/$tag.err" | head -2
    done
done
