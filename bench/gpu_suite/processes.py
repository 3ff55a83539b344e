"""Worker processes: starting them with their environment, the ready/go handshake, time
limits, killing a whole process group, reading a worker's JSON result, reporting a failure
with its stderr; and the check that a worker ran the way it claims (hooked or native)."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from .environment import SLICE_VARIABLES, Slice, parse_size, worker_env

if TYPE_CHECKING:  # only for the annotations: Context imports Timeouts from here
    from .context import Context


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
