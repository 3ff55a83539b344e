"""Benchmark workers started together, with a watchdog that says what a stuck one was doing.

A worker prints "ready" (after its start-up and warm-up), waits for "go" on
stdin, runs, and prints one JSON line. :func:`together` releases all of a
measurement's workers at once and collects their JSON. Their stdout and
stderr are read by threads from the start, so a worker that writes a lot to
stderr never blocks on a full pipe while another is waited for.

A worker that does not get ready or does not finish in time raises
:class:`Stuck`, whose ``report`` tells, for every process of every unfinished
worker (a pod's worker runs under ``unshare`` and ``sh``), its state, the
kernel function it sleeps in and each thread's kernel stack, then what Python
printed of its threads' tracebacks (workers run with ``PYTHONFAULTHANDLER=1``
and are sent SIGABRT), before the workers are killed. A benchmark can then
record the stuck measurement and go on with the next one.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import List, Sequence

TAIL = 20_000  # characters of a worker's stderr kept for reports


class WorkerFailed(Exception):
    """A worker that exited before it was ready, or with an error; the message holds its output."""


class Stuck(Exception):
    """Workers that did not get ready or finish in time; ``report`` says what each was doing."""

    def __init__(self, what: str, report: str):
        super().__init__(what)
        self.report = report


class _Output:
    """Reads one worker's stdout (lines) and stderr (its tail) as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: List[str] = []
        self.err = ""
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._out, args=(proc.stdout,), daemon=True),
                        threading.Thread(target=self._err, args=(proc.stderr,), daemon=True)]
        for t in self.threads:
            t.start()

    def _out(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            with self.lock:
                self.lines.append(line)

    def _err(self, stream) -> None:  # type: ignore[no-untyped-def]
        for chunk in iter(lambda: stream.read(4096), ""):
            with self.lock:
                self.err = (self.err + chunk)[-TAIL:]

    @property
    def closed(self) -> bool:
        return not self.threads[0].is_alive()

    def ready(self) -> bool:
        with self.lock:
            return any(line.strip() == "ready" for line in self.lines)

    def join(self, timeout: float = 10) -> None:
        for t in self.threads:
            t.join(timeout)

    def text(self) -> str:
        with self.lock:
            return "".join(self.lines)


def descendants(pid: int, proc: str = "/proc") -> List[int]:
    """pid and every process below it, parents first."""
    children: dict = {}
    for entry in os.listdir(proc):
        if entry.isdigit():
            try:
                stat = Path(proc, entry, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        found.append(p)
        todo.extend(sorted(children.get(p, [])))
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError as exc:
        return f"({exc.strerror})"


def process_report(pid: int, proc: str = "/proc") -> str:
    """A process's command, state and, per thread, where it sleeps in the kernel."""
    base = Path(proc, str(pid))
    lines = [f"pid {pid}: {_read(base / 'cmdline').replace(chr(0), ' ')}"]
    status = _read(base / "status")
    lines += [f"  {line}" for line in status.splitlines() if line.startswith(("State", "Uid"))]
    try:
        tasks = sorted(os.listdir(base / "task"), key=int)
    except OSError:
        tasks = []
    for tid in tasks:
        task = base / "task" / tid
        lines.append(f"  thread {tid} ({_read(task / 'comm')}): waits in {_read(task / 'wchan') or '-'}")
        lines += [f"    {frame}" for frame in _read(task / "stack").splitlines()]
    return "\n".join(lines)


def stuck_report(procs: Sequence[subprocess.Popen], outputs: Sequence[_Output], proc: str = "/proc") -> str:
    """What every unfinished worker is doing; then their Python tracebacks; then they are killed."""
    parts = []
    stuck = [(p, o) for p, o in zip(procs, outputs) if p.poll() is None]
    trees = {p.pid: descendants(p.pid, proc) for p, _ in stuck}
    for p, _ in stuck:
        parts.append("\n".join(process_report(pid, proc) for pid in trees[p.pid]))
    for p, _ in stuck:
        for pid in trees[p.pid]:
            if "python" in _read(Path(proc, str(pid), "comm")):
                try:
                    os.kill(pid, signal.SIGABRT)  # faulthandler prints every thread's traceback
                except OSError:
                    pass
    time.sleep(2)
    for p, _ in stuck:
        for pid in reversed(trees[p.pid]):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        p.wait(10)
    for p, o in zip(procs, outputs):
        o.join()
        state = "did not finish" if any(p is q for q, _ in stuck) else f"exited {p.returncode}"
        parts.append(f"--- worker {p.pid}: {state}; its stdout:\n{o.text()[-2000:]}\n--- its stderr:\n{o.err}")
    return "\n\n".join(parts)


def together(procs: Sequence[subprocess.Popen], timeout: float = 240, ready_timeout: float = 120) -> List[dict]:
    """Waits for every worker's "ready", says "go" to all at once, and collects their JSON.

    Stuck when one is not ready within ready_timeout seconds or the last has not
    finished timeout seconds after "go"; WorkerFailed when one exits first or fails."""
    outputs = [_Output(p) for p in procs]
    deadline = time.monotonic() + ready_timeout
    for p, o in zip(procs, outputs):
        while not o.ready():
            if o.closed:  # a library may print something of its own first; an exit is final
                p.wait(30)
                o.join()
                raise WorkerFailed(f"a worker did not get ready: {o.text()[-3000:]}\n{o.err[-3000:]}")
            if time.monotonic() > deadline:
                raise Stuck(f"a worker did not get ready in {ready_timeout:.0f} s", stuck_report(procs, outputs))
            time.sleep(0.02)
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    deadline = time.monotonic() + timeout
    results = []
    for p, o in zip(procs, outputs):
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise Stuck(f"a worker did not finish {timeout:.0f} s after go", stuck_report(procs, outputs)) from None
        o.join()
        if p.returncode != 0:
            raise WorkerFailed(f"a worker failed ({p.returncode}):\n{o.text()[-3000:]}\n{o.err[-3000:]}")
        results.append(json.loads(o.text().strip().splitlines()[-1]))
    return results
