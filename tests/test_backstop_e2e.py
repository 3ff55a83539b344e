"""The backstop end to end: a real process, the fake NVML, a real SIGKILL, the event in %vgpu.

A `sleep` stands for a process that escaped libvgpu: the fake driver is told
(fake_cuda_charge_pid) that it holds 1.5 GiB on GPU 0, in a 1 GiB slice.
The backstop, reading the fake libnvidia-ml.so.1 through its own NVML reader
and killing through its own pidfd kill, runs in a child process (the fake
reads its state file's path when it is loaded, once per process).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cbuild import build_tests
from hami_kernel import ipython as vgpu_ipython

GiB = 1 << 30

BACKSTOP = textwrap.dedent("""
    import asyncio, ctypes, json, sys, time
    from dataclasses import dataclass
    from hami_arbiter.backstop import Backstop
    from hami_arbiter.nvml import NvmlReader
    from hami_arbiter.procinfo import kill_if_same

    fakedrv, pid, events_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    @dataclass(frozen=True)
    class Slice:
        key: str
        memory_limit: int

    cuda = ctypes.CDLL(fakedrv + "/libcuda.so.1")
    cuda.fake_cuda_charge_pid.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_ulonglong]
    assert cuda.fake_cuda_charge_pid(0, pid, 3 << 29) == 0  # 1.5 GiB
    charged = time.monotonic()
    kills = []

    def kill(p, start):
        kills.append({"pid": p, "after": time.monotonic() - charged, "result": kill_if_same(p, start)})
        return kills[-1]["result"]

    backstop = Backstop(lambda p: Slice("alice", 1 << 30) if p == pid else None, "kill", 1.0,
                        nvml=NvmlReader(fakedrv + "/libnvidia-ml.so.1"), kill=kill, events_dir=events_dir)

    async def main():
        task = asyncio.ensure_future(backstop.run(0.05))
        deadline = time.monotonic() + 20
        while not kills and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # more passes after the kill: nothing else happens, nothing breaks
        task.cancel()

    asyncio.run(main())
    print(json.dumps(kills))
""")


@pytest.fixture(scope="module")
def fakedrv() -> Path:
    return build_tests("plain") / "fakedrv"


def test_an_escaped_process_over_its_slice_is_killed_and_its_users_see_it(fakedrv, tmp_path, monkeypatch):
    events = tmp_path / "events"
    victim = subprocess.Popen(["sleep", "120"])
    try:
        done = subprocess.run(
            [sys.executable, "-c", BACKSTOP, str(fakedrv), str(victim.pid), str(events)],
            env={"PATH": "/usr/bin:/bin", "FAKE_CUDA_STATE": str(tmp_path / "fake.state"),
                 "FAKE_CUDA_DEVICE_MEMORY": "8g", "PYTHONPATH": ":".join(sys.path)},
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        kills = json.loads(done.stdout.strip().splitlines()[-1])
        assert [(k["pid"], k["result"]) for k in kills] == [(victim.pid, "killed")], done.stderr
        assert 1.0 <= kills[0]["after"] < 15, "killed inside the 1 s grace, or never in time"
        assert victim.wait(timeout=10) == -9
        assert "slice alice: the slice holds 1.5 GiB of its 1 GiB" in done.stderr  # the daemon's log line
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()

    # This test and the sleep share a PID namespace and a user: its events are ours to read.
    monkeypatch.setenv("HAMI_JUPYTER_EVENTS_DIR", str(events))
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    ip = InteractiveShell.instance()
    vgpu_ipython.load_ipython_extension(ip)
    try:
        with capture_output() as out:
            ip.run_cell("%vgpu events")
        assert f"killed sleep (pid {victim.pid}), which held 1.5 GiB" in out.stdout
        assert "the slice holds 1.5 GiB of its 1 GiB on this GPU" in out.stdout  # the report before it
        with capture_output() as out:
            ip.run_cell("%vgpu")
        shown = out.outputs[-1].data
        assert f"killed sleep (pid {victim.pid})" in shown["text/plain"]
        assert f"killed sleep (pid {victim.pid})" in shown["text/html"]
    finally:
        vgpu_ipython.unload_ipython_extension(ip)


READER = textwrap.dedent("""
    import ctypes, json, os, sys
    from hami_arbiter.nvml import NvmlReader
    fakedrv, pid = sys.argv[1], int(sys.argv[2])
    cuda = ctypes.CDLL(fakedrv + "/libcuda.so.1")
    cuda.fake_cuda_charge_pid.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_ulonglong]
    assert cuda.fake_cuda_charge_pid(1, pid, 300 << 20) == 0
    assert cuda.fake_cuda_charge_pid(1, pid, 200 << 20) == 0
    assert cuda.fake_cuda_charge_pid(0, os.getpid(), 64 << 20) == 0
    assert cuda.fake_cuda_charge_pid(0, pid, 1 << 40) == -1  # more than the GPU has
    gpus = NvmlReader(fakedrv + "/libnvidia-ml.so.1").read()
    print(json.dumps([[g.index, g.uuid, g.error, [[p.pid, p.used] for p in g.processes]] for g in gpus]))
""")


def test_the_nvml_reader_lists_each_gpus_processes_from_the_driver(fakedrv, tmp_path):
    other = subprocess.Popen(["sleep", "60"])
    try:
        done = subprocess.run(
            [sys.executable, "-c", READER, str(fakedrv), str(other.pid)],
            env={"PATH": "/usr/bin:/bin", "FAKE_CUDA_STATE": str(tmp_path / "fake.state"),
                 "FAKE_CUDA_DEVICE_COUNT": "2", "FAKE_CUDA_DEVICE_MEMORY": "8g", "PYTHONPATH": ":".join(sys.path)},
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        gpus = json.loads(done.stdout)
        assert [g[0] for g in gpus] == [0, 1] and all(g[2] is None for g in gpus)
        assert gpus[1][1] == "GPU-face0001-1020-3040-5060-708090a0b0c0"
        assert gpus[1][3] == [[other.pid, 500 << 20]]
        [[reader_pid, used]] = gpus[0][3]
        assert reader_pid != other.pid and used == 64 << 20
    finally:
        other.kill()
        other.wait()


CHARGE = textwrap.dedent("""
    import ctypes, sys
    cuda = ctypes.CDLL(sys.argv[1] + "/libcuda.so.1")
    cuda.fake_cuda_charge_pid.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_ulonglong]
    assert cuda.fake_cuda_charge_pid(0, int(sys.argv[2]), int(sys.argv[3])) == 0
""")


def test_the_daemon_kills_a_granted_servers_process_over_its_slice(fakedrv, tmp_path):
    """hami-arbiter as the hub runs it: the slice comes from the hub's grant, NVML is the
    driver's (the fake's libnvidia-ml.so.1 found as the real one is), and the backstop it
    starts kills the process over the slice after the grace; users find the event under
    the socket directory, which is what GPU pods mount."""
    from hami_arbiter.slices import proc_stat  # noqa: PLC0415

    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(fakedrv), "FAKE_CUDA_STATE": str(tmp_path / "fake.state"),
           "FAKE_CUDA_DEVICE_MEMORY": "8g", "PYTHONPATH": ":".join(sys.path)}
    sock_dir, grants = tmp_path / "arbiter", tmp_path / "grants"
    grants.mkdir(mode=0o700)
    victim = subprocess.Popen(["sleep", "120"])
    (grants / f"{victim.pid}-{proc_stat(victim.pid)[1]}").write_text("CUDA_DEVICE_MEMORY_LIMIT=1g\n")
    daemon = subprocess.Popen([sys.executable, "-m", "hami_arbiter.cli", "--socket-dir", str(sock_dir),
                               "--grants-dir", str(grants), "--backstop", "kill", "--backstop-grace", "1"],
                              env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (sock_dir / "arbiter.sock").exists():
            assert daemon.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        subprocess.run([sys.executable, "-c", CHARGE, str(fakedrv), str(victim.pid), str(3 << 29)],
                       env=env, check=True, timeout=60)
        charged = time.monotonic()
        assert victim.wait(timeout=30) == -9
        assert time.monotonic() - charged >= 1.0 - 0.05, "killed inside the grace"
        events = list((sock_dir / "events").rglob("*.jsonl"))
        assert events and f"killed sleep (pid {victim.pid})" in events[0].read_text()
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        daemon.terminate()
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert "backstop: kill slices over their VRAM limit after 1.0 s" in err
    assert "the slice holds 1.5 GiB of its 1 GiB" in err
