"""The %vgpu magic: status, check, set and watch, against regions real libvgpu wrote.

No GPU: libvgpu (plain build) runs over the fake driver, in test_libvgpu's
"hold" case (a process holding known memory under a known identity until its
stdin closes), in a `python -c` and in a real Jupyter kernel. The magic runs
in an in-process IPython shell, except for the widget view, which is driven
through a kernel so that its comm messages are the ones a frontend gets.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import hami_kernel
from cbuild import Runner, build_tests
from kernel_code import ALLOCATOR
from hami_kernel import ipython as vgpu_ipython
from hami_kernel import check, status, status_text, watch
from hami_kernel.region import read_region
from hami_kernel.slice import format_memory

MiB = 1 << 20
GiB = 1 << 30
CONTEXT = 64 * MiB  # what the fake driver charges per context (FAKE_CUDA_CONTEXT_SIZE's default)
ME = "3f2a1b9c-5d6e-4f70-8a9b-0c1d2e3f4a5b"  # a Jupyter kernel id
OTHER = "kernel-xyz"
UUID0 = "GPU-face0000-1020-3040-5060-708090a0b0c0"
UUID1 = "GPU-face0001-1020-3040-5060-708090a0b0c0"
PACKAGE_ROOT = str(Path(hami_kernel.__file__).resolve().parent.parent)
SLICE_ENV = {  # the server's slice and this kernel's sub-slice, as the provisioner sets them
    "CUDA_DEVICE_MEMORY_LIMIT": "1g",
    "CUDA_DEVICE_SM_LIMIT": "50",
    "LIBVGPU_PROCESS_MEMORY_LIMIT": "512m",
    "LIBVGPU_PROCESS_SM_LIMIT": "20",
}
OUR_VARIABLES = ("CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_SM_LIMIT", "LIBVGPU_PROCESS_MEMORY_LIMIT",
                 "LIBVGPU_PROCESS_SM_LIMIT", "LIBVGPU_IDENTITY", "GPU_CORE_UTILIZATION_POLICY",
                 "CUDA_DEVICE_MEMORY_SHARED_CACHE")


@pytest.fixture(scope="module")
def plain_build() -> Path:
    return build_tests("plain")


@pytest.fixture
def runner(plain_build: Path, tmp_path: Path) -> Runner:
    return Runner("plain", plain_build, tmp_path)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, runner: Runner) -> dict[str, str]:
    """This process as a kernel of the slice: our variables only, the region in tmp, and
    a GPU driver to be found (the fake's, which this process cannot load itself)."""
    monkeypatch.setattr(status, "load_driver", lambda: None)
    for name in list(os.environ):
        if name.startswith(OUR_VARIABLES):
            monkeypatch.delenv(name)
    values = {**SLICE_ENV, "LIBVGPU_IDENTITY": ME, "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(runner.region)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def shell() -> Iterator[Any]:
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    vgpu_ipython.load_ipython_extension(ip)
    try:
        yield ip
    finally:
        vgpu_ipython.unload_ipython_extension(ip)


def run(ip: Any, line: str) -> tuple[Any, Any]:
    """Runs one cell; returns (its result, what it printed and displayed)."""
    from IPython.utils.capture import capture_output

    with capture_output() as out:
        result = ip.run_cell(line)
    return result, out


def hold(runner: Runner, identity: str, mib: int, **extra: str) -> subprocess.Popen[str]:
    """A process of the slice holding CONTEXT + mib * (d+1) MiB on GPU d, 3 * (d+1) launches."""
    child = runner.start("hold", {
        "FAKE_CUDA_DEVICE_COUNT": "2", "CUDA_DEVICE_MEMORY_LIMIT": "1g", "CUDA_DEVICE_SM_LIMIT": "50",
        "LIBVGPU_IDENTITY": identity, "VGPU_TEST_HOLD_MIB": str(mib), "VGPU_TEST_LAUNCHES": "3",
        "LIBVGPU_ARBITER_DIR": str(runner.tmp / "arbiter"), **extra})
    assert child.stdout is not None
    if child.stdout.readline() != "ready\n":
        out, err = child.communicate(timeout=60)
        pytest.fail(f"hold exited {child.returncode}\nstdout:\n{out}\nstderr:\n{err}")
    return child


def release(*children: subprocess.Popen[str]) -> None:
    for child in children:
        out, err = child.communicate("", timeout=60)
        assert child.returncode == 0 and "PASS hold" in out, f"hold exited {child.returncode}\n{out}\n{err}"


@pytest.fixture
def two_kernels(runner: Runner, env: dict[str, str]) -> Iterator[tuple[int, int]]:
    """This kernel (ME, with its sub-slice) and another one, each holding memory; their pids."""
    mine = hold(runner, ME, 100, LIBVGPU_PROCESS_MEMORY_LIMIT="512m", LIBVGPU_PROCESS_SM_LIMIT="20")
    other = hold(runner, OTHER, 50)
    try:
        # The launch counts reach the region with libvgpu's next statistics refresh (every 0.5 s).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if all([d.launches for d in p.devices] == [3, 6] for p in read_region(runner.region).processes):
                break
            time.sleep(0.05)
        yield mine.pid, other.pid
    finally:
        release(mine, other)


# ---- %vgpu ---------------------------------------------------------------------------


def test_status_matches_the_region(shell: Any, runner: Runner, two_kernels: tuple[int, int]) -> None:
    my_pid, other_pid = two_kernels
    snap = read_region(runner.region)
    result, out = run(shell, "%vgpu")
    assert result.success, out.stderr
    (shown,) = out.outputs
    text, page = shown.data["text/plain"], shown.data["text/html"]

    # Figures written out from what the holders hold, so a wrong sum cannot hide in both sides.
    assert f"slice 1 GiB: {format_memory(2 * CONTEXT + 150 * MiB)} used, " \
           f"{format_memory(GiB - 2 * CONTEXT - 150 * MiB)} free" in text
    assert f"slice 1 GiB: {format_memory(2 * CONTEXT + 300 * MiB)} used" in text
    assert "this kernel: 164 MiB used, cap 512 MiB" in text
    assert "this kernel: 264 MiB used, cap 512 MiB" in text
    assert text.count("slice cap 50%, this kernel's cap 20%, policy default") == 2
    assert text.startswith(f"vgpu: kernel 3f2a1b9c (pid {os.getpid()}); region {runner.region}")
    assert "warning: libvgpu is not loaded in this process" in text  # pytest itself runs without it

    # Every figure is the region's: per device, the slice and each process's row.
    for region_dev in snap.devices:
        limit, used = region_dev.memory_limit, region_dev.memory_used
        assert limit is not None and f"{region_dev.uuid[:12]}  ({region_dev.uuid})" in text
        assert f"slice {format_memory(limit)}: {format_memory(used)} used, {format_memory(limit - used)} free" in text
        for proc in snap.processes:
            use = next(d for d in proc.devices if d.uuid == region_dev.uuid)
            name = "3f2a1b9c*" if proc.identity == ME else OTHER
            row = [name, str(proc.pid), *format_memory(use.memory_used).split(), f"{use.sm_share * 100:.1f}%",
                   str(use.launches)]
            assert row in [line.split() for line in text.splitlines()], (row, text)
            assert format_memory(use.memory_used) in page and f"<td>{proc.pid}</td>" in page

    # The same through the dataclasses.
    got = status.gather()
    assert [d.uuid for d in got.devices] == [UUID0, UUID1]
    for dev, region_dev in zip(got.devices, snap.devices):
        assert (dev.memory_limit, dev.memory_used, dev.sm_limit) == (GiB, region_dev.memory_used, 50)
        assert dev.own is not None and dev.own.pid == my_pid and dev.own.mine
        assert (dev.own.memory_limit, dev.own.sm_limit) == (512 * MiB, 20)
        assert sorted(k.pid for k in dev.kernels) == sorted([my_pid, other_pid])
        assert [k.mine for k in dev.kernels if k.pid == other_pid] == [False]
    assert [d.own.memory_used for d in got.devices if d.own] == [CONTEXT + 100 * MiB, CONTEXT + 200 * MiB]
    assert got.devices[1].memory_free == GiB - 2 * CONTEXT - 300 * MiB


def test_status_without_an_identity_finds_the_process_by_pid(runner: Runner, two_kernels: tuple[int, int],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    my_pid, _ = two_kernels
    monkeypatch.delenv("LIBVGPU_IDENTITY")
    got = status.gather(pid=my_pid)
    assert got.identity is None
    assert [d.own.memory_used for d in got.devices if d.own] == [CONTEXT + 100 * MiB, CONTEXT + 200 * MiB]
    assert status_text.format_text(got).startswith(f"vgpu: this process (pid {my_pid})")


def test_status_before_the_region_exists(shell: Any, env: dict[str, str], runner: Runner) -> None:
    assert not runner.region.exists()
    result, out = run(shell, "%vgpu")
    assert result.success
    (shown,) = out.outputs
    text = shown.data["text/plain"]
    assert status.NO_REGION in text
    assert "no GPU memory used yet in this slice: libvgpu creates the region at the first CUDA call" in text
    # Still the limits, from the environment.
    for line in ("slice VRAM: 1 GiB per GPU", "slice compute: 50% per GPU", "this kernel's VRAM cap: 512 MiB per GPU",
                 "this kernel's compute cap: 20% per GPU", "policy: default"):
        assert f"  {line}\n" in text + "\n"
    assert status.NO_REGION in shown.data["text/html"] and "512 MiB" in shown.data["text/html"]
    assert not runner.region.exists()  # looking never creates it


def test_status_with_per_device_and_malformed_limits(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    monkeypatch.setenv("CUDA_DEVICE_MEMORY_LIMIT_1", "2g")
    monkeypatch.setenv("LIBVGPU_PROCESS_SM_LIMIT", "100")
    monkeypatch.setenv("LIBVGPU_PROCESS_MEMORY_LIMIT", "4gb")
    text = status_text.format_text(status.gather())
    assert "  slice VRAM: 1 GiB per GPU, device 1: 2 GiB\n" in text
    assert "  this kernel's compute cap: none (the slice's)\n" in text  # 100 means no cap
    assert "  this kernel's VRAM cap: malformed LIBVGPU_PROCESS_MEMORY_LIMIT\n" in text
    assert "  problem: LIBVGPU_PROCESS_MEMORY_LIMIT='4gb' is malformed" in text


def test_unreadable_region(shell: Any, env: dict[str, str], runner: Runner) -> None:
    runner.region.write_bytes(b"not a region" * 100)
    (shown,) = run(shell, "%vgpu")[1].outputs
    assert "region unreadable: " in shown.data["text/plain"]
    assert "is not a libvgpu shared region" in shown.data["text/plain"]
    problems = [f for f in check.check() if not f.ok]
    assert any(f.message.startswith("region unreadable: ") for f in problems)


# ---- %vgpu check ---------------------------------------------------------------------


def test_check_here_says_libvgpu_is_not_loaded(shell: Any, env: dict[str, str]) -> None:
    assert not status.libvgpu_mappings(), "this test needs a pytest without libvgpu preloaded"
    result, out = run(shell, "%vgpu check")
    assert result.success and out.outputs == []
    lines = out.stdout.splitlines()
    assert lines[0] == "ok: NVIDIA driver library found (libcuda.so.1)"
    assert lines[1] == f"problem: {check.NOT_LOADED}"
    assert lines[1].startswith("problem: libvgpu is not loaded in this kernel: start it from a GPU kernelspec (")
    assert all(line.startswith(("ok: ", "problem: ")) for line in lines[:-1])
    assert lines[-1].startswith("verdict: NOT limited")
    assert "ok: slice VRAM: 1 GiB per GPU" in lines
    assert f"ok: no region yet at {env['CUDA_DEVICE_MEMORY_SHARED_CACHE']}: libvgpu creates it at the first CUDA call" \
        in lines
    assert check.check()[1] == check.Finding(False, check.NOT_LOADED)


@pytest.mark.parametrize("cpu_server", [True, False])
def test_without_a_gpu_every_view_leads_with_that(shell: Any, env: dict[str, str], cpu_server: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A CPU-only server (the spawners empty CUDA_VISIBLE_DEVICES), or a machine without
    # the NVIDIA driver: the first and only finding says so, not "install a GPU kernelspec".
    if cpu_server:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        reason = ("this server has no GPU (CUDA_VISIBLE_DEVICES is empty: a CPU-only server); "
                  "start a server with a GPU profile to get a GPU slice")
    else:
        def no_driver() -> None:
            raise OSError("libcuda.so.1: cannot open shared object file")
        monkeypatch.setattr(status, "load_driver", no_driver)
        reason = status.NO_DRIVER
    lines = run(shell, "%vgpu check")[1].stdout.splitlines()
    assert lines == [f"problem: {reason}",
                     "verdict: no GPU here, so there is nothing to limit and no slice to show"]
    (shown,) = run(shell, "%vgpu")[1].outputs
    assert shown.data["text/plain"] == f"vgpu: no GPU slice: {reason}"
    assert reason.split(":")[0] in shown.data["text/html"]
    result, out = run(shell, "%vgpu set memory=1GiB")
    assert not result.success
    assert str(result.error_in_exec) == f"vgpu set: there is no GPU slice to re-divide: {reason}"


def test_check_reports_malformed_limits(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    monkeypatch.setenv("CUDA_DEVICE_SM_LIMIT_1", "150")
    monkeypatch.setenv("GPU_CORE_UTILIZATION_POLICY", "fast")
    findings = check.check()
    problems = [f.message for f in findings if not f.ok]
    assert any(m.startswith("CUDA_DEVICE_SM_LIMIT_1='150' is malformed") for m in problems)
    assert any(m.startswith("GPU_CORE_UTILIZATION_POLICY='fast' is malformed") for m in problems)
    oks = [f.message for f in findings if f.ok]
    assert not any(m.startswith(("slice compute", "policy")) for m in oks)  # no ok line for a broken family


CHECK_SCRIPT = """
import ctypes, json
from hami_kernel import check
before = [str(f) for f in check.check()]
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0  # joins the slice: the region now exists, with this process in it
after = check.check()
print(json.dumps({"before": before, "after": [str(f) for f in after], "verdict": check.verdict(after)}))
"""


def test_check_under_libvgpu(runner: Runner, env: dict[str, str]) -> None:
    child_env = runner.env({**env, "FAKE_CUDA_DEVICE_COUNT": "1",
                            "PYTHONPATH": os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")])})
    done = subprocess.run([sys.executable, "-c", CHECK_SCRIPT], env=child_env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    before, after = report["before"], report["after"]
    assert all(line.startswith("ok: ") for line in before + after), before + after
    assert before[0] == f"ok: NVIDIA driver library found ({runner.build / 'fakedrv' / 'libcuda.so.1'})"
    assert before[1] == f"ok: libvgpu is loaded in this process ({runner.library})"
    assert f"ok: LD_PRELOAD names it ({runner.library})" in before
    assert "ok: slice VRAM: 1 GiB per GPU" in before and "ok: this kernel's compute cap: 20% per GPU" in before
    assert f"ok: identity in the slice: {ME}" in before
    assert f"ok: no region yet at {runner.region}: libvgpu creates it at the first CUDA call" in before
    assert f"ok: region {runner.region} readable (layout version 2, 1 GPU(s), 1 live process(es))" in after
    assert "ok: this kernel is accounted in the region (slot 0)" in after
    assert report["verdict"].startswith("verdict: libvgpu is active")


# ---- %vgpu set -------------------------------------------------------------------------


@pytest.fixture
def fake_set(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replaces set_kernel_slice (the real module if it is there) with a recorder."""
    calls: list[dict[str, Any]] = []

    def set_kernel_slice(identity: str, memory: Any = None, cores: Any = None, **kw: Any) -> str:
        calls.append({"identity": identity, "memory": memory, "cores": cores, **kw})
        if memory == "too much":
            raise ValueError("this kernel asks for too much,\n  more than the slice")
        return f"kernel {identity[:8]}: changed"

    try:
        import hami_kernel.redivide as module
        monkeypatch.setattr(module, "set_kernel_slice", set_kernel_slice)
    except ImportError:
        module = types.ModuleType("hami_kernel.redivide")
        module.set_kernel_slice = set_kernel_slice  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "hami_kernel.redivide", module)
    return calls


@pytest.mark.parametrize("line, memory, cores", [
    ("memory=2GiB cores=20", "2GiB", "20"),
    ("--memory 2GiB --cores 20", "2GiB", "20"),
    ("--cores=20", None, "20"),
    ("memory='1.5 GiB'", "1.5 GiB", None),
    ("memory=0 cores=", 0, ""),  # lifts this kernel's own caps
])
def test_set_passes_the_request_on(shell: Any, env: dict[str, str], fake_set: list[dict[str, Any]],
                                   line: str, memory: Any, cores: Any) -> None:
    result, out = run(shell, f"%vgpu set {line}")
    assert result.success, out.stderr
    assert out.stdout == "kernel 3f2a1b9c: changed\n"
    assert fake_set == [{"identity": ME, "memory": memory, "cores": cores}]


@pytest.mark.parametrize("line, message", [
    ("memory='too much'", "vgpu set: this kernel asks for too much, more than the slice"),
    ("", "vgpu set: nothing to set: give memory=SIZE and/or cores=PERCENT"),
    ("gpus=2", "vgpu set: unknown option 'gpus' (expected memory, cores)"),
    ("memory=1g memory=2g", "vgpu set: memory is given twice"),
    ("--memory", "vgpu set: --memory needs a value"),
])
def test_set_errors_are_one_line(shell: Any, env: dict[str, str], fake_set: list[dict[str, Any]],
                                 line: str, message: str) -> None:
    from IPython.core.error import UsageError

    result, out = run(shell, f"%vgpu set {line}")
    assert isinstance(result.error_in_exec, UsageError)
    assert out.stderr.strip() == f"UsageError: {message}"
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stdout == ""


def test_set_for_real(shell: Any, runner: Runner, two_kernels: tuple[int, int]) -> None:
    result, out = run(shell, "%vgpu set memory=256MiB --cores 10")
    assert result.success, out.stderr
    (line,) = out.stdout.splitlines()
    assert line.startswith("kernel 3f2a1b9c") and "256 MiB" in line and "10%" in line
    snap = read_region(runner.region)
    (mine,) = snap.process(ME)
    (other,) = snap.process(OTHER)
    assert [(d.memory_limit, d.sm_limit) for d in mine.devices] == [(256 * MiB, 10)] * 2
    assert [(d.memory_limit, d.sm_limit) for d in other.devices] == [(None, None)] * 2
    # What %vgpu shows next, including that this kernel now holds more than its new cap on GPU 1.
    text = status_text.format_text(status.gather())
    assert "this kernel: 164 MiB used, cap 256 MiB\n" in text
    assert "this kernel: 264 MiB used, cap 256 MiB (over its cap" in text

    result, out = run(shell, "%vgpu set memory=2GiB")  # more than the server's 1 GiB slice
    assert isinstance(result.error_in_exec, Exception)
    assert out.stderr.startswith("UsageError: vgpu set: ") and out.stderr.count("\n") == 1
    assert "1 GiB" in out.stderr
    assert [d.memory_limit for d in read_region(runner.region).process(ME)[0].devices] == [256 * MiB] * 2


# ---- usage -------------------------------------------------------------------------------


def test_help_and_unknown_subcommands(shell: Any, env: dict[str, str]) -> None:
    result, out = run(shell, "%vgpu --help")
    assert result.success and out.stdout == vgpu_ipython.USAGE + "\n"
    for line in ("%vgpu set memory=2GiB cores=20", "%vgpu watch [--interval 1.0]", "%vgpu check", "--count 5"):
        assert line in out.stdout
    result, out = run(shell, "%vgpu frobnicate")
    assert result.error_in_exec is not None
    assert out.stderr.startswith("UsageError: vgpu: unknown subcommand 'frobnicate'; usage:\n%vgpu ")
    result, out = run(shell, "%vgpu watch --interval 0")
    assert "UsageError: vgpu watch: --interval must be from 0.1 to 3600 seconds" in out.stderr


def test_load_ext_by_package_name(shell: Any, env: dict[str, str]) -> None:
    assert callable(hami_kernel.load_ipython_extension)
    vgpu_ipython.unload_ipython_extension(shell)
    assert "vgpu" not in shell.magics_manager.magics["line"]
    shell.extension_manager.load_extension("hami_kernel")
    try:
        result, out = run(shell, "%vgpu --help")
        assert result.success and out.stdout.startswith("%vgpu ")
    finally:
        shell.extension_manager.unload_extension("hami_kernel")


# ---- %vgpu watch, without a kernel ------------------------------------------------------


def test_watch_prints_lines_without_a_widget_frontend(shell: Any, env: dict[str, str], runner: Runner) -> None:
    started = time.monotonic()
    result, out = run(shell, "%vgpu watch --interval 0.1 --count 3")
    assert result.success, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and time.monotonic() - started >= 0.2
    assert all(line.endswith(status.NO_REGION) for line in lines)


def test_watch_line_shows_the_region(runner: Runner, two_kernels: tuple[int, int]) -> None:
    printed: list[str] = []
    assert watch.watch_text(0.1, 1, printed.append) == 1
    (line,) = printed
    assert "GPU-face0000 VRAM kernel 164 MiB (cap 512 MiB), slice 278 MiB of 1 GiB; compute " in line
    assert "| GPU-face0001 VRAM kernel 264 MiB (cap 512 MiB), slice 428 MiB of 1 GiB; " in line
    assert "(cap 20%)" in line


def test_watcher_lifecycle_in_process(env: dict[str, str], runner: Runner, two_kernels: tuple[int, int]) -> None:
    """Widgets work without a kernel (their comms are dummies): bars, then every way of stopping."""
    first = watch.start(interval=0.05)
    try:
        assert first.running and watch.current() is first
        (view,) = [v for v in first._devices.values() if v.uuid == UUID0]
        assert view.kernel_memory.value == CONTEXT + 100 * MiB and view.kernel_memory.max == GiB
        assert view.slice_memory.value == 2 * CONTEXT + 150 * MiB
        assert view.compute.max == 20
        assert view.kernel_memory_label.value == "164 MiB (cap 512 MiB)"
        time.sleep(0.3)
        assert first.refreshes >= 3

        second = watch.start(interval=0.05)  # a new watch replaces the old one
        assert not first.running and first.widget.comm is None and view.kernel_memory.comm is None
        assert watch.current() is second and second.running

        second.widget.close()  # closing the view stops its thread
        deadline = time.monotonic() + 2
        while second.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not second.running and watch.current() is None
        assert all(v.box.comm is None for v in second._devices.values())

        third = watch.start(interval=0.05)
        third.stop_button.click()
        assert not third.running and third.widget.comm is None and watch.current() is None
        assert watch.stop() is False

        counted = watch.start(interval=0.05, count=3)
        counted._thread.join(timeout=2)
        assert counted.refreshes == 3 and counted.status.value == "stopped after 3 refreshes"
        assert watch.stop() is True and counted.widget.comm is None
    finally:
        watch.stop()


def test_watch_tells_how_long_the_kernel_has_been_idle(env: dict[str, str], runner: Runner,
                                                      two_kernels: tuple[int, int]) -> None:
    # Where the server's idle policy runs it writes each kernel's idleness beside
    # the region; the live view says this kernel's, as %vgpu's table does.
    base = status.gather()
    me = "0f1e2d3c-aaaa-bbbb-cccc-000000000001"
    idle = {"kernels": {me: {"idle_seconds": 40, "idle": True}}}
    seen = dataclasses.replace(base, identity=me, idle=idle)
    assert status_text.status_line(seen).endswith("; idle 40 s IDLE")
    assert not status_text.status_line(dataclasses.replace(base, identity=me)).count("idle")  # no policy: nothing
    watcher = watch.Watcher(interval=60, read=lambda: seen)
    try:
        watcher.refresh()
        assert watcher.header.value.endswith(" · idle 40 s IDLE"), watcher.header.value
    finally:
        watcher.stop()


def test_watcher_survives_a_failing_read() -> None:
    def broken() -> status.SliceStatus:
        raise OSError("disk on fire")

    watcher = watch.Watcher(interval=0.05, read=broken).start()
    try:
        assert watcher.status.value == "refresh failed: OSError: disk on fire"
        time.sleep(0.15)
        assert watcher.running
    finally:
        watcher.stop()


# ---- %vgpu watch in a real kernel -------------------------------------------------------


class Kernel:
    """A Jupyter kernel and the iopub messages of the cells it ran."""

    def __init__(self, client: Any):
        self.client = client

    def execute(self, code: str, linger: float = 0.0) -> list[dict[str, Any]]:
        """Runs code; returns its iopub messages until idle, plus any within `linger` s after."""
        msg_id = self.client.execute(code)
        messages: list[dict[str, Any]] = []
        idle_at = None
        while idle_at is None or time.monotonic() < idle_at + linger:
            try:
                msg = self.client.get_iopub_msg(timeout=0.05 if idle_at else 20)
            except Exception:  # queue.Empty: nothing more within the poll
                if idle_at is None:
                    raise
                continue
            messages.append(msg)
            if (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                    and msg["parent_header"].get("msg_id") == msg_id and idle_at is None):
                idle_at = time.monotonic()
        errors = [m["content"] for m in messages if m["msg_type"] == "error"
                  or (m["msg_type"] == "stream" and m["content"]["name"] == "stderr")]
        assert not errors, errors
        return messages

    def until(self, seen: Callable[[list[dict[str, Any]]], bool], timeout: float = 30) -> list[dict[str, Any]]:
        """More iopub messages, until ``seen(them)`` holds: a background refresh comes when a
        loaded machine lets it, so the test waits for it rather than a fixed time."""
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not seen(messages):
            assert time.monotonic() < deadline, f"not seen within {timeout} s: {messages}"
            try:
                messages.append(self.client.get_iopub_msg(timeout=0.1))
            except Exception:  # queue.Empty: nothing yet
                continue
        return messages


@pytest.fixture
def kernel(runner: Runner, tmp_path: Path) -> Iterator[Kernel]:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    # A kernelspec of this interpreter, so the kernel imports the hami_kernel under test.
    spec_dir = tmp_path / "kernels" / "vgpu-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vgpu test", "language": "python"}))
    kernel_env = {**os.environ, **runner.env({
        **SLICE_ENV, "LIBVGPU_IDENTITY": ME, "LIBVGPU_ARBITER_DIR": str(tmp_path / "arbiter"),
        "PYTHONPATH": os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")]),
        "IPYTHONDIR": str(tmp_path / "ipython"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})}
    manager = KernelManager(kernel_name="vgpu-test",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))
    manager.start_kernel(env=kernel_env, cwd=str(tmp_path))
    client = manager.client()
    try:
        client.start_channels()
        client.wait_for_ready(timeout=60)
        yield Kernel(client)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def opened(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """comm_id -> initial state of each widget model opened."""
    return {m["content"]["comm_id"]: m["content"]["data"]["state"] for m in messages if m["msg_type"] == "comm_open"}


def updates(messages: list[dict[str, Any]], comm_id: str | None = None) -> list[dict[str, Any]]:
    return [m["content"]["data"]["state"] for m in messages
            if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update"
            and comm_id in (None, m["content"]["comm_id"])]


def closed(messages: list[dict[str, Any]]) -> set[str]:
    return {m["content"]["comm_id"] for m in messages if m["msg_type"] == "comm_close"}


def test_watch_in_a_kernel(kernel: Kernel, runner: Runner) -> None:
    kernel.execute("%load_ext hami_kernel.ipython")
    kernel.execute(ALLOCATOR + "assert alloc(100) == 0\n")

    first = kernel.execute("%vgpu watch --interval 0.2", linger=0.3)
    models = opened(first)
    bars = {state["description"]: comm for comm, state in models.items()
            if state["_model_name"] == "FloatProgressModel"}
    assert set(bars) == {"VRAM, kernel", "VRAM, slice", "compute"}
    (shown,) = [m["content"]["data"] for m in first if m["msg_type"] == "display_data"]
    root = shown["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert models[root]["_model_name"] == "VBoxModel"
    assert {state["_model_name"] for state in models.values()} >= {"LabelModel", "HTMLModel", "ButtonModel"}

    # While the view is up, the kernel runs cells, and the view follows what they do.
    later = kernel.execute("assert alloc(200) == 0")
    later += kernel.until(lambda more: any(u.get("value") == CONTEXT + 300 * MiB
                                           for u in updates(later + more, bars["VRAM, kernel"])))
    later += kernel.until(lambda more: "364 MiB of 1 GiB, 660 MiB free" in
                          [u.get("value") for u in updates(later + more)])
    ours = [u["value"] for u in updates(first + later, bars["VRAM, kernel"]) if "value" in u]
    assert ours[0] == CONTEXT + 100 * MiB and ours[-1] == CONTEXT + 300 * MiB, ours
    (mine,) = read_region(runner.region).process(ME)
    assert mine.devices[0].memory_used == CONTEXT + 300 * MiB
    labels = [u["value"] for u in updates(later) if isinstance(u.get("value"), str)]
    assert "364 MiB (cap 512 MiB)" in labels and "364 MiB of 1 GiB, 660 MiB free" in labels
    stamps = [u["value"] for u in updates(first + later) if str(u.get("value")).startswith("refreshed ")]
    assert stamps, "the time of the last refresh is shown"

    # A second watch closes the first view; the new one refreshes on its own.
    second = kernel.execute("%vgpu watch --interval 0.2", linger=0.5)
    assert closed(second) >= set(models)
    new_models = opened(second)
    assert new_models and not set(new_models) & set(models)
    # The old view may refresh once more while the new cell starts, but never
    # after its widgets are closed.
    first_close = min(i for i, m in enumerate(second) if m["msg_type"] == "comm_close")
    assert not [m for m in second[first_close:] if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] in models]

    # Stopping closes every widget of the view, and the updates stop.
    stop = kernel.execute("%vgpu watch stop", linger=0.6)
    assert closed(stop) == set(new_models)
    last_close = max(i for i, m in enumerate(stop) if m["msg_type"] == "comm_close")
    assert not [m for m in stop[last_close:] if m["msg_type"] == "comm_msg"]
    assert [m["content"]["text"] for m in stop if m["msg_type"] == "stream"] == ["vgpu watch: stopped\n"]
    quiet = kernel.execute("1", linger=0.5)
    assert not [m for m in quiet if m["msg_type"].startswith("comm_")]
