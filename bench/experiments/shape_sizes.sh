#!/bin/bash
# Which sizes make a shape measure the GPU rather than the host: for each
# SHAPE:SIZE, a native run (its 0.5 s-window CV, and the GPU's utilization as
# nvidia-smi samples it), then the same alone under force at each cap.
# Usage: shape_sizes.sh OUTDIR SECONDS "SHAPE:SIZE ..." "CAPS" [PERIOD_MS]
set -u
out=${1:?OUTDIR}; seconds=${2:-8}; candidates=${3:?"SHAPE:SIZE ..."}; caps=${4:-"30 70"}; period=${5:-20}
here=$(dirname "$0"); mkdir -p "$out"
lib=$(cd / && python3 -c 'import hami_kernel; print(hami_kernel.library_path())')
summary() {  # native.json run.json label [utilization file]
    python3 - "$@" <<'PY'
import json, statistics, sys
def load(path):
    r = json.loads(open(path).read().splitlines()[-1])
    rates = [n / (e - s) for s, e, n in r["windows"]][1:]
    return sum(n for _, _, n in r["windows"][1:]) / sum(e - s for s, e, _ in r["windows"][1:]), rates
native, _ = load(sys.argv[1]); rate, rates = load(sys.argv[2])
line = (f"{sys.argv[3]:>34}: {rate:9.1f} it/s  share {100 * rate / native:5.1f}%  "
        f"cv {100 * statistics.pstdev(rates) / statistics.mean(rates):4.1f}%  "
        f"windows {100 * min(rates) / native:.1f}..{100 * max(rates) / native:.1f}%")
if len(sys.argv) > 4:
    util = [float(x) for x in open(sys.argv[4]).read().split() if x.strip().replace('.', '', 1).isdigit()]
    util = util[2:-2] or util
    if util:
        line += f"  nvidia-smi utilization {statistics.mean(util):5.1f}%"
print(line)
PY
}
for c in $candidates; do
    shape=${c%%:*}; size=${c#*:}; tag="$shape.$size"
    w="python3 $here/../workloads.py $shape --size $size --seconds $seconds --json"
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$out/$tag.util" &
    smi=$!
    $w > "$out/$tag.native.json" 2> "$out/$tag.native.err"
    kill $smi; wait $smi 2>/dev/null
    summary "$out/$tag.native.json" "$out/$tag.native.json" "$tag native" "$out/$tag.util"
    for cap in $caps; do
        d=$(mktemp -d)
        LD_PRELOAD="$lib" CUDA_DEVICE_MEMORY_LIMIT=16g CUDA_DEVICE_SM_LIMIT=$cap GPU_CORE_UTILIZATION_POLICY=force \
            LIBVGPU_SHARE_PERIOD_MS=$period LIBCUDA_LOG_LEVEL=3 CUDA_DEVICE_MEMORY_SHARED_CACHE=$d/region \
            LIBVGPU_ARBITER_DIR=$d $w > "$out/$tag.$cap.json" 2> "$out/$tag.$cap.err"
        summary "$out/$tag.native.json" "$out/$tag.$cap.json" "$tag force $cap% ($period ms)"
        grep -ho -e "turns.*" -e "power:.*" "$out/$tag.$cap.err" | head -2
    done
done
