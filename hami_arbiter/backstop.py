"""The backstop: the driver's own per-process figures, summed per slice, against the slice's limit.

libvgpu holds a slice to its VRAM limit inside every process that loads it.
The backstop is for the rest: a process that escaped libvgpu (a static
binary, a tampered region, a bug) shows up in the driver's books all the
same.  Every ``interval`` (0.25 s) it reads NVML's running compute processes
on each GPU, asks the arbiter which slice each pid is in (``slice_of``), and
sums the memory the driver says each slice's processes hold there.

- **A slice over its limit** on a GPU is reported at once: one line in the
  daemon's log and an event for the slice's users (below).  "Over" allows
  ``slack`` (128 MiB) per process of the slice on that GPU: memory the
  driver holds for a process that libvgpu does not charge (kernel code
  loaded after its context was measured, the driver's rounding).
- **With action "kill"** (the default), if the slice is still over after the
  grace (``grace``, 1 s), its *offending process* is SIGKILLed: of the
  slice's processes on that GPU, the one holding the most memory there (of
  equals, the youngest).  That is the process whose death frees the most;
  it is usually the one that escaped, since libvgpu's processes stay within
  what the slice has left.  The killed process's memory no longer counts
  against the slice while the driver frees it, and the grace starts again:
  if the slice is still over after it, the next one goes.
- **With action "report"** nothing is ever killed; the events say so.
- **Outside any slice**: a process the arbiter cannot place in a slice (a
  host process, a container without a slice file) is reported once in the
  log and never killed, unless ``outside = "kill"`` (and action "kill"):
  then, on a node where every GPU user must be in a slice, it is killed
  after the grace.
- **A slice at its limit**, or one with no memory limit, is left alone.

A process is always named by its pid *and* start time.  A pid whose
process changed since the backstop first saw it on the GPU (pid reuse) is
neither counted (its memory is a dead process's) nor killed; one whose
``/proc`` cannot be read is counted but never killed; and the kill itself
goes through a pidfd checked against the start time
(:func:`hami_arbiter.procinfo.kill_if_same`).  A process that has exited is
skipped: its memory is the driver's to free.  NVML failing (no library, GPU
lost, driver reload) costs one log line and a retry on the next pass, and
a driver that hangs is read in a thread of its own; the backstop never
crashes and, not seeing, never kills.

**Where users see it**: each event is written to
``<events_dir>/pidns-<inode>/uid-<uid>.jsonl`` for every PID namespace and
user of the slice's processes (:mod:`hami_kernel.backstop_events`), in the
arbiter's directory that GPU pods mount read-only; ``%vgpu`` shows the
latest.

The daemon makes one with :func:`from_options` (its ``--backstop`` and
``--backstop-grace`` options) and runs ``await backstop.run()`` beside its
server.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Protocol

from traitlets import Enum, Float, Integer, Unicode, validate, TraitError
from traitlets.config import LoggingConfigurable

from hami_kernel.backstop_events import EVENTS_DIR, BackstopEvent
from hami_kernel.slice import format_memory

from .events import EventWriter
from .nvml import GpuProcess, GpuProcesses, NvmlReader
from .procinfo import GONE, KILLED, ProcessGone, ProcIdentity, identity, kill_if_same

__all__ = ["SliceLike", "Backstop", "from_options"]


class SliceLike(Protocol):
    """What the backstop needs of a slice (the arbiter's TrustedSlice has it)."""

    @property
    def key(self) -> str: ...  # the slice's identity: processes with one key share one limit

    @property
    def memory_limit(self) -> Optional[int]: ...  # bytes per GPU; None: no limit


# One-time log lines about one pid, forgotten with the pid.
_PER_PID = ("unreadable", "reused", "no-usage", "resolve")


def _size(nbytes: int) -> str:
    return format_memory(nbytes) if nbytes > 0 else "0 B"


def from_options(slice_of: Callable[[int], Optional[SliceLike]], mode: str, grace: float,
                 socket_dir: str, **kwargs: object) -> Optional["Backstop"]:
    """The backstop for ``hami-arbiter --backstop MODE --backstop-grace GRACE --socket-dir DIR``:
    None for "off"; events under DIR/events (what GPU pods mount).  ValueError for a bad option."""
    if mode == "off":
        return None
    if mode not in ("kill", "report"):
        raise ValueError(f"--backstop must be kill, report or off, not {mode!r}")
    try:
        return Backstop(slice_of, mode, grace, events_dir=os.path.join(socket_dir, "events"), **kwargs)
    except TraitError as exc:
        raise ValueError(str(exc)) from None


class Backstop(LoggingConfigurable):
    """One pass per ``tick(now)``; ``run()`` ticks every ``interval`` seconds."""

    action = Enum(["kill", "report"], default_value="kill", help="""
        What to do with a slice over its VRAM limit by the driver's count:
        "kill" reports it at once and SIGKILLs its offending process if it is
        still over after the grace; "report" only reports.
        """).tag(config=True)
    grace = Float(1.0, help="""
        Seconds a slice may stay over its limit before its offending process
        is killed (action "kill"): room for the driver to finish freeing
        memory a process has just released.  0 to 60.
        """).tag(config=True)
    outside = Enum(["report", "kill"], default_value="report", help="""
        Processes on a GPU that belong to no slice: "report" logs each once
        and never kills it; "kill" (with action "kill") kills them after the
        grace, for nodes where every GPU user must be in a slice.
        """).tag(config=True)
    slack = Integer(128 << 20, min=0, help="""
        Bytes per process of the slice on a GPU by which the driver's count
        may exceed the slice's limit before the backstop acts: memory the
        driver holds for a process that libvgpu does not charge to the slice
        (kernel code loaded lazily after the context was measured, the
        driver's rounding of allocations).  An escaped process is over by far
        more.  0: act on any excess.
        """).tag(config=True)
    interval = Float(0.25, help="Seconds between passes of run(); well under the grace.").tag(config=True)
    nvml_timeout = Float(10.0, help="""
        Seconds after which a read of NVML that has not returned is logged
        (once; the backstop checks nothing until the driver answers).
        """).tag(config=True)
    events_dir = Unicode(EVENTS_DIR, help="""
        Where the events for the slices' users are written (one file per PID
        namespace and user); GPU pods must see it, read-only, at the same path
        (see hami_kernel.backstop_events).  Empty: the daemon's log only.
        """).tag(config=True)
    events_keep = Integer(20, help="How many of the newest events each file keeps.").tag(config=True)

    @validate("grace")
    def _valid_grace(self, proposal: dict) -> float:
        value = proposal["value"]
        if not (math.isfinite(value) and 0 <= value <= 60):
            raise TraitError(f"the backstop's grace must be from 0 to 60 seconds, not {value}")
        return value

    @validate("interval")
    def _valid_interval(self, proposal: dict) -> float:
        value = proposal["value"]
        if not (math.isfinite(value) and 0.01 <= value <= 60):
            raise TraitError(f"the backstop's interval must be from 0.01 to 60 seconds, not {value}")
        return value

    def __init__(self, slice_of: Callable[[int], Optional[SliceLike]], action: str = "kill", grace: float = 1.0, *,
                 nvml: object = None, clock: Callable[[], float] = time.monotonic,
                 kill: Callable[[int, int], str] = kill_if_same,
                 identify: Callable[[int], ProcIdentity] = identity,
                 wall: Callable[[], float] = time.time, **kwargs: object):
        super().__init__(action=action, grace=grace, **kwargs)
        if self.log is None or self.log.name == "traitlets":  # not given one: the arbiter's own
            self.log = logging.getLogger("hami_arbiter.backstop")
        self.slice_of = slice_of
        self.nvml = nvml if nvml is not None else NvmlReader()
        self.clock, self.kill, self.identify, self.wall = clock, kill, identify, wall
        self.writer = EventWriter(self.events_dir, self.events_keep, self.log) if self.events_dir else None
        self._known: dict[int, Optional[ProcIdentity]] = {}  # pid -> who it was when first seen on a GPU
        self._over: dict[tuple[int, str], float] = {}  # (gpu, slice) -> when it went over (or the last kill)
        self._killed: set[tuple[int, int]] = set()  # (pid, start) killed, until the driver lists it no more
        self._unkillable: set[tuple[int, int]] = set()  # (pid, start) a kill failed for: not tried again
        self._outside: dict[tuple[int, int, Optional[int]], float] = {}  # (gpu, pid, start) -> first seen
        self._said: set[object] = set()  # one-time log lines already written
        self._nvml_error: Optional[str] = None
        self._gpu_errors: dict[int, str] = {}

    # ---- the loop ---------------------------------------------------------------------

    async def run(self, interval: Optional[float] = None) -> None:
        """Passes until cancelled.  NVML is read in a thread of its own, so that a driver that
        hangs (a GPU falling off the bus) never stalls the event loop the arbiter serves its
        clients on; the rest of a pass (/proc, the resolver, kills, events) runs in the loop.
        Nothing a pass raises stops it: one log line, and the next pass."""
        interval = self.interval if interval is None else interval
        loop = asyncio.get_running_loop()
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backstop-nvml")
        try:
            while True:
                try:
                    gpus = await self._read_patiently(loop, reader)
                    self.check(self.clock(), gpus)
                except Exception as exc:  # a bug must not take the backstop down with it
                    self._once(("crash", type(exc).__name__, str(exc)), logging.ERROR,
                               "backstop: a pass failed (%s: %s); carrying on", type(exc).__name__, exc)
                await asyncio.sleep(interval)
        finally:
            reader.shutdown(wait=False)  # a read stuck in the driver must not hold up the daemon's exit

    async def _read_patiently(self, loop: asyncio.AbstractEventLoop,
                              reader: ThreadPoolExecutor) -> Optional[list[GpuProcesses]]:
        """NVML's view from the reader thread; says once if the driver takes longer than nvml_timeout."""
        pending = loop.run_in_executor(reader, self._read)
        waited = 0.0
        while True:
            done, _ = await asyncio.wait({pending}, timeout=self.nvml_timeout)
            if done:
                if waited:
                    self.log.warning("backstop: NVML answered after %.0f s", waited)
                return pending.result()
            if not waited:
                self.log.error("backstop: NVML has not answered for %g s; nothing is checked until it does",
                               self.nvml_timeout)
            waited += self.nvml_timeout

    def tick(self, now: float) -> None:
        """One pass over every GPU at time ``now`` (seconds, the clock's)."""
        self.check(now, self._read())

    def _read(self) -> Optional[list[GpuProcesses]]:
        """NVML's view, or None (after one log line per distinct failure) if it cannot be had."""
        try:
            return list(self.nvml.read())  # type: ignore[attr-defined]
        except Exception as exc:  # NvmlError, or anything a broken library throws
            message = str(exc) or type(exc).__name__
            if message != self._nvml_error:
                self.log.error("backstop: %s; nothing is checked until NVML answers (retrying every pass)", message)
            self._nvml_error = message
            return None

    def check(self, now: float, gpus: Optional[list[GpuProcesses]]) -> None:
        """One pass over NVML's view ``gpus`` (None: NVML could not be read) at time ``now``."""
        if gpus is None:
            self._over.clear()  # not seeing is not being over: a grace starts afresh afterwards
            return
        if self._nvml_error is not None:
            self.log.warning("backstop: NVML answers again")
            self._nvml_error = None
        listed: set[int] = set()
        for gpu in gpus:
            if gpu.error:
                if self._gpu_errors.get(gpu.index) != gpu.error:
                    self.log.error("backstop: %s; that GPU is not checked until it answers", gpu.error)
                self._gpu_errors[gpu.index] = gpu.error
                for key in [k for k in self._over if k[0] == gpu.index]:
                    del self._over[key]
                continue
            if self._gpu_errors.pop(gpu.index, None):
                self.log.warning("backstop: GPU %d answers again", gpu.index)
            listed.update(p.pid for p in gpu.processes)
            self._check_gpu(gpu, now)
        # Forget processes the driver no longer lists: their pids may be anyone's next time.
        self._known = {pid: who for pid, who in self._known.items() if pid in listed}
        self._killed = {k for k in self._killed if k[0] in listed}
        self._unkillable = {k for k in self._unkillable if k[0] in listed}
        self._outside = {k: t for k, t in self._outside.items() if k[1] in listed}
        self._said = {w for w in self._said if not (isinstance(w, tuple) and w[0] in _PER_PID and w[1] not in listed)}

    # ---- one GPU ------------------------------------------------------------------------

    def _who(self, pid: int) -> tuple[Optional[ProcIdentity], bool]:
        """(identity now or None if unreadable, whether it is the process first seen under this pid).
        ProcessGone propagates: an exited process is the driver's business."""
        try:
            now = self.identify(pid)
        except ProcessGone:
            raise
        except Exception as exc:  # OSError, ValueError, anything a strange /proc gives
            self._once(("unreadable", pid), logging.WARNING,
                       "backstop: cannot read /proc/%d (%s): it is counted but never killed", pid, exc)
            return None, False
        first = self._known.get(pid)
        if first is None:
            self._known[pid] = now  # first seen (or first readable) now
            return now, True
        if first.start != now.start:
            self._once(("reused", pid, now.start), logging.WARNING,
                       "backstop: pid %d is now another process (%s) than the one first seen on the GPU (%s): "
                       "neither counted nor killed while the driver lists that pid", pid, now.comm, first.comm)
            return now, False
        return now, True

    def _check_gpu(self, gpu: GpuProcesses, now: float) -> None:
        slices: dict[str, tuple[SliceLike, list[tuple[GpuProcess, Optional[ProcIdentity], bool]]]] = {}
        for proc in gpu.processes:
            try:
                who, same = self._who(proc.pid)
            except ProcessGone:
                continue
            if who is not None and not same:
                # A reused pid: the memory is a dead process's, and the slice the resolver
                # would give is the new process's.  Counting it anywhere could cost an
                # innocent process its life; the driver frees it soon.
                continue
            if proc.used is None:
                self._once(("no-usage", proc.pid), logging.WARNING,
                           "backstop: the driver does not say how much memory pid %d holds on GPU %d; not counted",
                           proc.pid, gpu.index)
                continue
            try:
                where = self.slice_of(proc.pid)
            except Exception as exc:  # the resolver must not be able to stop the backstop
                self._once(("resolve", proc.pid), logging.WARNING,
                           "backstop: cannot tell the slice of pid %d (%s); not counted, never killed", proc.pid, exc)
                continue
            if where is None:
                self._outside_slice(gpu, proc, who if same else None, now)
                continue
            slices.setdefault(where.key, (where, []))[1].append((proc, who, same))
        for key, (where, procs) in slices.items():
            self._check_slice(gpu, key, where, procs, now)
        for k in [k for k in self._over if k[0] == gpu.index and k[1] not in slices]:
            del self._over[k]

    def _check_slice(self, gpu: GpuProcesses, key: str, where: SliceLike,
                     procs: list[tuple[GpuProcess, Optional[ProcIdentity], bool]], now: float) -> None:
        limit = where.memory_limit
        # Processes already killed no longer count: the driver is freeing their memory.
        live = [(p, who, same) for p, who, same in procs
                if not (who is not None and same and (p.pid, who.start) in self._killed)]
        used = sum(p.used or 0 for p, _, _ in live)
        state = (gpu.index, key)
        if limit is None or used <= limit + self.slack * len(live):
            if self._over.pop(state, None) is not None:
                self.log.info("backstop: GPU %d slice %s: back within its limit (%s of %s)", gpu.index, key,
                              _size(used), _size(limit) if limit is not None else "no limit")
            return
        candidates = [(p, who) for p, who, same in live
                      if who is not None and same and (p.pid, who.start) not in self._unkillable]
        # The most memory; of equals the youngest (the latest start).
        victim = max(candidates, key=lambda c: (c[0].used or 0, c[1].start), default=None)
        audience = {(who.pidns, who.uid) for _, who, _ in procs
                    if who is not None and who.pidns is not None and who.uid is not None}
        since = self._over.get(state)
        if since is None:
            since = self._over[state] = now
            if self.action == "kill" and victim is not None:
                then = (f"; {victim[1].comm} (pid {self._shown_pid(victim[1])}), holding "
                        f"{_size(victim[0].used or 0)}, is killed in {self.grace:g} s "
                        "unless the slice gets back within it")
            elif self.action == "kill":
                then = "; none of its processes there can be identified safely, so nothing is killed"
            else:
                then = "; report only: nothing is killed"
            self._event(gpu, key, "over", used, limit, victim, audience,
                        f"the slice holds {_size(used)} of its {_size(limit)} on this GPU by the driver's count{then}")
        if self.action != "kill" or now - since < self.grace or victim is None:
            return
        proc, who = victim
        result = self._kill(proc.pid, who.start)
        if result == KILLED or result == GONE:
            self._killed.add((proc.pid, who.start))
            self._over[state] = now  # the next one only after another grace
            if result == KILLED:
                self._event(gpu, key, "killed", used, limit, victim, audience,
                            f"killed {who.comm} (pid {self._shown_pid(who)}), which held {_size(proc.used or 0)}: "
                            f"the slice held {_size(used)} of its {_size(limit)} on this GPU for {now - since:.2f} s")
        else:
            self._unkillable.add((proc.pid, who.start))
            self._event(gpu, key, "kill-failed", used, limit, victim, audience,
                        f"could not kill {who.comm} (pid {self._shown_pid(who)}): {result}")

    def _outside_slice(self, gpu: GpuProcesses, proc: GpuProcess, who: Optional[ProcIdentity], now: float) -> None:
        key = (gpu.index, proc.pid, who.start if who else None)
        first = self._outside.setdefault(key, now)
        if first == now:
            name = who.comm if who else "?"
            self.log.warning("backstop: GPU %d: pid %d (%s) holds %s outside any slice; %s", gpu.index, proc.pid,
                             name, _size(proc.used or 0),
                             f"killed after {self.grace:g} s" if self.outside == "kill" and self.action == "kill"
                             else "reported, not killed")
        if (self.outside != "kill" or self.action != "kill" or who is None or now - first < self.grace
                or (proc.pid, who.start) in self._killed or (proc.pid, who.start) in self._unkillable):
            return
        result = self._kill(proc.pid, who.start)
        if result in (KILLED, GONE):
            self._killed.add((proc.pid, who.start))
        else:
            self._unkillable.add((proc.pid, who.start))
        self.log.warning("backstop: GPU %d: pid %d (%s) outside any slice: %s", gpu.index, proc.pid, who.comm, result)

    def _kill(self, pid: int, start: int) -> str:
        try:
            return self.kill(pid, start)
        except Exception as exc:  # kill_if_same does not raise; a replacement might
            return f"failed ({exc})"

    # ---- telling ------------------------------------------------------------------------

    @staticmethod
    def _shown_pid(who: ProcIdentity) -> int:
        return who.nspid if who.nspid is not None else who.pid

    def _event(self, gpu: GpuProcesses, key: str, action: str, used: int, limit: int,
               victim: Optional[tuple[GpuProcess, ProcIdentity]], audience: set[tuple[int, int]], message: str) -> None:
        host_pid = f" (host pid {victim[1].pid})" if victim else ""
        # The daemon's log first: it is written whatever happens to the files.
        self.log.warning("backstop: GPU %d slice %s: %s%s", gpu.index, key, message, host_pid)
        if self.writer is None or not audience:
            return
        self.writer.write(BackstopEvent(
            time=self.wall(), gpu=gpu.index, action=action, used=used, limit=limit,
            pid=self._shown_pid(victim[1]) if victim else None, comm=victim[1].comm if victim else "",
            process_used=(victim[0].used or 0) if victim else 0, message=message), audience)

    def _once(self, what: object, level: int, fmt: str, *args: object) -> None:
        if what not in self._said:
            self._said.add(what)
            self.log.log(level, fmt, *args)
