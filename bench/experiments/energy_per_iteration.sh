#!/bin/bash
# Energy per iteration of a shape (SHAPE=matmul by default: 4096^3 bf16), natively (GPU saturated, power-limited) and
# under force caps (GPU at partial duty, clocks free to rise): is the work's
# energy nearly constant while its time is not? Usage: energy_per_iteration.sh OUTDIR [SECONDS] [CAPS...]
set -u
out=${1:?OUTDIR}; seconds=${2:-8}; shift 2 || true
caps=${*:-10 30 70}
source "$(dirname "$0")/common.sh"; mkdir -p "$out"
run() {
    local name=$1; shift
    python3 "$here/energy_sampler.py" "$out/$name.nvml.csv" 5 & local s=$!
    sleep 1.5
    env "$@" $workloads "${SHAPE:-matmul}" --seconds "$seconds" --json > "$out/$name.json" 2> "$out/$name.err"
    sleep 1.5; kill $s; wait $s 2>/dev/null
    python3 - "$out/$name" <<'PY'
import json, sys, bisect
base = sys.argv[1]
r = json.loads(open(base + ".json").read().splitlines()[-1])
w = r["windows"]; t0 = r["t0"]
start, end = t0 + w[0][0], t0 + w[-1][1]
rows = [tuple(map(float, l.split(","))) for l in open(base + ".nvml.csv")]
ts = [x[0] for x in rows]
def energy_at(t):
    i = min(max(bisect.bisect_left(ts, t), 1), len(rows) - 1)
    a, b = rows[i - 1], rows[i]
    return a[1] + (b[1] - a[1]) * (t - a[0]) / (b[0] - a[0])
idle = [x for x in rows if x[0] < start - 1.0]
p_idle = (idle[-1][1] - idle[0][1]) / (idle[-1][0] - idle[0][0]) if len(idle) > 2 else float("nan")
tail = [x for x in rows if x[0] > end + 0.3]
p_after = (tail[-1][1] - tail[0][1]) / (tail[-1][0] - tail[0][0]) if len(tail) > 2 else float("nan")
e = energy_at(end) - energy_at(start); dur = end - start
it = r["iterations"]
changes = sum(1 for a, b in zip(rows, rows[1:]) if b[1] != a[1] and start < a[0] < end)
busy_clk = [x[2] for x in rows if start < x[0] < end]
print(f"{base.split('/')[-1]:>10}: {it/dur:7.1f} it/s  avg power {e/dur/1000:6.1f} W  idle before {p_idle/1000:5.1f} W after {p_after/1000:5.1f} W  "
      f"energy/it {e/it:6.1f} mJ  dyn energy/it (minus idle-before) {(e - p_idle*dur)/it:6.1f} mJ  "
      f"counter steps {changes/dur:5.0f}/s  mean clk {sum(busy_clk)/len(busy_clk):5.0f}")
PY
}
run native
for c in $caps; do
    run "force$c" $(slice_env $c force)
done
