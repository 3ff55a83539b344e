"""The markdown report: the header (date, device, software, command, source) and the tables
of overheads, compute shares and native baselines, each row with its goal and verdict; also
for saved runs (--render)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .measurements import (AGGREGATE_GOAL, CV_GOAL, FOUR_TENANT_CAP, INIT_BATCH_RATIO_GOAL, INIT_EXTRA_MS_GOAL,
                           MATMUL_RATIO_GOAL, SHARE_TOLERANCE, TENANT_TOLERANCE)


def fmt(value: Optional[float], digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A markdown table; align has one 'l' or 'r' per column. Columns are padded to line up."""
    if len(align) != len(headers) or any(len(row) != len(headers) for row in rows):
        raise ValueError("every row and the alignment need one entry per header")
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    widths = [max(w, 3) for w in widths]

    def line(cells: Sequence[str]) -> str:
        padded = [str(c).rjust(w) if a == "r" else str(c).ljust(w) for c, w, a in zip(cells, widths, align)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                          for w, a in zip(widths, align)) + "|"
    return "\n".join([line(headers), rule] + [line(r) for r in rows])


def verdict(failed: Optional[Sequence[str]]) -> str:
    """'ok', 'FAIL: what' or '—' (None: no goal)."""
    if failed is None:
        return "—"
    return "ok" if not failed else "FAIL: " + ", ".join(failed)


OVERHEAD_HEADERS = ("measurement", "native", "hooked", "hooked vs native", "goal", "result")
SHARE_HEADERS = ("run", "policy", "cap %", "share %", "first 10 s %", "CV %", "goal", "result")


def overhead_row(what: str, native: str, hooked: str, ratio: str, goal: str,
                 failed: Optional[Sequence[str]]) -> List[str]:
    return [what, native, hooked, ratio, goal, verdict(failed)]


def share_row(run: str, policy: str, stats: dict, goal: str) -> List[str]:
    cv = None if stats["cv"] is None else 100.0 * stats["cv"]
    return [run, policy, fmt(stats["cap"], 0), fmt(stats["share"]), fmt(stats["share_first"]),
            fmt(cv), goal, verdict(stats["failed"])]


def share_goal(cap: float, tolerance: float, with_cv: bool) -> str:
    goal = f"{cap:g} ± {tolerance:g}"
    return goal + f", CV ≤ {100 * CV_GOAL:g}%" if with_cv else goal


def rows_launch(r: dict) -> List[List[str]]:
    what = (f"launch: ns per empty kernel launch (median of {len(r['native_runs'])} processes, "
            f"each the median of {r.get('repeats', 1)} x {r['launches']})")
    return [overhead_row(what, fmt(r["native"], 0), fmt(r["hooked"], 0), fmt(r["ratio"], 3), "—", None)]


def rows_matmul(r: dict) -> List[List[str]]:
    what = f"matmul: bf16 {r['size']}³ TFLOP/s (median of {len(r['native_runs'])})"
    failed = [] if r["ratio"] >= MATMUL_RATIO_GOAL else ["ratio"]
    return [overhead_row(what, fmt(r["native"]), fmt(r["hooked"]), fmt(r["ratio"], 4),
                         f"≥ {MATMUL_RATIO_GOAL}", failed)]


def rows_init_sequential(r: dict) -> List[List[str]]:
    n = len(r["native_init_ms"])
    extra = r["hooked"] - r["native"]
    return [
        overhead_row(f"init: per-process CUDA init ms (median of {n})", fmt(r["native"]), fmt(r["hooked"]),
                     f"{extra:+.1f} ms", f"≤ +{INIT_EXTRA_MS_GOAL:g} ms",
                     [] if extra <= INIT_EXTRA_MS_GOAL else ["extra"]),
        overhead_row(f"init: per-process spawn→exit ms (median of {n})", fmt(r["native_wall"]),
                     fmt(r["hooked_wall"]), fmt(r["hooked_wall"] / r["native_wall"], 3), "—", None),
    ]


def rows_init_batch(r: dict) -> List[List[str]]:
    n = r["processes"]
    failed = [] if r["ratio"] <= INIT_BATCH_RATIO_GOAL else ["ratio"]
    return [
        overhead_row(f"init: {n} processes at once, spawn→last exit s", fmt(r["native_wall_s"], 2),
                     fmt(r["hooked_wall_s"], 2), fmt(r["ratio"], 3), f"≤ {INIT_BATCH_RATIO_GOAL}", failed),
        overhead_row(f"init: {n} at once, CUDA init ms median / max",
                     f"{fmt(r['native_init_ms_median'])} / {fmt(r['native_init_ms_max'])}",
                     f"{fmt(r['hooked_init_ms_median'])} / {fmt(r['hooked_init_ms_max'])}", "—", "—", None),
    ]


def rows_fourtenants_overhead(r: dict) -> List[List[str]]:
    failed = [] if r["aggregate"] >= AGGREGATE_GOAL else ["aggregate"]
    return [overhead_row(f"fourtenants: matmul iterations/s, 1 alone (native) vs 4 x {FOUR_TENANT_CAP}% together",
                         fmt(r["exclusive_rate"]), fmt(r["aggregate_rate"]), fmt(r["aggregate"], 3),
                         f"≥ {AGGREGATE_GOAL}", failed)]


def rows_shares(r: dict) -> List[List[str]]:
    kind = r["measurement"]
    if kind in ("share", "held"):
        run = f"{r['shape']} alone" if kind == "share" else f"{r['shape']} alone (tenants)"
        return [share_row(run, r["policy"], r["stats"], share_goal(r["cap"], SHARE_TOLERANCE, True))]
    return [share_row(f"{r['label']}: {t['name']}", r["policy"], t["stats"],
                      share_goal(t["stats"]["cap"], TENANT_TOLERANCE, False))
            for t in r["tenants"]]


OVERHEAD_ROWS: Dict[str, Callable[[dict], List[List[str]]]] = {
    "launch": rows_launch, "matmul": rows_matmul, "init_sequential": rows_init_sequential,
    "init_batch": rows_init_batch, "fourtenants": rows_fourtenants_overhead,
}
SHARE_KINDS = ("share", "held", "tenants", "fourtenants")


def baseline_rows(records: Sequence[dict]) -> List[List[str]]:
    return [[r["shape"], fmt(r["rate"]), str(len(r["windows"])), fmt(r["windows"][-1][1], 1),
             r.get("iteration", "")]
            for r in records if r["measurement"] == "baseline"]


def render_header(meta: dict, records: Sequence[dict]) -> List[str]:
    """Date, device, software and command: what bench/RESULTS.md records above the tables."""
    info: dict = next((r["native"] for r in records if r["measurement"] == "info"), {})
    device = meta.get("gpu") or info.get("device", "unknown")
    software = (f"PyTorch {info['torch']} (CUDA {info.get('torch_cuda')}), CuPy {info['cupy']}, "
                f"Python {info.get('python')}") if info else "unknown (the preflight did not run)"
    dirty = meta.get("git_dirty")
    changed = f" + uncommitted changes ({', '.join(dirty)})" if isinstance(dirty, list) and dirty else (
        " + uncommitted changes" if dirty else "")
    commit = f"{meta.get('git_commit') or 'unknown'}{changed}"
    return [f"- **Date:** {meta.get('started', 'unknown')}", f"- **Device:** {device}",
            f"- **Software:** {software}", f"- **Command:** `{meta.get('command', 'unknown')}`",
            f"- **Source:** {commit}; libvgpu sha256 {str(meta.get('library_sha256', ''))[:16]}"] + (
        [f"- **libvgpu settings:** {' '.join(f'{k}={v}' for k, v in sorted(meta['slice_env'].items()))}"]
        if meta.get("slice_env") else []) + [""]


def render_report(records: Sequence[dict], errors: Sequence[dict], meta: Optional[dict] = None) -> str:
    """All tables, in markdown: overheads, compute shares, native baselines, errors, a tally."""
    overhead = [row for r in records if r["measurement"] in OVERHEAD_ROWS
                for row in OVERHEAD_ROWS[r["measurement"]](r)]
    shares = [row for r in records if r["measurement"] in SHARE_KINDS for row in rows_shares(r)]
    parts = render_header(meta, records) if meta else []
    if overhead:
        parts += ["### Overhead: native vs libvgpu", "", markdown_table(OVERHEAD_HEADERS, overhead, "lrrrll")]
    if shares:
        parts += ["", "### Compute shares (share = hooked throughput / native throughput alone)", "",
                  markdown_table(SHARE_HEADERS, shares, "llrrrrll")]
    baselines = baseline_rows(records)
    if baselines:
        parts += ["", "### Native baselines (alone, no library)", "",
                  markdown_table(("shape", "iterations/s", "windows", "seconds", "iteration"), baselines,
                                 "lrrrl")]
    if errors:
        parts += ["", "### Errors", ""] + [f"- **{e['label']}**: {first_line(e['error'])}" for e in errors]
    results = [row[-1] for row in overhead + shares if row[-1] != "—"]
    failed = sum(1 for r in results if r.startswith("FAIL"))
    parts += ["", f"**{len(results) - failed} of {len(results)} checks met their goal; "
                  f"{len(errors)} step(s) failed to run.**"]
    return "\n".join(parts).lstrip("\n")


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "(no message)"


def render_files(paths: Sequence[Path]) -> str:
    """The tables of one or more saved runs (say, the suite run in parts); the header is the first's."""
    records: List[dict] = []
    errors: List[dict] = []
    for path in paths:
        data = json.loads(path.read_text())
        records += data["records"]
        errors += data["errors"]
    return render_report(records, errors, json.loads(paths[0].read_text())["suite"])
