#!/usr/bin/env python3
"""GPU benchmark suite for libvgpu: each measurement natively and under the library, in one run.

    python3 bench/suite.py [--quick] [--only NAME[,NAME]] [--out FILE] [--long-seconds 200]
    python3 bench/suite.py --dry-run ...        # print the plan and its time estimate only
    python3 bench/suite.py --render FILE ...    # print the tables of saved results again

Measurements (names for --only): launch, matmul, share, tenants, init, fourtenants.
bench/README.md says what each one measures and how shares are computed.

Every worker is a separate process (bench/workloads.py, or --worker-cmd) with
a clean environment: the caller's, minus LD_PRELOAD and every variable that
libvgpu reads. Native workers get nothing more; hooked workers get
LD_PRELOAD=<libvgpu> plus the slice's variables, a fresh region file per
tenant (per measurement) and one fresh arbiter directory per measurement.
Progress goes to stderr; the markdown tables to stdout at the end; all raw
numbers to --out (JSON), rewritten after every step.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
MEASUREMENTS = ("launch", "matmul", "share", "tenants", "init", "fourtenants")
SHARE_SHAPES = ("matmul", "small", "sync")
SHARE_CAPS = (10, 30, 50, 70)
HELD_SHAPES = ("graph", "coop")  # in the tenants measurement: a 30/70 pair of each, 30 beside a matmul at 70, and 30 alone
HELD_CAP = 30
TENANT_CAPS = (30, 70)
FOUR_TENANT_CAP = 25

# Goals shown in the tables.
MATMUL_RATIO_GOAL = 0.995        # hooked / native TFLOP/s, at least
SHARE_TOLERANCE = 2.0            # points of the cap, alone under force
CV_GOAL = 0.05                   # stdev / mean of per-window throughput, at most
TENANT_TOLERANCE = 3.0           # points of the cap, concurrent tenants
INIT_EXTRA_MS_GOAL = 20.0        # hooked minus native per-process init, at most
INIT_BATCH_RATIO_GOAL = 1.2      # hooked / native wall time of the batch, at most
AGGREGATE_GOAL = 0.95            # four tenants together / one alone, at least

MEMORY_LIMIT = "16g"             # every hooked tenant's VRAM slice
INIT_BATCH_MEMORY_LIMIT = "48g"  # the one slice of the init batch: 64 contexts of ~0.5 GiB
GIB = 1 << 30
DIRTY_PATHS_SHOWN = 8            # uncommitted paths named in a report's source line

# Rough costs, for the plan's time estimate only.
# Seen on an H100 (2026-11-24): ~6 s for a torch worker with 1 s of warm-up, ~1.5 s for a CuPy one.
TORCH_START_S = 7.0    # import torch, CUDA context, cuBLAS, warm-up
CUPY_START_S = 2.5     # import cupy, CUDA context, cached kernel
LAUNCH_S = 7e-6        # one empty launch through CuPy's RawKernel call

SLICE_VARIABLES = ("CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_SM_LIMIT", "GPU_CORE_UTILIZATION_POLICY",
                   "CUDA_DEVICE_MEMORY_SHARED_CACHE", "LIBCUDA_LOG_LEVEL", "LIBVGPU_")


# =========================================================================== durations

@dataclass(frozen=True)
class Durations:
    """Every length of the suite; --quick divides the times by about 10."""
    share_s: float = 30.0
    baseline_s: float = 10.0
    tenants_s: float = 30.0
    fourtenants_s: float = 30.0
    window_s: float = 0.5
    warmup_s: float = 1.0
    first_s: float = 10.0
    launches: int = 200_000
    warmup_launches: int = 10_000
    launch_repeats: int = 5
    matmul_size: int = 8192
    matmul_products: int = 1000
    rounds: int = 5
    init_sequential: int = 10
    init_batch: int = 64

    @classmethod
    def make(cls, quick: bool = False, long_seconds: Optional[float] = None) -> "Durations":
        durations = cls()
        if quick:
            durations = replace(durations, share_s=3.0, baseline_s=1.5, tenants_s=3.0,
                                fourtenants_s=3.0, warmup_s=0.3, launches=20_000,
                                warmup_launches=2_000, launch_repeats=2, matmul_products=100, rounds=3,
                                init_sequential=3)
        if long_seconds is not None:
            durations = replace(durations, share_s=float(long_seconds))
        return durations


# =========================================================================== statistics
# A window is (start, end, iterations), start and end in seconds since the worker's t0.

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


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# =========================================================================== table formatting

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


# =========================================================================== environments

def parse_size(text: str) -> int:
    """'16g', '4096m', '1024k' or bytes, 1024-based (as libvgpu reads CUDA_DEVICE_MEMORY_LIMIT)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def clean_env(base: Dict[str, str]) -> Dict[str, str]:
    """The caller's environment minus LD_PRELOAD and everything libvgpu reads."""
    env = {k: v for k, v in base.items()
           if k != "LD_PRELOAD" and not any(k.startswith(p) for p in SLICE_VARIABLES)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class Slice:
    """What makes a worker hooked: its slice's variables. None for a native worker."""
    region: str
    arbiter_dir: str
    memory_limit: str = MEMORY_LIMIT
    sm_limit: Optional[int] = None
    policy: Optional[str] = None
    extra: Tuple[Tuple[str, str], ...] = ()  # --slice-env settings, the same for every slice of a run

    def variables(self, library: str) -> Dict[str, str]:
        env = {"LD_PRELOAD": library, "CUDA_DEVICE_MEMORY_LIMIT": self.memory_limit,
               "CUDA_DEVICE_MEMORY_SHARED_CACHE": self.region, "LIBVGPU_ARBITER_DIR": self.arbiter_dir}
        env.update(self.extra)
        if self.sm_limit is not None:
            env["CUDA_DEVICE_SM_LIMIT"] = str(self.sm_limit)
        if self.policy is not None:
            env["GPU_CORE_UTILIZATION_POLICY"] = self.policy
        return env


def worker_env(base: Dict[str, str], library: str, slice_: Optional[Slice]) -> Dict[str, str]:
    env = clean_env(base)
    if slice_ is not None:
        env.update(slice_.variables(library))
    return env


# =========================================================================== worker processes

class WorkerFailed(RuntimeError):
    pass


@dataclass
class Timeouts:
    ready_s: float = 300.0   # start-up and warm-up, until "ready"
    margin_s: float = 180.0  # beyond the expected run time
    factor: float = 2.0      # times the expected run time
    kill_grace_s: float = 5.0

    def run(self, expected_s: float) -> float:
        return self.factor * expected_s + self.margin_s


@dataclass
class WorkerSpec:
    name: str
    program: str
    args: List[str]
    slice: Optional[Slice] = None


class Worker:
    """One worker process. stdout and stderr go to files, so no pipe can fill and stall it;
    stdin is a pipe that carries the "go" of the ready handshake."""

    def __init__(self, spec: WorkerSpec, argv: List[str], env: Dict[str, str], logdir: Path,
                 handshake: bool):
        self.spec = spec
        self.argv = argv
        self.env = env
        self.stdout_path = logdir / f"{spec.name}.out"
        self.stderr_path = logdir / f"{spec.name}.err"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True,
                                         stdin=subprocess.PIPE if handshake else subprocess.DEVNULL,
                                         start_new_session=True)  # its own group: killable as a whole
        self.ended: Optional[float] = None

    def poll(self) -> Optional[int]:
        rc = self.proc.poll()
        if rc is not None and self.ended is None:
            self.ended = time.monotonic()
        return rc

    def stdout_lines(self) -> List[str]:
        return self.stdout_path.read_text(errors="replace").splitlines()

    def is_ready(self) -> bool:
        return "ready" in (line.strip() for line in self.stdout_lines())

    def release(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            raise WorkerFailed(self.report("it was gone when released")) from None

    def wait(self, deadline: float) -> None:
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise WorkerFailed(self.report("timed out; killed")) from None
        self.poll()

    def stop(self, grace_s: float) -> None:
        """Ends the worker's process group if it still runs: SIGTERM, then SIGKILL."""
        if self.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def result(self) -> dict:
        if self.proc.returncode != 0:
            raise WorkerFailed(self.report(f"exited with status {self.proc.returncode}"))
        for line in reversed(self.stdout_lines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError as exc:
                    raise WorkerFailed(self.report(f"printed bad JSON: {exc}")) from None
        raise WorkerFailed(self.report("printed no JSON result"))

    @property
    def exit_time(self) -> float:
        """When the worker was seen to have exited (time.monotonic())."""
        if self.ended is None:
            raise RuntimeError(f"worker {self.spec.name} has not ended")
        return self.ended

    @property
    def wall_s(self) -> float:
        return self.exit_time - self.started

    def report(self, reason: str, tail: int = 40) -> str:
        slice_vars = {k: v for k, v in self.env.items()
                      if k == "LD_PRELOAD" or any(k.startswith(p) for p in SLICE_VARIABLES)}
        stderr = self.stderr_path.read_text(errors="replace").splitlines()[-tail:]
        stdout = [line[:300] for line in self.stdout_lines()[-5:]]
        return "\n".join([
            f"worker {self.spec.name} {reason}",
            f"  command: {shlex.join(self.argv)}",
            f"  slice env: {slice_vars or '(native)'}",
            f"  stdout (last lines): {stdout}",
            "  stderr (last lines):",
            *("    " + line for line in stderr),
        ])


class WorkerGroup:
    """Workers that run together; leaving the `with` ends any that still run."""

    def __init__(self, ctx: "Context", logdir: Path):
        self.ctx = ctx
        self.logdir = logdir
        self.workers: List[Worker] = []

    def __enter__(self) -> "WorkerGroup":
        return self

    def __exit__(self, *exc) -> None:
        for worker in self.workers:
            worker.stop(self.ctx.timeouts.kill_grace_s)

    def start(self, spec: WorkerSpec, handshake: bool) -> Worker:
        argv = self.ctx.worker_argv(spec.program, spec.args)
        env = worker_env(self.ctx.base_env, self.ctx.library, spec.slice)
        worker = Worker(spec, argv, env, self.logdir, handshake)
        self.workers.append(worker)
        return worker

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ctx.timeouts.ready_s
        pending = list(self.workers)
        while pending:
            for worker in list(pending):
                if worker.is_ready():
                    pending.remove(worker)
                elif worker.poll() is not None:
                    raise WorkerFailed(worker.report(f"exited with status {worker.proc.returncode} "
                                                     "before it was ready"))
            if pending and time.monotonic() > deadline:
                raise WorkerFailed(pending[0].report(
                    f"was not ready after {self.ctx.timeouts.ready_s:g} s; killed"))
            if pending:
                time.sleep(0.05)

    def release_all(self) -> None:
        for worker in self.workers:
            worker.release()

    def wait_all(self, expected_s: float) -> List[dict]:
        deadline = time.monotonic() + self.ctx.timeouts.run(expected_s)
        for worker in self.workers:
            worker.wait(deadline)
        return [worker.result() for worker in self.workers]


# =========================================================================== context

@dataclass
class Context:
    """What every step needs: durations, how to start workers, the library, native baselines."""
    durations: Durations
    worker_cmd: List[str]
    library: str
    slice_env: Dict[str, str] = field(default_factory=dict)  # --slice-env: more of libvgpu's settings
    base_env: Dict[str, str] = field(default_factory=lambda: dict(os.environ))
    timeouts: Timeouts = field(default_factory=Timeouts)
    baselines: Dict[str, dict] = field(default_factory=dict)
    workdir: Optional[Path] = None  # this step's temporary directory

    def worker_argv(self, program: str, args: Sequence[str]) -> List[str]:
        return [*self.worker_cmd, program, *args, "--json"]

    def step_dir(self) -> Path:
        assert self.workdir is not None, "steps run inside run_step()"
        return self.workdir

    def new_slice(self, tenant: str, **kwargs) -> Slice:
        """A fresh slice: a region path no process has used, in this step's directory."""
        region = self.step_dir() / f"{tenant}.region"
        if region.exists():
            raise RuntimeError(f"region {region} already used in this step")
        return Slice(region=str(region), arbiter_dir=str(self.step_dir() / "arbiter"),
                     extra=tuple(sorted(self.slice_env.items())), **kwargs)

    def baseline(self, shape: str) -> dict:
        if shape not in self.baselines:
            raise RuntimeError(f"no native baseline for shape {shape!r}: its baseline step failed or did not run")
        return self.baselines[shape]


def check_worker(result: dict, spec: WorkerSpec) -> None:
    """Proves that a worker ran the way it claims: hooked ones inside their slice, native ones free."""
    loaded = result.get("libvgpu_loaded")
    if spec.slice is None:
        if loaded:
            raise WorkerFailed(f"worker {spec.name} is meant to be native but has libvgpu loaded")
        return
    if not loaded:
        raise WorkerFailed(f"worker {spec.name} is meant to be hooked but libvgpu is not loaded "
                           "(LD_PRELOAD did not take effect)")
    limit = parse_size(spec.slice.memory_limit)
    if result.get("mem_total", limit + 1) > limit:
        raise WorkerFailed(f"worker {spec.name}: the device reports {result.get('mem_total')} bytes, "
                           f"more than its slice of {limit}: the slice is not in effect")


def run_alone(ctx: Context, spec: WorkerSpec, expected_s: float) -> Tuple[dict, float]:
    """One worker, no handshake; returns its result and its spawn-to-exit wall time."""
    with WorkerGroup(ctx, ctx.step_dir()) as group:
        worker = group.start(spec, handshake=False)
        [result] = group.wait_all(expected_s)
    check_worker(result, spec)
    return result, worker.wall_s


def run_together(ctx: Context, specs: Sequence[WorkerSpec], seconds: float) -> List[dict]:
    """Window workers started together, released together once all are ready."""
    with WorkerGroup(ctx, ctx.step_dir()) as group:
        for spec in specs:
            group.start(spec, handshake=True)
        group.wait_ready()
        group.release_all()
        results = group.wait_all(seconds)
    for result, spec in zip(results, specs):
        check_worker(result, spec)
    return results


def window_args(ctx: Context, seconds: float) -> List[str]:
    d = ctx.durations
    return ["--seconds", f"{seconds:g}", "--window", f"{d.window_s:g}", "--warmup-seconds",
            f"{d.warmup_s:g}", "--wait-go"]


def paired_rounds(ctx: Context, program: str, args: List[str], rounds: int, expected_s: float
                  ) -> Tuple[List[dict], List[dict]]:
    """Native and hooked processes in alternating order (N H, H N, ...), so drift cancels."""
    native: List[dict] = []
    hooked: List[dict] = []
    for i in range(rounds):
        for is_hooked in ((False, True) if i % 2 == 0 else (True, False)):
            name = f"{program}-{'hooked' if is_hooked else 'native'}-{i}"
            slice_ = ctx.new_slice(name) if is_hooked else None
            result, _ = run_alone(ctx, WorkerSpec(name, program, args, slice_), expected_s)
            (hooked if is_hooked else native).append(result)
    return native, hooked


# =========================================================================== steps

@dataclass
class Step:
    label: str
    estimate_s: float
    run: Callable[[Context], dict]  # returns the step's record; its "note" goes on the progress line
    essential: bool = False         # a failure stops the suite (preflight)


def start_cost(shape: str) -> float:
    return CUPY_START_S if shape == "coop" else TORCH_START_S


def step_preflight(d: Durations) -> Step:
    def run(ctx: Context) -> dict:
        native, _ = run_alone(ctx, WorkerSpec("info-native", "info", []), 60)
        hooked, _ = run_alone(ctx, WorkerSpec("info-hooked", "info", [], ctx.new_slice("info")), 60)
        return {"measurement": "info", "native": native, "hooked": hooked,
                "note": f"{native['device']}, torch {native['torch']}, cupy {native['cupy']}; "
                        f"hooked sees {hooked['mem_total'] / GIB:.1f} GiB"}
    return Step("preflight: device, versions, libvgpu loads", 2 * (TORCH_START_S + CUPY_START_S), run,
                essential=True)


def paired_record(measurement: str, key: str, native: List[dict], hooked: List[dict]) -> dict:
    """Medians of a paired native/hooked measurement and their ratio."""
    n = [r[key] for r in native]
    h = [r[key] for r in hooked]
    return {"measurement": measurement, "native_runs": n, "hooked_runs": h, "native": median(n),
            "hooked": median(h), "ratio": median(h) / median(n)}


def step_launch(d: Durations) -> Step:
    def run(ctx: Context) -> dict:
        args = ["--launches", str(d.launches), "--warmup-launches", str(d.warmup_launches),
                "--repeats", str(d.launch_repeats)]
        record = paired_record("launch", "ns_per_launch", *paired_rounds(ctx, "launch", args, d.rounds, 30))
        record.update(launches=d.launches, repeats=d.launch_repeats)
        record["note"] = f"{record['native']:.0f} vs {record['hooked']:.0f} ns/launch ({record['ratio']:.3f})"
        return record
    per_process = CUPY_START_S + (d.launches * d.launch_repeats + d.warmup_launches) * LAUNCH_S
    return Step(f"launch: {d.launch_repeats} x {d.launches} empty launches per process, "
                f"{d.rounds} rounds native/hooked",
                2 * d.rounds * per_process, run)


def step_matmul(d: Durations) -> Step:
    def run(ctx: Context) -> dict:
        args = ["--size", str(d.matmul_size), "--products", str(d.matmul_products),
                "--warmup-seconds", f"{d.warmup_s:g}"]
        record = paired_record("matmul", "tflops", *paired_rounds(ctx, "tflops", args, d.rounds, 60))
        record.update(size=d.matmul_size, products=d.matmul_products)
        record["note"] = f"{record['native']:.1f} vs {record['hooked']:.1f} TFLOP/s ({record['ratio']:.4f})"
        return record
    per_process = TORCH_START_S + d.warmup_s + d.matmul_products * 2 * d.matmul_size ** 3 / 700e12
    return Step(f"matmul: bf16 {d.matmul_size}³ x {d.matmul_products}, {d.rounds} rounds native/hooked",
                2 * d.rounds * per_process, run)


def step_baseline(d: Durations, shape: str) -> Step:
    def run(ctx: Context) -> dict:
        spec = WorkerSpec(f"{shape}-native", shape, window_args(ctx, d.baseline_s))
        [result] = run_together(ctx, [spec], d.baseline_s)
        record = {"measurement": "baseline", "shape": shape, "windows": result["windows"],
                  "rate": native_rate(result["windows"]), "iteration": result.get("iteration", "")}
        ctx.baselines[shape] = record
        record["note"] = f"{record['rate']:.1f} iterations/s"
        return record
    return Step(f"native baseline: {shape} alone for {d.baseline_s:g} s", start_cost(shape) + d.baseline_s, run)


def describe_share(stats: dict) -> str:
    cv = "—" if stats["cv"] is None else f"{100 * stats['cv']:.1f}%"
    return (f"share {stats['share']:.1f}% (first {stats['share_first']:.1f}%), CV {cv}: "
            f"{verdict(stats['failed'])}")


def held_step(d: Durations, measurement: str, shape: str, cap: int, seconds: float, label: str) -> Step:
    """One worker alone under a force cap; its share of its native baseline."""
    def run(ctx: Context) -> dict:
        native = ctx.baseline(shape)["rate"]
        name = f"{shape}-force-{cap}"
        spec = WorkerSpec(name, shape, window_args(ctx, seconds), ctx.new_slice(name, sm_limit=cap, policy="force"))
        [result] = run_together(ctx, [spec], seconds)
        stats = share_stats(result["windows"], native, cap, SHARE_TOLERANCE, d.first_s)
        return {"measurement": measurement, "shape": shape, "cap": cap, "policy": "force",
                "native_rate": native, "windows": result["windows"], "stats": stats,
                "note": describe_share(stats)}
    return Step(label, start_cost(shape) + seconds, run)


def step_share(d: Durations, shape: str, cap: int) -> Step:
    return held_step(d, "share", shape, cap, d.share_s, f"share: force {cap}% {shape} for {d.share_s:g} s")


def step_held(d: Durations, shape: str) -> Step:
    return held_step(d, "held", shape, HELD_CAP, d.tenants_s,
                     f"tenants: {shape} alone at force {HELD_CAP}% for {d.tenants_s:g} s")


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


def run_tenants(ctx: Context, shape: "str | Sequence[str]", caps: Sequence[int], policy: str, seconds: float,
                native: "float | Sequence[float]") -> Tuple[List[dict], float]:
    """Tenants in separate slices, one worker each (one shape for all, or one each), released together."""
    shapes = [shape] * len(caps) if isinstance(shape, str) else list(shape)
    names = [f"T{i}-{cap}" if isinstance(shape, str) else f"T{i}-{s}-{cap}"
             for i, (s, cap) in enumerate(zip(shapes, caps))]
    specs = [WorkerSpec(name, s, window_args(ctx, seconds),
                        ctx.new_slice(name, sm_limit=cap, policy=policy))
             for name, s, cap in zip(names, shapes, caps)]
    runs = run_together(ctx, specs, seconds)
    return concurrent_shares(runs, [f"{n}%" for n in names], caps, native, ctx.durations.first_s)


def shares_text(tenants: Sequence[dict]) -> str:
    return " ".join(f"{t['stats']['share']:.1f}%" for t in tenants)


def step_tenants(d: Durations, shape: str = "matmul") -> Step:
    """Two busy tenants of one shape at 30% and 70%, default policy: each held to its share."""
    def run(ctx: Context) -> dict:
        native = ctx.baseline(shape)["rate"]
        tenants, overlap = run_tenants(ctx, shape, TENANT_CAPS, "default", d.tenants_s, native)
        return {"measurement": "tenants", "label": f"30/70 {shape}", "policy": "default", "shape": shape,
                "native_rate": native, "tenants": tenants, "overlap_s": overlap,
                "note": "shares " + shares_text(tenants)}
    return Step(f"tenants: 30% and 70% {shape} tenants at once, default policy, {d.tenants_s:g} s",
                start_cost(shape) + d.tenants_s, run)


def step_mixed(d: Durations, shape: str) -> Step:
    """A graph or cooperative-launch tenant at 30% beside a busy matmul tenant at 70% (default policy)."""
    def run(ctx: Context) -> dict:
        natives = [ctx.baseline(shape)["rate"], ctx.baseline("matmul")["rate"]]
        tenants, overlap = run_tenants(ctx, [shape, "matmul"], TENANT_CAPS, "default", d.tenants_s, natives)
        return {"measurement": "tenants", "label": f"{shape} 30 / matmul 70", "policy": "default",
                "shape": shape, "native_rate": natives, "tenants": tenants, "overlap_s": overlap,
                "note": "shares " + shares_text(tenants)}
    return Step(f"tenants: {shape} at 30% beside a matmul at 70%, default policy, {d.tenants_s:g} s",
                start_cost(shape) + TORCH_START_S + d.tenants_s, run)


def step_fourtenants(d: Durations) -> Step:
    """One matmul worker alone natively (measured right before, same length), then four capped ones."""
    def run(ctx: Context) -> dict:
        seconds = d.fourtenants_s
        alone = WorkerSpec("exclusive-native", "matmul", window_args(ctx, seconds))
        [exclusive_run] = run_together(ctx, [alone], seconds)
        exclusive = native_rate(exclusive_run["windows"])
        tenants, overlap = run_tenants(ctx, "matmul", [FOUR_TENANT_CAP] * 4, "default", seconds, exclusive)
        aggregate_rate = sum(t["rate"] for t in tenants)
        return {"measurement": "fourtenants", "label": f"4 x {FOUR_TENANT_CAP}% matmul", "policy": "default",
                "exclusive_rate": exclusive, "exclusive_windows": exclusive_run["windows"],
                "aggregate_rate": aggregate_rate, "aggregate": aggregate_rate / exclusive,
                "tenants": tenants, "overlap_s": overlap,
                "note": f"aggregate {aggregate_rate / exclusive:.3f}, shares " + shares_text(tenants)}
    return Step(f"fourtenants: matmul alone (native), then 4 x {FOUR_TENANT_CAP}% at once, "
                f"{d.fourtenants_s:g} s each", 2 * (TORCH_START_S + d.fourtenants_s), run)


def step_init_sequential(d: Durations) -> Step:
    def run(ctx: Context) -> dict:
        runs: Dict[bool, List[Tuple[dict, float]]] = {False: [], True: []}
        for i in range(d.init_sequential):
            for hooked in ((False, True) if i % 2 == 0 else (True, False)):
                name = f"init-{'hooked' if hooked else 'native'}-{i}"
                spec = WorkerSpec(name, "init", [], ctx.new_slice(name) if hooked else None)
                runs[hooked].append(run_alone(ctx, spec, expected_s=30))
        init = {h: [result["init_ms"] for result, _ in runs[h]] for h in runs}
        wall = {h: [seconds * 1e3 for _, seconds in runs[h]] for h in runs}
        record = {"measurement": "init_sequential", "native_init_ms": init[False], "hooked_init_ms": init[True],
                  "native_wall_ms": wall[False], "hooked_wall_ms": wall[True],
                  "native": median(init[False]), "hooked": median(init[True]),
                  "native_wall": median(wall[False]), "hooked_wall": median(wall[True])}
        record["note"] = f"init {record['native']:.1f} vs {record['hooked']:.1f} ms"
        return record
    return Step(f"init: {d.init_sequential} processes one after another, native and hooked",
                2 * d.init_sequential * CUPY_START_S, run)


def init_batch(ctx: Context, count: int, hooked: bool) -> dict:
    """`count` init workers spawned at once; wall time from the first spawn to the last exit.
    Hooked, they all share ONE slice (one region): the case that HAMi-core serializes."""
    slice_ = ctx.new_slice("init-batch", memory_limit=INIT_BATCH_MEMORY_LIMIT) if hooked else None
    mode = "hooked" if hooked else "native"
    specs = [WorkerSpec(f"batch-{mode}-{i}", "init", [], slice_) for i in range(count)]
    with WorkerGroup(ctx, ctx.step_dir()) as group:
        start = time.monotonic()
        for spec in specs:
            group.start(spec, handshake=False)
        results = group.wait_all(expected_s=60)
        wall = max(worker.exit_time for worker in group.workers) - start
    for result, spec in zip(results, specs):
        check_worker(result, spec)
    return {"wall_s": wall, "init_ms": [r["init_ms"] for r in results]}


def step_init_batch(d: Durations) -> Step:
    def run(ctx: Context) -> dict:
        native = init_batch(ctx, d.init_batch, hooked=False)
        hooked = init_batch(ctx, d.init_batch, hooked=True)
        record = {"measurement": "init_batch", "processes": d.init_batch,
                  "native_wall_s": native["wall_s"], "hooked_wall_s": hooked["wall_s"],
                  "ratio": hooked["wall_s"] / native["wall_s"],
                  "native_init_ms": native["init_ms"], "hooked_init_ms": hooked["init_ms"],
                  "native_init_ms_median": median(native["init_ms"]), "native_init_ms_max": max(native["init_ms"]),
                  "hooked_init_ms_median": median(hooked["init_ms"]), "hooked_init_ms_max": max(hooked["init_ms"])}
        record["note"] = (f"{record['native_wall_s']:.2f} vs {record['hooked_wall_s']:.2f} s "
                          f"({record['ratio']:.3f})")
        return record
    return Step(f"init: {d.init_batch} processes at once, native then hooked (one shared slice)",
                2 * (CUPY_START_S + d.init_batch * 0.3), run)


@dataclass(frozen=True)
class Selection:
    """What to run: measurements, and for share, which shapes and caps."""
    names: Tuple[str, ...] = MEASUREMENTS
    shapes: Tuple[str, ...] = SHARE_SHAPES
    caps: Tuple[int, ...] = SHARE_CAPS


def baseline_shapes(name: str, sel: Selection) -> Tuple[str, ...]:
    return {"share": sel.shapes, "tenants": ("matmul",) + HELD_SHAPES}.get(name, ())


def measurement_steps(name: str, d: Durations, sel: Selection) -> List[Step]:
    if name == "launch":
        return [step_launch(d)]
    if name == "matmul":
        return [step_matmul(d)]
    if name == "share":
        return [step_share(d, shape, cap) for shape in sel.shapes for cap in sel.caps]
    if name == "tenants":
        return ([step_tenants(d, shape) for shape in ("matmul",) + HELD_SHAPES]
                + [step_mixed(d, shape) for shape in HELD_SHAPES]
                + [step_held(d, shape) for shape in HELD_SHAPES])
    if name == "init":
        return [step_init_sequential(d), step_init_batch(d)]
    if name == "fourtenants":
        return [step_fourtenants(d)]
    raise ValueError(f"unknown measurement {name!r}")


def plan(sel: Selection, d: Durations) -> List[Step]:
    """The steps of the selected measurements in suite order, each native baseline before its first use."""
    steps = [step_preflight(d)]
    measured: set = set()
    for name in MEASUREMENTS:
        if name not in sel.names:
            continue
        for shape in baseline_shapes(name, sel):
            if shape not in measured:
                measured.add(shape)
                steps.append(step_baseline(d, shape))
        steps.extend(measurement_steps(name, d, sel))
    return steps


# =========================================================================== running the plan

def clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_step(ctx: Context, step: Step) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="hami-bench-"))
    ctx.workdir = workdir
    try:
        record = step.run(ctx)
    finally:
        ctx.workdir = None
        shutil.rmtree(workdir, ignore_errors=True)
    record["label"] = record.get("label", step.label)
    record["step"] = step.label
    return record


def run_plan(ctx: Context, steps: Sequence[Step], on_progress: Callable[[List[dict], List[dict]], None]
             ) -> Tuple[List[dict], List[dict]]:
    """Runs the steps; a failed step is recorded and the suite goes on (unless it is essential)."""
    records: List[dict] = []
    errors: List[dict] = []
    started = time.monotonic()
    for i, step in enumerate(steps, 1):
        prefix = f"[{i}/{len(steps)}]"
        log(f"{prefix} {step.label} ... (est {clock_text(step.estimate_s)}, "
            f"elapsed {clock_text(time.monotonic() - started)})")
        step_start = time.monotonic()
        try:
            record = run_step(ctx, step)
        except Exception as exc:  # a step's failure is reported, the suite goes on
            message = str(exc) or repr(exc)
            errors.append({"label": step.label, "error": message})
            log(f"{prefix} FAILED after {time.monotonic() - step_start:.1f} s: {step.label}\n{message}")
            on_progress(records, errors)
            if step.essential:
                log("stopping: this step must pass for any other to mean anything")
                break
            continue
        record["seconds"] = time.monotonic() - step_start
        records.append(record)
        log(f"{prefix} done in {record['seconds']:.1f} s: {record.get('note', '')}")
        on_progress(records, errors)
    return records, errors


# =========================================================================== metadata, output

def command_output(argv: Sequence[str], cwd: Optional[Path] = None) -> Optional[str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def find_library() -> str:
    """libvgpu as installed (run from /, so that the source tree's hami_kernel is not imported)."""
    done = subprocess.run([sys.executable, "-c", "import hami_kernel; print(hami_kernel.library_path())"],
                          capture_output=True, text=True, cwd="/", timeout=60)
    if done.returncode != 0:
        raise SystemExit("suite: cannot find the installed libvgpu (pip install . first, or pass --library):\n"
                         + done.stderr.strip())
    return done.stdout.strip()


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def metadata(args: argparse.Namespace, library: str, d: Durations) -> dict:
    git = command_output(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT)
    status = command_output(["git", "status", "--porcelain"], cwd=REPO_ROOT) or ""
    # The paths themselves, so that a reader can tell an edit to the code from a stray file.
    dirty = [line.split(None, 1)[-1] for line in status.splitlines() if line.strip()][:DIRTY_PATHS_SHOWN]
    return {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]) if args.argv is None else shlex.join(args.argv),
        "host": platform.node(),
        "gpu": command_output(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"]),
        "git_commit": git, "git_dirty": dirty, "library": library,
        "library_sha256": file_sha256(library), "durations": asdict(d),
    }


def write_json(path: Optional[Path], data: dict) -> None:
    if path is None:
        return
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    temporary.replace(path)


# =========================================================================== command line

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about 10x shorter runs, for smoke tests")
    parser.add_argument("--only", type=choices(MEASUREMENTS), default=MEASUREMENTS, metavar="NAME[,NAME]",
                        help="run only these measurements: " + ", ".join(MEASUREMENTS))
    parser.add_argument("--shapes", type=choices(SHARE_SHAPES), default=SHARE_SHAPES, metavar="SHAPE[,SHAPE]",
                        help="share measurement: only these shapes (" + ", ".join(SHARE_SHAPES) + ")")
    parser.add_argument("--caps", type=percents, default=SHARE_CAPS, metavar="CAP[,CAP]",
                        help="share measurement: these caps in percent (default "
                             + ",".join(map(str, SHARE_CAPS)) + ")")
    parser.add_argument("--out", type=Path, help="write all raw numbers here (JSON)")
    parser.add_argument("--long-seconds", type=positive_seconds, metavar="S",
                        help="run each share measurement for S seconds (the long run) instead of 30")
    parser.add_argument("--library", help="libvgpu.so to preload (default: the installed one)")
    parser.add_argument("--slice-env", type=slice_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="one more libvgpu setting for every hooked worker, such as "
                             "LIBVGPU_TURN_CHARGE=gpu (repeatable; the slice's own variables cannot be set)")
    parser.add_argument("--worker-cmd", type=shlex.split, metavar="CMD",
                        default=[sys.executable, str(BENCH_DIR / "workloads.py")],
                        help="command that starts a worker (default: python3 bench/workloads.py)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its estimate, run nothing")
    parser.add_argument("--render", type=Path, nargs="+", metavar="FILE",
                        help="print the tables of saved --out files, run nothing")
    args = parser.parse_args(argv)
    args.argv = None if argv is None else ["bench/suite.py", *argv]
    return args


def choices(allowed: Sequence[str]) -> Callable[[str], Tuple[str, ...]]:
    """An argparse type: a comma-separated list of names from `allowed`."""
    def parse(text: str) -> Tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown or repr(text)}; choose from {', '.join(allowed)}")
        return names
    return parse


SLICE_OWN = ("LD_PRELOAD", "CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_SM_LIMIT", "GPU_CORE_UTILIZATION_POLICY",
             "CUDA_DEVICE_MEMORY_SHARED_CACHE", "LIBVGPU_ARBITER_DIR")


def slice_setting(text: str) -> Tuple[str, str]:
    """An argparse type: NAME=VALUE for one of libvgpu's LIBVGPU_* or LIBCUDA_* settings."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith(("LIBVGPU_", "LIBCUDA_")):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE for a LIBVGPU_* or LIBCUDA_* setting")
    if name in SLICE_OWN or name.startswith(("CUDA_DEVICE_SM_LIMIT", "CUDA_DEVICE_MEMORY_LIMIT")):
        raise argparse.ArgumentTypeError(f"{name} is set by each measurement's slice")
    return name, value


def percents(text: str) -> Tuple[int, ...]:
    try:
        caps = tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers") from None
    if not caps or any(not 1 <= c <= 99 for c in caps):
        raise argparse.ArgumentTypeError("caps are percents from 1 to 99")
    return caps


def positive_seconds(text: str) -> float:
    value = float(text)
    if value < 2:
        raise argparse.ArgumentTypeError("needs at least 2 seconds")
    return value


def render_files(paths: Sequence[Path]) -> str:
    """The tables of one or more saved runs (say, the suite run in parts); the header is the first's."""
    records: List[dict] = []
    errors: List[dict] = []
    for path in paths:
        data = json.loads(path.read_text())
        records += data["records"]
        errors += data["errors"]
    return render_report(records, errors, json.loads(paths[0].read_text())["suite"])


def print_plan(steps: Sequence[Step]) -> None:
    total = sum(s.estimate_s for s in steps)
    log(f"plan: {len(steps)} steps, estimated {clock_text(total)} of GPU time")
    for i, step in enumerate(steps, 1):
        log(f"  [{i}/{len(steps)}] {step.label} (est {clock_text(step.estimate_s)})")


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[Sequence[str]] = None, timeouts: Optional[Timeouts] = None,
         durations: Optional[Durations] = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(render_files(args.render))
        return 0
    d = durations or Durations.make(args.quick, args.long_seconds)
    steps = plan(Selection(args.only, args.shapes, args.caps), d)
    print_plan(steps)
    if args.dry_run:
        return 0
    library = args.library or find_library()
    if not Path(library).is_file():
        raise SystemExit(f"suite: libvgpu {library!r} is not a file")
    library = str(Path(library).resolve())
    ctx = Context(durations=d, worker_cmd=args.worker_cmd, library=library, timeouts=timeouts or Timeouts(),
                  slice_env=dict(args.slice_env))
    meta = metadata(args, library, d)
    meta["slice_env"] = dict(args.slice_env)
    data: Dict[str, object] = {"suite": meta, "records": [], "errors": []}

    def save(records: List[dict], errors: List[dict]) -> None:
        data.update(records=records, errors=errors)
        write_json(args.out, data)

    previous = signal.signal(signal.SIGTERM, interrupt)  # so that a kill ends the workers too
    try:
        records, errors = run_plan(ctx, steps, save)
    except KeyboardInterrupt:
        meta["interrupted"] = True
        write_json(args.out, data)
        print(render_report(data["records"], data["errors"], meta))  # type: ignore[arg-type]
        log("interrupted; workers ended; partial results kept" + (f" in {args.out}" if args.out else ""))
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    meta["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(args.out, data)
    print(render_report(records, errors, meta))
    if errors:
        log(f"{len(errors)} step(s) failed; see the messages above" + (f" and {args.out}" if args.out else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
