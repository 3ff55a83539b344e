"""The measurement steps: each step_* makes one Step (its label, its time estimate, and what
it runs), which starts its workers and returns the step's record for the JSON and the tables."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

from .context import Context
from .measurements import (FOUR_TENANT_CAP, HELD_CAP, INIT_BATCH_MEMORY_LIMIT, SHARE_TOLERANCE, TENANT_CAPS,
                           Durations)
from .processes import WorkerGroup, WorkerSpec, check_worker, run_alone, run_together
from .report import verdict
from .window_stats import concurrent_shares, median, native_rate, share_stats

GIB = 1 << 30

# Rough costs, for the plan's time estimate only.
# Seen on an H100 (2026-11-24): ~6 s for a torch worker with 1 s of warm-up, ~1.5 s for a CuPy one.
TORCH_START_S = 7.0    # import torch, CUDA context, cuBLAS, warm-up
CUPY_START_S = 2.5     # import cupy, CUDA context, cached kernel
LAUNCH_S = 7e-6        # one empty launch through CuPy's RawKernel call


@dataclass
class Step:
    label: str
    estimate_s: float
    run: Callable[[Context], dict]  # returns the step's record; its "note" goes on the progress line
    essential: bool = False         # a failure stops the suite (preflight)


def start_cost(shape: str) -> float:
    return CUPY_START_S if shape == "coop" else TORCH_START_S


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
