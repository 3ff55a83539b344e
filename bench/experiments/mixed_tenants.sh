#!/bin/bash
# Where does a 30% tenant beside a busy 70% matmul (default policy) lose
# throughput? Runs SHAPE at 30% and matmul at 70% together, each with the
# limiter's exit report (time in turns, drains, displacements), and prints
# each one's share of its native rate and its time in turns over the run.
# Usage: mixed_tenants.sh OUTDIR SECONDS "SHAPE ..."
set -u
out=${1:?OUTDIR}; seconds=${2:-20}; shapes=${3:-"graph coop"}
source "$(dirname "$0")/common.sh"; mkdir -p "$out"
native() { [ -f "$out/$1.native.json" ] || $workloads $1 --seconds 8 --json > "$out/$1.native.json" 2>/dev/null; }
native matmul
for s in $shapes; do
    native $s
    d=$(mktemp -d)
    mkfifo "$d/go.$s" "$d/go.matmul"
    exec 3<>"$d/go.$s" 4<>"$d/go.matmul"  # held open: the workers' reads do not block on open
    for pair in "$s:30" "matmul:70"; do
        shape=${pair%%:*}; cap=${pair#*:}
        env $(slice_env "$cap" default "$d" "$shape") \
            $workloads $shape --seconds $seconds --wait-go --json < "$d/go.$shape" \
            > "$out/mix-$s.$shape.json" 2> "$out/mix-$s.$shape.err" &
    done
    until grep -qs ready "$out/mix-$s.$s.json" && grep -qs ready "$out/mix-$s.matmul.json"; do sleep 0.2; done
    echo go >&3; echo go >&4  # released together, after both have warmed up
    wait; exec 3>&- 4>&-
    for shape in $s matmul; do
        share_summary "$out/$shape.native.json" "$out/mix-$s.$shape.json" "beside $s: $shape" --trim-last
        limiter_report "$out/mix-$s.$shape.err"
    done
done
