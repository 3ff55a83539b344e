#!/bin/bash
# Which sizes make a shape measure the GPU rather than the host: for each
# SHAPE:SIZE, a native run (its 0.5 s-window CV, and the GPU's utilization as
# nvidia-smi samples it), then the same alone under force at each cap.
# Usage: shape_sizes.sh OUTDIR SECONDS "SHAPE:SIZE ..." "CAPS" [PERIOD_MS]
set -u
out=${1:?OUTDIR}; seconds=${2:-8}; candidates=${3:?"SHAPE:SIZE ..."}; caps=${4:-"30 70"}; period=${5:-20}
source "$(dirname "$0")/common.sh"; mkdir -p "$out"
for c in $candidates; do
    shape=${c%%:*}; size=${c#*:}; tag="$shape.$size"
    w="$workloads $shape --size $size --seconds $seconds --json"
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$out/$tag.util" &
    smi=$!
    $w > "$out/$tag.native.json" 2> "$out/$tag.native.err"
    kill $smi; wait $smi 2>/dev/null
    share_summary "$out/$tag.native.json" "$out/$tag.native.json" "$tag native" --util "$out/$tag.util"
    for cap in $caps; do
        env $(slice_env "$cap" force) LIBVGPU_SHARE_PERIOD_MS=$period $w > "$out/$tag.$cap.json" 2> "$out/$tag.$cap.err"
        share_summary "$out/$tag.native.json" "$out/$tag.$cap.json" "$tag force $cap% ($period ms)"
        limiter_report "$out/$tag.$cap.err"
    done
done
