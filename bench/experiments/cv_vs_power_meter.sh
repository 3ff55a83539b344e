#!/bin/bash
# Does the power meter's NVML sampling (every 0.5 s, on the statistics thread)
# disturb the launching thread? The same shape alone under force, with
# LIBVGPU_POWER_AWARE=1 and =0; prints each run's share, CV and windows.
# Usage: cv_vs_power_meter.sh OUTDIR SECONDS "SHAPE:SIZE:CAP ..."
set -u
out=${1:?OUTDIR}; seconds=${2:-10}; runs=${3:?"SHAPE:SIZE:CAP ..."}
source "$(dirname "$0")/common.sh"; mkdir -p "$out"
for r in $runs; do
    IFS=: read -r shape size cap <<< "$r"
    w="$workloads $shape --size $size --seconds $seconds --json"
    [ -f "$out/$shape.$size.native.json" ] || $w > "$out/$shape.$size.native.json" 2>/dev/null
    for aware in 1 0; do
        tag="$shape.$size.$cap.aware$aware"
        env $(slice_env "$cap" force) LIBVGPU_POWER_AWARE=$aware $w > "$out/$tag.json" 2> "$out/$tag.err"
        share_summary "$out/$shape.$size.native.json" "$out/$tag.json" "$tag" --windows
        limiter_report "$out/$tag.err"
    done
done
