"""The arbiter's backstop on a simulated clock, with a fake driver view, /proc and kill.

Every rule of hami_arbiter.backstop: a slice over its limit by the driver's
count has its offending process killed after the grace and not before,
report-only never kills, a slice at its limit is left alone, a process
outside any slice is reported and not killed, a reused pid is never killed,
and NVML failing does not crash it.  The real processes and the real fake
NVML are in test_backstop_e2e.py.
"""
from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from traitlets import TraitError

from hami_arbiter.backstop import Backstop
from hami_arbiter.nvml import GpuProcess, GpuProcesses, NvmlError, NvmlReader
from hami_arbiter.procinfo import GONE, KILLED, REUSED, ProcessGone, ProcIdentity, identity, kill_if_same
from hami_kernel.backstop_events import events_file, read_events

MiB, GiB = 1 << 20, 1 << 30
PIDNS, UID = 4026531836, 1000


@dataclass(frozen=True)
class Slice:
    key: str
    memory_limit: int | None


class Driver:
    """What NVML would say: {gpu: {pid: bytes}}; raise_with makes every read fail."""

    def __init__(self, gpus: dict[int, dict[int, int | None]]):
        self.gpus = gpus
        self.raise_with: Exception | None = None
        self.lost: set[int] = set()

    def read(self) -> list[GpuProcesses]:
        if self.raise_with is not None:
            raise self.raise_with
        return [GpuProcesses(i, f"GPU-{i}", error=f"GPU {i}: GPU is lost") if i in self.lost else
                GpuProcesses(i, f"GPU-{i}", tuple(GpuProcess(pid, used) for pid, used in procs.items()))
                for i, procs in sorted(self.gpus.items())]


class Procs:
    """A fake /proc: pid -> start time; missing pids are gone, `unreadable` ones raise EACCES."""

    def __init__(self, starts: dict[int, int]):
        self.starts = dict(starts)
        self.unreadable: set[int] = set()
        self.kills: list[tuple[int, int]] = []

    def identify(self, pid: int) -> ProcIdentity:
        if pid in self.unreadable:
            raise PermissionError(13, "Permission denied")
        if pid not in self.starts:
            raise ProcessGone(pid)
        # nspid: as a container would number it.
        return ProcIdentity(pid=pid, start=self.starts[pid], comm=f"proc{pid}", uid=UID, pidns=PIDNS,
                            nspid=pid % 100 + 1)

    def kill(self, pid: int, start: int) -> str:
        self.kills.append((pid, start))
        if self.starts.get(pid) is None:
            return GONE
        if self.starts[pid] != start:
            return REUSED
        return KILLED


SLICES = {101: Slice("alice", 1 * GiB), 102: Slice("alice", 1 * GiB), 201: Slice("bob", 2 * GiB),
          301: Slice("carol", None)}


def make(tmp_path: Path, driver: Driver, procs: Procs, **kwargs: object) -> Backstop:
    kwargs.setdefault("slack", 0)  # exact boundaries; the slack has its own test
    kwargs.setdefault("kill", procs.kill)
    return Backstop(SLICES.get, kwargs.pop("action", "kill"), kwargs.pop("grace", 1.0), nvml=driver,
                    identify=procs.identify, wall=lambda: 1_800_000_000.0,
                    events_dir=str(tmp_path / "events"), **kwargs)


def events(tmp_path: Path) -> list:
    return read_events(events_file(tmp_path / "events", PIDNS, UID), limit=100)


def test_a_slice_over_its_limit_loses_its_largest_process_after_the_grace_and_not_before(tmp_path, caplog):
    driver = Driver({0: {101: 400 * MiB, 102: 700 * MiB, 201: 1 * GiB}})
    procs = Procs({101: 5000, 102: 6000, 201: 7000})
    backstop = make(tmp_path, driver, procs)
    with caplog.at_level(logging.INFO, logger="hami_arbiter.backstop"):
        for now in (0.0, 0.25, 0.5, 0.75, 0.999):
            backstop.tick(now)
            assert procs.kills == [], f"killed at {now} s, inside the 1 s grace"
        # Reported at once, in the log and for the slice's users.
        assert [e.action for e in events(tmp_path)] == ["over"]
        assert "GPU 0 slice alice" in caplog.text and "1.07 GiB of its 1 GiB" in caplog.text
        backstop.tick(1.0)
    assert procs.kills == [(102, 6000)]  # alice's largest; bob (2 GiB slice, 1 GiB used) is untouched
    killed = events(tmp_path)[-1]
    assert (killed.action, killed.pid, killed.gpu, killed.process_used) == ("killed", 3, 0, 700 * MiB)
    assert "killed proc102" in killed.message
    # The driver still lists 102 while it frees its memory: that must not cost 101 its life.
    for now in (1.25, 2.5, 5.0):
        backstop.tick(now)
    assert procs.kills == [(102, 6000)]


def test_a_slice_still_over_after_a_kill_loses_the_next_one_after_another_grace(tmp_path):
    driver = Driver({0: {101: 800 * MiB, 102: 900 * MiB}})
    procs = Procs({101: 5000, 102: 6000})
    backstop = make(tmp_path, driver, procs, grace=0.5)
    backstop.tick(0.0)
    backstop.tick(0.5)
    assert procs.kills == [(102, 6000)]
    driver.gpus[0][103] = 500 * MiB  # another process of alice arrives: 800 + 500 MiB, over again
    procs.starts[103] = 6500
    SLICES[103] = Slice("alice", 1 * GiB)
    try:
        backstop.tick(0.75)
        assert procs.kills == [(102, 6000)], "the next kill waits out a fresh grace"
        backstop.tick(1.0)
        assert procs.kills == [(102, 6000), (101, 5000)]
    finally:
        del SLICES[103]


def test_report_only_never_kills(tmp_path, caplog):
    driver = Driver({0: {101: 2 * GiB}})
    procs = Procs({101: 5000})
    backstop = make(tmp_path, driver, procs, action="report")
    with caplog.at_level(logging.WARNING, logger="hami_arbiter.backstop"):
        for step in range(100):
            backstop.tick(step * 0.25)
    assert procs.kills == []
    assert [e.action for e in events(tmp_path)] == ["over"]
    assert "report only: nothing is killed" in events(tmp_path)[0].message
    assert caplog.text.count("slice alice") == 1  # reported once, not every pass


def test_a_slice_at_its_limit_is_untouched(tmp_path, caplog):
    driver = Driver({0: {101: 300 * MiB, 102: 724 * MiB}, 1: {201: 2 * GiB, 301: 50 * GiB}})
    procs = Procs({101: 5000, 102: 6000, 201: 7000, 301: 8000})
    backstop = make(tmp_path, driver, procs)
    with caplog.at_level(logging.INFO, logger="hami_arbiter.backstop"):
        for step in range(20):
            backstop.tick(step * 0.5)
    assert procs.kills == [] and events(tmp_path) == [] and caplog.text == ""


def test_the_slack_is_per_process_of_the_slice(tmp_path):
    # Two processes of a 1 GiB slice, 100 MiB over by the driver's count: within 2 x 64 MiB
    # of memory libvgpu does not charge; 130 MiB over is not.
    driver = Driver({0: {101: 500 * MiB, 102: 624 * MiB}})
    procs = Procs({101: 5000, 102: 6000})
    backstop = make(tmp_path, driver, procs, slack=64 * MiB)
    for step in range(10):
        backstop.tick(step * 0.5)
    assert procs.kills == []
    driver.gpus[0][102] = 654 * MiB
    backstop.tick(5.0)
    backstop.tick(6.0)
    assert procs.kills == [(102, 6000)]


def test_the_limit_is_per_gpu(tmp_path):
    # 700 MiB on each of two GPUs is within a 1 GiB-per-GPU slice.
    driver = Driver({0: {101: 700 * MiB}, 1: {101: 700 * MiB}})
    procs = Procs({101: 5000})
    backstop = make(tmp_path, driver, procs)
    for step in range(10):
        backstop.tick(step * 0.5)
    assert procs.kills == []


def test_a_process_outside_any_slice_is_reported_once_and_not_killed(tmp_path, caplog):
    driver = Driver({0: {999: 60 * GiB}})
    procs = Procs({999: 4000})
    backstop = make(tmp_path, driver, procs)
    with caplog.at_level(logging.WARNING, logger="hami_arbiter.backstop"):
        for step in range(40):
            backstop.tick(step * 0.25)
    assert procs.kills == []
    assert caplog.text.count("pid 999 (proc999) holds 60 GiB outside any slice; reported, not killed") == 1


def test_outside_kill_is_an_admin_choice(tmp_path):
    driver = Driver({0: {999: 60 * GiB}})
    procs = Procs({999: 4000})
    backstop = make(tmp_path, driver, procs, outside="kill")
    backstop.tick(0.0)
    backstop.tick(0.9)
    assert procs.kills == []
    backstop.tick(1.0)
    assert procs.kills == [(999, 4000)]
    # With action "report", "outside" cannot kill either.
    procs2 = Procs({999: 4000})
    report = make(tmp_path, driver, procs2, action="report", outside="kill")
    for step in range(10):
        report.tick(step * 0.5)
    assert procs2.kills == []


def test_a_reused_pid_is_not_killed_nor_counted(tmp_path, caplog):
    driver = Driver({0: {101: 2 * GiB, 102: 500 * MiB}})
    procs = Procs({101: 5000, 102: 6000})
    backstop = make(tmp_path, driver, procs)
    backstop.tick(0.0)
    # The process first seen as 101 exits and the pid goes to another process before
    # the driver has dropped the dead one's entry: neither it nor 102 (whose slice the
    # dead memory would push over) may die for it.
    procs.starts[101] = 9000
    with caplog.at_level(logging.WARNING, logger="hami_arbiter.backstop"):
        for step in range(1, 20):
            backstop.tick(step * 0.25)
    assert procs.kills == []
    assert caplog.text.count("pid 101 is now another process") == 1


def test_unreadable_and_vanished_processes_are_never_killed(tmp_path, caplog):
    driver = Driver({0: {101: 2 * GiB, 102: 100 * MiB}})
    procs = Procs({101: 5000})  # 102 has exited: the driver still lists it while freeing its memory
    procs.unreadable.add(101)
    backstop = make(tmp_path, driver, procs)
    with caplog.at_level(logging.WARNING, logger="hami_arbiter.backstop"):
        for step in range(10):
            backstop.tick(step * 0.5)
    assert procs.kills == []
    assert "can be identified safely, so nothing is killed" in caplog.text
    assert caplog.text.count("cannot read /proc/101") == 1
    # Once /proc can be read, 101 is a process like any other (first seen now), and goes after the grace.
    procs.unreadable.clear()
    backstop.tick(5.0)
    backstop.tick(6.0)
    assert procs.kills == [(101, 5000)]


def test_nvml_failures_cost_one_log_line_and_a_retry(tmp_path, caplog):
    driver = Driver({0: {101: 2 * GiB}, 1: {201: 3 * GiB}})
    procs = Procs({101: 5000, 201: 7000})
    backstop = make(tmp_path, driver, procs)
    driver.raise_with = NvmlError("NVML failed to initialise: Driver Not Loaded")
    with caplog.at_level(logging.INFO, logger="hami_arbiter.backstop"):
        for step in range(10):
            backstop.tick(step * 0.5)
        assert caplog.text.count("Driver Not Loaded") == 1 and procs.kills == []
        driver.raise_with = RuntimeError("a broken binding")  # not even an NvmlError: still no crash
        backstop.tick(5.0)
        driver.raise_with = None
        driver.lost = {1}  # GPU 1 fell off the bus; GPU 0 is still watched
        backstop.tick(6.0)
        assert "NVML answers again" in caplog.text and "GPU 1: GPU is lost" in caplog.text
        assert procs.kills == []  # the grace starts when it is seen over, not before
        backstop.tick(7.0)
    assert procs.kills == [(101, 5000)]


def test_a_resolver_that_raises_is_contained(tmp_path, caplog):
    driver = Driver({0: {101: 2 * GiB}})
    procs = Procs({101: 5000})

    def broken(pid: int) -> None:
        raise OSError("cannot read the slice file")

    backstop = Backstop(broken, "kill", nvml=driver, kill=procs.kill, identify=procs.identify, events_dir="")
    with caplog.at_level(logging.WARNING, logger="hami_arbiter.backstop"):
        for step in range(10):
            backstop.tick(step * 0.5)
    assert procs.kills == [] and caplog.text.count("cannot tell the slice of pid 101") == 1


def test_missing_nvml_library_fails_closed(tmp_path):
    reader = NvmlReader(str(tmp_path / "libnvidia-ml.so.1"))
    with pytest.raises(NvmlError, match="cannot load NVML"):
        reader.read()
    backstop = Backstop(SLICES.get, nvml=reader, events_dir="")
    backstop.tick(0.0)  # logs, does not raise


@pytest.mark.parametrize("grace", [-1.0, 61.0, float("nan"), float("inf")])
def test_bad_grace_is_refused(grace):
    with pytest.raises(TraitError, match="grace"):
        Backstop(SLICES.get, "kill", grace, nvml=Driver({}), events_dir="")


def test_kill_if_same_spares_a_process_whose_start_time_differs():
    child = subprocess.Popen(["sleep", "30"])
    try:
        me = identity(child.pid)
        assert kill_if_same(child.pid, me.start + 1) == REUSED
        assert child.poll() is None, "a process with another start time was signalled"
        assert kill_if_same(child.pid, me.start) == KILLED
        assert child.wait(timeout=10) == -9
        with pytest.raises(ProcessGone):
            identity(child.pid)  # reaped now
        assert kill_if_same(child.pid, me.start) == GONE
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


class SteppingClock:
    """A simulated clock that moves 0.25 s each time it is read."""

    def __init__(self) -> None:
        self.now = -0.25

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def test_the_loop_survives_failing_passes_and_kills_on_its_clock(tmp_path, caplog):
    import asyncio

    class Garbled(Driver):
        """Two passes of nonsense (a broken binding), then the driver's view."""

        def __init__(self) -> None:
            super().__init__({0: {101: 2 * GiB}})
            self.garbled = 2

        def read(self) -> list:
            if self.garbled:
                self.garbled -= 1
                return [None]
            return super().read()

    procs = Procs({101: 5000})
    clock = SteppingClock()
    backstop = Backstop(SLICES.get, "kill", 1.0, nvml=Garbled(), kill=procs.kill, identify=procs.identify,
                        clock=clock, events_dir="", slack=0)

    async def main() -> None:
        task = asyncio.ensure_future(backstop.run(0.001))
        for _ in range(2000):
            if procs.kills:
                break
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.ERROR, logger="hami_arbiter.backstop"):
        asyncio.run(main())
    assert caplog.text.count("a pass failed (AttributeError") == 1
    assert procs.kills == [(101, 5000)]
    # The first pass that saw the driver was at 0.5 s on the clock: the kill came one grace later.
    assert clock.now == 1.5


def test_a_kill_that_raises_is_contained(tmp_path):
    driver = Driver({0: {101: 2 * GiB}})
    procs = Procs({101: 5000})

    def kill(pid: int, start: int) -> str:
        raise PermissionError(1, "Operation not permitted")

    backstop = make(tmp_path, driver, procs, kill=kill)
    for step in range(8):
        backstop.tick(step * 0.5)
    assert [e.action for e in events(tmp_path)] == ["over", "kill-failed"]
    assert "Operation not permitted" in events(tmp_path)[-1].message


def test_a_driver_that_hangs_is_said_once_and_never_stalls_the_loop(tmp_path, caplog):
    import asyncio
    import threading

    release = threading.Event()

    class Hanging:
        def read(self) -> list[GpuProcesses]:
            release.wait(10)
            return []

    backstop = Backstop(SLICES.get, nvml=Hanging(), events_dir="", nvml_timeout=0.05)
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        task = asyncio.ensure_future(backstop.run(0.01))
        for _ in range(30):  # the loop keeps running while the read hangs
            await asyncio.sleep(0.01)
            ticks += 1
        release.set()
        await asyncio.sleep(0.1)
        task.cancel()

    with caplog.at_level(logging.WARNING, logger="hami_arbiter.backstop"):
        asyncio.run(main())
    assert ticks == 30
    assert caplog.text.count("NVML has not answered for 0.05 s") == 1
    assert "NVML answered after" in caplog.text


def test_the_command_line_options():
    from hami_arbiter.backstop import from_options

    assert from_options(SLICES.get, "off", 1.0, "/run/x") is None
    made = from_options(SLICES.get, "report", 0.5, "/run/x", nvml=Driver({}))
    assert (made.action, made.grace, made.events_dir) == ("report", 0.5, "/run/x/events")
    with pytest.raises(ValueError, match="kill, report or off"):
        from_options(SLICES.get, "maybe", 1.0, "/run/x")
    with pytest.raises(ValueError, match="grace"):
        from_options(SLICES.get, "kill", -1, "/run/x", nvml=Driver({}))


def test_identity_names_a_process_as_its_own_namespace_does():
    import os

    from hami_arbiter.procinfo import _uid_inside

    me = identity(os.getpid())
    assert (me.uid, me.nspid, me.pidns) == (os.getuid(), os.getpid(), os.stat("/proc/self/ns/pid").st_ino)
    assert _uid_inside(101000, "0 100000 65536\n") == 1000  # a user namespace's map
    assert _uid_inside(5, "0 100000 65536") is None
