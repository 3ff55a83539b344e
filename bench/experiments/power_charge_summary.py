#!/usr/bin/env python3
"""What power_charge_check.sh measured, and what the power charge's gap would have to be.

    python3 power_charge_summary.py OUTDIR

For each cap: the speed-up the GPU's headroom really gave (throughput under
the cap without the power charge, over cap x the native throughput), the
speed-up libvgpu's model (csrc/src/power.h) computes from the same run's
average power with the gap power it assumes (its exit report) and with the
power measured while one thread spins (the GPU busy at its working clocks,
doing next to nothing), and the gap power that would make the model exact.
"""
from __future__ import annotations

import bisect
import json
import re
import statistics
import sys
from pathlib import Path
from typing import List, Optional, Tuple

Row = Tuple[float, float, float, float]  # monotonic s, energy mJ, SM clock MHz, power mW


def samples(path: Path) -> List[Row]:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split(",")
        if len(parts) == 4:
            rows.append(tuple(float(p) for p in parts))  # type: ignore[arg-type]
    return rows  # type: ignore[return-value]


def average_power(rows: List[Row], start: float, end: float) -> float:
    """Watts between two times, from the energy counter (interpolated between samples)."""
    times = [r[0] for r in rows]

    def energy_at(t: float) -> float:
        i = min(max(bisect.bisect_left(times, t), 1), len(rows) - 1)
        a, b = rows[i - 1], rows[i]
        return a[1] + (b[1] - a[1]) * (t - a[0]) / (b[0] - a[0])

    return (energy_at(end) - energy_at(start)) / (end - start) / 1000.0


def run(base: Path) -> Optional[dict]:
    """A worker's rate, the GPU's average power and mean SM clock over its windows, and libvgpu's report."""
    if not base.with_suffix(".json").exists():
        return None
    result = json.loads(base.with_suffix(".json").read_text().splitlines()[-1])
    windows = result["windows"][1:]  # the first holds the start-up
    start, end = result["t0"] + windows[0][0], result["t0"] + windows[-1][1]
    rows = samples(base.with_suffix(".nvml.csv"))
    clocks = [r[2] for r in rows if start <= r[0] <= end]
    err = base.with_suffix(".err").read_text() if base.with_suffix(".err").exists() else ""
    gap = re.search(r"power: \d+ W at rest, (\d+) W taken between turns, limit (\d+) W", err)
    scale = re.search(r"charge scale ([\d.]+)", err)
    return {"rate": sum(w[2] for w in windows) / (end - start), "watts": average_power(rows, start, end),
            "clock": statistics.mean(clocks) if clocks else float("nan"),
            "libvgpu_gap": float(gap.group(1)) if gap else None, "limit": float(gap.group(2)) if gap else None,
            "scale": float(scale.group(1)) if scale else None}


def model_speedup(watts: float, duty: float, gap: float, limit: float) -> float:
    """power.h's speed-up: ((P_full - gap) / (limit - gap))^(1/3), P_full = gap + (P - gap) / duty; 1 at or under the limit."""
    work = (watts - gap) / max(duty, 0.20)
    if gap + work <= limit or work <= 0:
        return 1.0
    return float((work / (limit - gap)) ** (1 / 3))


def fitting_gap(speedup: float, watts: float, duty: float, limit: float) -> Optional[float]:
    """The gap power that makes the model give this speed-up (bisection), or None if none does."""
    lo, hi = 0.0, min(watts, limit) - 1e-6
    if not model_speedup(watts, duty, lo, limit) >= speedup >= model_speedup(watts, duty, hi, limit) or speedup <= 1:
        return None
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if model_speedup(watts, duty, mid, limit) > speedup else (lo, mid)
    return (lo + hi) / 2


def summarize(out: Path) -> List[str]:
    native, spin = run(out / "native"), run(out / "spin")
    if native is None:
        raise SystemExit(f"power_charge_summary: no native run in {out}")
    rest = samples(out / "rest.nvml.csv")
    rest_w = average_power(rest, rest[0][0], rest[-1][0]) if len(rest) > 2 else float("nan")
    lines = [f"at rest {rest_w:.0f} W; native {native['rate']:.1f} it/s at {native['watts']:.0f} W, "
             f"SM clock {native['clock']:.0f} MHz"]
    if spin is not None:
        lines.append(f"one thread spinning: {spin['watts']:.0f} W at {spin['clock']:.0f} MHz (the gap's power, measured)")
    lines.append("cap | speed-up | W | MHz | model, libvgpu's gap | model, spin gap | gap that fits | share with "
                 "the charge (scale)")
    caps = sorted({int(m.group(1)) for p in out.glob("force*_unaware.json")
                   if (m := re.match(r"force(\d+)_unaware", p.stem))})
    for cap in caps:
        plain, charged = run(out / f"force{cap}_unaware"), run(out / f"force{cap}_aware")
        assert plain is not None
        duty = cap / 100
        speedup = plain["rate"] / (duty * native["rate"])
        limit = (charged or {}).get("limit") or native["watts"]
        gap = (charged or {}).get("libvgpu_gap")
        by_libvgpu = f"{model_speedup(plain['watts'], duty, gap, limit):.3f} (gap {gap:.0f} W)" if gap else "-"
        by_spin = f"{model_speedup(plain['watts'], duty, spin['watts'], limit):.3f}" if spin else "-"
        fit = fitting_gap(speedup, plain["watts"], duty, limit)
        share = f"{100 * charged['rate'] / native['rate']:.1f}% ({charged['scale']})" if charged else "-"
        lines.append(f"{cap} | {speedup:.3f} | {plain['watts']:.0f} | {plain['clock']:.0f} | {by_libvgpu} | {by_spin} | "
                     f"{'-' if fit is None else f'{fit:.0f} W'} | {share}")
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.split("\n\n")[1].strip())
    print("\n".join(summarize(Path(sys.argv[1]))))
