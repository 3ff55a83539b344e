#!/bin/bash
# Where does a 30% tenant beside a busy 70% matmul (default policy) lose
# throughput? Runs SHAPE at 30% and matmul at 70% together, each with the
# limiter's exit report (time in turns, drains, displacements), and prints
# each one's share of its native rate and its time in turns over the run.
# Usage: mixed_tenants.sh OUTDIR SECONDS "SHAPE ..."
set -u
out=${1:?OUTDIR}; seconds=${2:-20}; shapes=${3:-"graph coop"}
here=$(dirname "$0"); mkdir -p "$out"
lib=$(cd / && python3 -c 'import hami_kernel; print(hami_kernel.library_path())')
native() { [ -f "$out/$1.native.json" ] || python3 $here/../workloads.py $1 --seconds 8 --json > "$out/$1.native.json" 2>/dev/null; }
native matmul
for s in $shapes; do
    native $s
    d=$(mktemp -d)
    mkfifo "$d/go.$s" "$d/go.matmul"
    exec 3<>"$d/go.$s" 4<>"$d/go.matmul"  # held open: the workers' reads do not block on open
    for pair in "$s:30" "matmul:70"; do
        shape=${pair%%:*}; cap=${pair#*:}
        LD_PRELOAD="$lib" CUDA_DEVICE_MEMORY_LIMIT=16g CUDA_DEVICE_SM_LIMIT=$cap GPU_CORE_UTILIZATION_POLICY=default \
            LIBCUDA_LOG_LEVEL=3 CUDA_DEVICE_MEMORY_SHARED_CACHE=$d/$shape.region LIBVGPU_ARBITER_DIR=$d \
            python3 $here/../workloads.py $shape --seconds $seconds --wait-go --json < "$d/go.$shape" \
            > "$out/mix-$s.$shape.json" 2> "$out/mix-$s.$shape.err" &
    done
    until grep -q ready "$out/mix-$s.$s.json" && grep -q ready "$out/mix-$s.matmul.json"; do sleep 0.2; done
    echo go >&3; echo go >&4  # released together, after both have warmed up
    wait; exec 3>&- 4>&-
    for shape in $s matmul; do
        python3 - "$out/$shape.native.json" "$out/mix-$s.$shape.json" "beside $s: $shape" <<'PY'
import json, sys
def load(path):
    r = json.loads(open(path).read().splitlines()[-1]); w = r["windows"][1:-1]
    return sum(n for _, _, n in w) / sum(e - s for s, e, _ in w), r
native, _ = load(sys.argv[1]); rate, r = load(sys.argv[2])
print(f"{sys.argv[3]:>24}: share {100 * rate / native:5.1f}% over its windows but the first and last ({len(r['windows'])} windows)")
PY
        grep -ho -e "turns.*" "$out/mix-$s.$shape.err" | head -1
    done
done
