#!/usr/bin/env python3
"""One line on a window worker's run against its native run (bench/workloads.py JSON).

    share_summary.py NATIVE.json RUN.json LABEL [--windows] [--trim-last] [--util FILE]

Rates leave out the first window (start-up), as bench/suite.py does for its
baselines; --trim-last leaves out the last one too (tenants that did not end
together). Prints the rate, the share of the native rate, the CV over the
windows and their range; --windows adds each window's share, --util the mean
of nvidia-smi utilization samples in FILE (one number a line). Rate and CV
are the suite's own, so an experiment's numbers read like the suite's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpu_suite.window_stats import (coefficient_of_variation, rate as windows_rate, steady,  # noqa: E402
                                   window_rates)


def load(path: str, trim_last: bool = False) -> Tuple[float, List[float]]:
    """(rate, per-window rates) of a worker's last JSON line, first window (and maybe last) left out."""
    with open(path) as f:
        run = json.loads(f.read().splitlines()[-1])
    windows = steady(run["windows"]) if len(run["windows"]) > 1 else []
    if trim_last:
        windows = windows[:-1]
    if not windows:
        raise SystemExit(f"share_summary: {path} has too few windows")
    return windows_rate(windows), window_rates(windows)


def summary(native: float, rate: float, rates: Sequence[float], label: str, each: bool = False) -> str:
    shares = [100 * r / native for r in rates]
    cv = coefficient_of_variation(rates) if len(rates) > 1 else 0.0
    line = (f"{label:>34}: {rate:9.1f} it/s  share {100 * rate / native:5.1f}%  cv {100 * cv:4.1f}%  "
            f"windows {min(shares):.1f}..{max(shares):.1f}%")
    if each:
        line += "  [" + " ".join(f"{s:.1f}" for s in shares) + "]"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("native")
    parser.add_argument("run")
    parser.add_argument("label")
    parser.add_argument("--windows", action="store_true", help="each window's share too")
    parser.add_argument("--trim-last", action="store_true", help="leave out the run's last window")
    parser.add_argument("--util", help="nvidia-smi utilization samples to average")
    args = parser.parse_args(argv)
    native, _ = load(args.native)
    rate, rates = load(args.run, args.trim_last)
    line = summary(native, rate, rates, args.label, args.windows)
    if args.util:
        with open(args.util) as f:
            samples = [float(x) for x in f.read().split() if x.replace(".", "", 1).isdigit()]
        samples = samples[2:-2] or samples  # start and end of the run are not the shape
        if samples:
            line += f"  nvidia-smi utilization {statistics.mean(samples):5.1f}%"
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
