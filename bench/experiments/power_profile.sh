#!/bin/bash
# Instant-power distribution of 4096^3 bf16 matmuls, natively and under force
# caps. Usage: power_profile.sh OUTDIR [SECONDS] [CAPS...]
set -u
out=${1:?OUTDIR}; seconds=${2:-6}; shift 2 || true
caps=${*:-10 30 70}
source "$(dirname "$0")/common.sh"; mkdir -p "$out"
run() {
    local name=$1; shift
    env "$@" $workloads "${SHAPE:-matmul}" --seconds "$seconds" --warmup-seconds 0.2 --json > "$out/$name.json" 2> "$out/$name.err" &
    local w=$!
    sleep 3
    python3 "$here/instant_power.py" "$out/$name.power" & local s=$!
    wait $w; kill $s; wait $s 2>/dev/null
    python3 -c "
import json,sys; r=json.loads(open('$out/$name.json').read().splitlines()[-1])
print('$name', round(r['iterations']/sum(w[1]-w[0] for w in r['windows']),1), 'it/s;', open('$out/$name.power').read().strip())"
}
run native
for c in $caps; do
    run "force$c" $(slice_env $c force)
done
