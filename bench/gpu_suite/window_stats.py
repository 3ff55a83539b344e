"""The suite's arithmetic on a worker's windows: rates, steady windows, CV, shares of a native
rate, and the common interval of concurrent tenants. Pure functions; no process is started.

A window is (start, end, iterations), start and end in seconds since the worker's t0
(bench/README.md, "How throughput and shares are computed").
"""
from __future__ import annotations

import statistics
from typing import List, Sequence, Tuple

from .measurements import CV_GOAL, TENANT_TOLERANCE

Window = Tuple[float, float, int]


def rate(windows: Sequence[Window]) -> float:
    """Iterations per second over contiguous windows."""
    if not windows:
        raise ValueError("no windows to take a rate over")
    span = windows[-1][1] - windows[0][0]
    if span <= 0:
        raise ValueError(f"windows span {span} s")
    return sum(w[2] for w in windows) / span


def window_rates(windows: Sequence[Window]) -> List[float]:
    return [w[2] / (w[1] - w[0]) for w in windows]


def first_seconds(windows: Sequence[Window], seconds: float) -> List[Window]:
    """The windows that start within the first `seconds` of the run."""
    return [w for w in windows if w[0] < seconds]


def steady(windows: Sequence[Window]) -> List[Window]:
    """All windows but the first (which holds any start-up transient)."""
    if len(windows) < 2:
        raise ValueError(f"need at least 2 windows, got {len(windows)}: run longer")
    return list(windows[1:])


def coefficient_of_variation(values: Sequence[float]) -> float:
    if len(values) < 2:
        raise ValueError(f"need at least 2 values for a CV, got {len(values)}")
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean else float("inf")


def window_cv(windows: Sequence[Window]) -> float:
    """CV of per-window throughput, the first window excluded."""
    return coefficient_of_variation(window_rates(steady(windows)))


def native_rate(windows: Sequence[Window]) -> float:
    """A native baseline's throughput: its steady windows."""
    return rate(steady(windows))


def common_interval(runs: Sequence[dict]) -> Tuple[float, float]:
    """The absolute interval in which every concurrent run was measuring."""
    lo = max(r["t0"] + r["windows"][0][0] for r in runs)
    hi = min(r["t0"] + r["windows"][-1][1] for r in runs)
    if hi <= lo:
        raise ValueError(f"the runs do not overlap ({lo:.3f} .. {hi:.3f})")
    return lo, hi


def windows_within(run: dict, lo: float, hi: float, slack: float = 1e-6) -> List[Window]:
    """The run's windows that lie wholly inside [lo, hi] (absolute times)."""
    t0 = run["t0"]
    inside = [tuple(w) for w in run["windows"] if t0 + w[0] >= lo - slack and t0 + w[1] <= hi + slack]
    if not inside:
        raise ValueError("no window of the run lies inside the common interval")
    return inside  # type: ignore[return-value]


def within(value: float, target: float, tolerance: float) -> bool:
    return abs(value - target) <= tolerance


def share_stats(windows: Sequence[Window], native: float, cap: float, tolerance: float,
                first_s: float, first_matters: bool = True) -> dict:
    """Achieved share (percent of native throughput) over the whole run and its start, CV, verdict."""
    total = 100.0 * rate(windows) / native
    first = 100.0 * rate(first_seconds(windows, first_s)) / native
    cv = window_cv(windows) if len(windows) >= 3 else None
    failed = []
    if not within(total, cap, tolerance):
        failed.append("share")
    if first_matters and not within(first, cap, tolerance):
        failed.append(f"first {first_s:g} s")
    if first_matters and (cv is None or cv > CV_GOAL):
        failed.append("CV")
    return {"cap": cap, "share": total, "share_first": first, "cv": cv, "tolerance": tolerance,
            "failed": failed}


def concurrent_shares(runs: Sequence[dict], names: Sequence[str], caps: Sequence[int],
                      native: "float | Sequence[float]", first_s: float) -> Tuple[List[dict], float]:
    """Each concurrent tenant's share of its native rate (one for all, or one per tenant),
    over the interval where all were measuring."""
    lo, hi = common_interval(runs)
    natives = list(native) if isinstance(native, (list, tuple)) else [native] * len(runs)
    tenants = []
    for run, name, cap, alone in zip(runs, names, caps, natives):
        inside = windows_within(run, lo, hi)
        tenants.append({"name": name, "rate": rate(inside), "t0": run["t0"], "windows": run["windows"],
                        "stats": share_stats(inside, alone, cap, TENANT_TOLERANCE, first_s,
                                               first_matters=False)})
    return tenants, hi - lo


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
