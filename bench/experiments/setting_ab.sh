#!/bin/bash
# One of libvgpu's settings at each of its values, on the same shapes alone
# under force: each run's share, CV and windows, and the limiter's report.
# Usage: setting_ab.sh OUTDIR SECONDS NAME "VALUE ..." "SHAPE:SIZE:CAP ..."
# e.g.   setting_ab.sh /tmp/t 30 LIBVGPU_TURN_CHARGE "host gpu" "small:4194304:10 sync:4096:10"
set -u
out=${1:?OUTDIR}; seconds=${2:-10}; name=${3:?NAME}; values=${4:?"VALUE ..."}; runs=${5:?"SHAPE:SIZE:CAP ..."}
source "$(dirname "$0")/common.sh"; mkdir -p "$out"
for r in $runs; do
    IFS=: read -r shape size cap <<< "$r"
    w="$workloads $shape --size $size --seconds $seconds --json"
    [ -f "$out/$shape.$size.native.json" ] || $w > "$out/$shape.$size.native.json" 2>/dev/null
    for value in $values; do
        tag="$shape.$size.$cap.$name=$value"
        env $(slice_env "$cap" force) "$name=$value" $w > "$out/$tag.json" 2> "$out/$tag.err"
        share_summary "$out/$shape.$size.native.json" "$out/$tag.json" "$shape $size $cap% $name=$value" --windows
        limiter_report "$out/$tag.err"
    done
done
