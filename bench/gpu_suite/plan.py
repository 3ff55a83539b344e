"""The plan: the steps of the selected measurements in suite order, each native baseline
before its first use; printing it with its estimate, and running it with one progress line
per step on stderr (a failed step is recorded and the suite goes on)."""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

from .context import Context
from .measurements import HELD_SHAPES, MEASUREMENTS, SHARE_CAPS, SHARE_SHAPES, Durations
from .steps import (Step, step_baseline, step_fourtenants, step_held, step_init_batch, step_init_sequential,
                    step_launch, step_matmul, step_mixed, step_preflight, step_share, step_tenants)


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


def clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_plan(steps: Sequence[Step]) -> None:
    total = sum(s.estimate_s for s in steps)
    log(f"plan: {len(steps)} steps, estimated {clock_text(total)} of GPU time")
    for i, step in enumerate(steps, 1):
        log(f"  [{i}/{len(steps)}] {step.label} (est {clock_text(step.estimate_s)})")


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

