#!/bin/bash
# Throughput share and 0.5 s-window CV of one shape alone under force, for
# several caps and share periods (LIBVGPU_SHARE_PERIOD_MS).
# Usage: share_vs_period.sh OUTDIR SHAPE SECONDS "CAPS" "PERIODS"
set -u
out=${1:?OUTDIR}; shape=${2:?SHAPE}; seconds=${3:-8}; caps=${4:-30}; periods=${5:-20}
source "$(dirname "$0")/common.sh"; mkdir -p "$out"
w="$workloads $shape --seconds $seconds --json"
$w > "$out/$shape.native.json" 2>/dev/null
for c in $caps; do for p in $periods; do
    env $(slice_env "$c" force) LIBVGPU_SHARE_PERIOD_MS=$p $w > "$out/$shape.$c.$p.json" 2> "$out/$shape.$c.$p.err"
    share_summary "$out/$shape.native.json" "$out/$shape.$c.$p.json" "$shape force $c% period $p ms"
    limiter_report "$out/$shape.$c.$p.err"
done; done
