"""libvgpu's C tests, against the fake driver, plain and under ASan + UBSan.

Each case of csrc/tests/test_libvgpu.c runs in a fresh process with
libvgpu LD_PRELOADed, a fresh shared region and a fresh fake-driver state,
in each way a program can reach the driver (linked, dlsym, cuGetProcAddress).
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from cbuild import ACCESS, Runner


SLICE_1G = {"CUDA_DEVICE_MEMORY_LIMIT": "1g"}


@pytest.mark.parametrize("access", ACCESS)
def test_every_allocation_path_is_limited(runner: Runner, access: str) -> None:
    out = runner.run("paths", SLICE_1G, access).stdout
    for path in ("cuMemAlloc", "cuMemAllocManaged", "cuMemAllocPitch", "cuMemAllocAsync",
                 "cuMemAllocFromPoolAsync", "cuArrayCreate", "cuArray3DCreate",
                 "cuMipmappedArrayCreate", "cuMemCreate"):
        assert f"ok {path}\n" in out


@pytest.mark.parametrize("access", ACCESS)
def test_info_queries_report_the_slice(runner: Runner, access: str) -> None:
    runner.run("info", SLICE_1G, access)


@pytest.mark.parametrize("access", ACCESS)
def test_null_out_pointers_never_crash(runner: Runner, access: str) -> None:
    runner.run("null_pointers", SLICE_1G, access)


def test_legacy_32bit_entry_points_are_refused(runner: Runner) -> None:
    runner.run("legacy", SLICE_1G)


@pytest.mark.parametrize("access", ["direct", "procaddr"])
def test_per_process_cap_inside_the_slice(runner: Runner, access: str) -> None:
    runner.run("process_cap", {**SLICE_1G, "LIBVGPU_PROCESS_MEMORY_LIMIT": "256m"}, access)


def test_slice_limit_changes_while_running(runner: Runner) -> None:
    runner.run("live_limit", SLICE_1G)


@pytest.mark.parametrize("access", ["direct", "procaddr"])
def test_contexts_are_charged_to_the_slice(runner: Runner, access: str) -> None:
    runner.run("contexts", SLICE_1G, access)


@pytest.mark.parametrize("access", ["direct", "ptsz"])
def test_sixteen_processes_never_exceed_the_slice_together(runner: Runner, access: str) -> None:
    # A 1 GiB slice and 16 small contexts leave room for about 12 of the 64
    # allocations that could be held at once: the processes must contend.
    env = {**SLICE_1G, "FAKE_CUDA_CONTEXT_SIZE": str(16 << 20)}
    out = runner.run("concurrent", env, access).stdout
    assert "refused=" in out


def test_sixteen_processes_with_context_size_being_measured(runner: Runner) -> None:
    # Same, but the context's size is unknown when they start: each measures.
    env = {**SLICE_1G, "FAKE_CUDA_CONTEXT_SIZE": str(16 << 20)}
    runner.run("concurrent", env)


def test_sigkilled_process_share_is_reclaimed(runner: Runner) -> None:
    runner.run("sigkill", SLICE_1G)


@pytest.mark.parametrize("access", ["direct", "dlsym"])
def test_rtld_next_keeps_its_meaning(runner: Runner, access: str) -> None:
    runner.run("rtld_next", SLICE_1G, access)


def test_profiler_chaining_with_rtld_next_stays_limited(runner: Runner) -> None:
    out = runner.run("rtld_next", SLICE_1G, shim=True).stdout
    assert "ok through the profiler shim" in out


def test_cuGetProcAddress_returns_the_wrapper_of_the_asked_abi(runner: Runner) -> None:
    runner.run("procaddr_abi", SLICE_1G)


@pytest.mark.parametrize("visible", [None, "1,0", "uuids"])
def test_two_gpus_each_get_their_own_limit(runner: Runner, visible: str | None) -> None:
    env = {"FAKE_CUDA_DEVICE_COUNT": "2", "CUDA_DEVICE_MEMORY_LIMIT_0": "1g",
           "CUDA_DEVICE_MEMORY_LIMIT_1": "2g"}
    if visible == "uuids":
        env["CUDA_VISIBLE_DEVICES"] = ("GPU-face0001-1020-3040-5060-708090a0b0c0,"
                                       "GPU-face0000-1020-3040-5060-708090a0b0c0")
    elif visible:
        env["CUDA_VISIBLE_DEVICES"] = visible
    out = runner.run("two_devices", env).stdout
    first = "GPU 0" if visible is None else "GPU 1"
    assert f"ok ordinal 0 is {first} with 1024 MiB" in out


def test_nvml_only_programs_see_the_slice(runner: Runner) -> None:
    runner.run("nvml_only", SLICE_1G)


def test_slot_records_identity_and_usage(runner: Runner) -> None:
    runner.run("identity", {**SLICE_1G, "LIBVGPU_IDENTITY": "kernel-3f2a9c"})


def test_child_forked_after_attaching_gets_its_own_slot(runner: Runner) -> None:
    runner.run("fork_after_init", SLICE_1G)


def test_log_level_zero_silences_but_still_fails_closed(runner: Runner) -> None:
    done = runner.run("fails_closed", {"CUDA_DEVICE_MEMORY_LIMIT": "4x", "LIBCUDA_LOG_LEVEL": "0"})
    assert "libvgpu[" not in done.stderr


def test_without_a_limit_the_whole_device_is_seen(runner: Runner) -> None:
    runner.run("unlimited")


BROKEN_ENV = [
    ("CUDA_DEVICE_MEMORY_LIMIT", "4x"),
    ("CUDA_DEVICE_MEMORY_LIMIT", "0"),
    ("CUDA_DEVICE_MEMORY_LIMIT", "-1g"),
    ("CUDA_DEVICE_MEMORY_LIMIT", "1.5g"),
    ("CUDA_DEVICE_MEMORY_LIMIT", "99999999999999999999g"),
    ("CUDA_DEVICE_MEMORY_LIMIT_0", "lots"),
    ("LIBVGPU_PROCESS_MEMORY_LIMIT", "4 GiB"),
    ("CUDA_DEVICE_SM_LIMIT", "150"),
    # set but empty, signs and spaces: refused, never "no limit" (tests/data/env_language.json has the rest)
    ("CUDA_DEVICE_MEMORY_LIMIT", ""),
    ("CUDA_DEVICE_SM_LIMIT", " 50"),
    ("CUDA_DEVICE_SM_LIMIT", "+50"),
    ("CUDA_DEVICE_SM_LIMIT", "-0"),
    ("GPU_CORE_UTILIZATION_POLICY", "fastest"),
]


@pytest.mark.parametrize("name,value", BROKEN_ENV)
@pytest.mark.parametrize("access", ["direct", "procaddr"])
def test_malformed_configuration_fails_closed(runner: Runner, name: str, value: str,
                                              access: str) -> None:
    done = runner.run("fails_closed", {name: value}, access)
    lines = [line for line in done.stderr.splitlines() if line.startswith("libvgpu[")]
    assert len(lines) == 1, done.stderr
    assert f"{name}='{value}'" in lines[0] and "CUDA calls will fail" in lines[0]


def _header(magic: int = 0x55504776, version: int = 2) -> bytes:
    return struct.pack("<IIIIII", magic, version, 4096 + 1024 * 1024, 16, 1024, 1024)


REGIONS = {
    "garbage": lambda: os.urandom(4096 + 1024 * 1024),
    "other_version": lambda: _header(version=7).ljust(4096 + 1024 * 1024, b"\0"),
    "bad_checksum": lambda: _header().ljust(4096 + 1024 * 1024, b"\0"),
    "truncated": lambda: _header()[:16],
}


@pytest.mark.parametrize("kind", sorted(REGIONS))
def test_corrupted_region_fails_closed(runner: Runner, kind: str) -> None:
    runner.region.write_bytes(REGIONS[kind]())
    done = runner.run("fails_closed", SLICE_1G)
    lines = [line for line in done.stderr.splitlines() if line.startswith("libvgpu[")]
    assert len(lines) == 1 and str(runner.region) in lines[0], done.stderr
    if kind == "other_version":
        assert "layout version 7" in lines[0]


def test_region_in_a_missing_directory_fails_closed(runner: Runner) -> None:
    done = runner.run("fails_closed", {**SLICE_1G,
                                       "CUDA_DEVICE_MEMORY_SHARED_CACHE": "/nonexistent/dir/r"})
    assert "cannot create the shared region" in done.stderr


def test_fake_driver_models_what_the_tests_rely_on(build: tuple[str, Path], tmp_path: Path) -> None:
    # The fake's own checks (numbering, cross-process state, cuGetProcAddress
    # rules, NVML) are what make the libvgpu tests above mean something.
    variant, build_dir = build
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(tmp_path),
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    done = subprocess.run([str(build_dir / "csrc" / "tests" / "fake" / "fake_selftest")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


PACING_CASES = ["share_changes_live", "notebook_force_no_stall", "pause_is_not_charged", "turn_edges", "power_scale", "force_power_headroom", "clock_order", "force_alone", "two_tenants", "four_tenants", "default_alone_borrows",
                "no_banked_credit", "silent_holder_is_displaced", "force_beside_default"]


@pytest.mark.parametrize("case", PACING_CASES)
def test_compute_share_logic_under_a_simulated_clock(build: tuple[str, Path], case: str) -> None:
    # pacer.c + arbiter.c driven by a discrete-event simulation of tenants and
    # a GPU: shares, start-up credit, fairness, work conservation, displacement.
    done = subprocess.run([str(build[1] / "csrc" / "tests" / "test_pacing"), case],
                          capture_output=True, text=True, timeout=600,
                          env={"UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
                               "ASAN_OPTIONS": "detect_leaks=1"})
    assert done.returncode == 0 and f"PASS {case}" in done.stdout, done.stdout + done.stderr


# The compute share end to end: libvgpu's limiter over the fake driver's GPU
# timeline, where every launch keeps the fake GPU busy for 1 ms (a graph for
# 3 ms: several kernels' work). Each case launches back to back for 1.5 s,
# drains, and prints the fraction of the time the fake GPU was busy and how
# often the launching thread slept; libvgpu's exit report says how much of
# the time it granted in turns. These run on the wall clock of a machine that
# may be loaded, so each bound is one that load cannot break: load delays
# launches (lowering how busy the GPU is) but does not change what the
# limiter grants, nor make an unpaced thread sleep. The exact shares are
# test_pacing.c's, on a simulated clock.
PACE_ACCESS = {"kernel": "direct", "coop": "dlsym", "graph": "procaddr"}
_BUSY_RE = re.compile(r"^busy ([\d.]+)% of ([\d.]+) s .*; the launching thread slept (\d+) times", re.M)
_GRANTED_RE = re.compile(r"compute share \d+%: \d+ turns, ([\d.]+) s in turns")


@dataclass
class Pace:
    busy: float  # percent of the wall time the fake GPU was busy
    wall: float  # seconds, first launch to drained
    slept: int  # voluntary context switches of the launching thread
    granted: float | None  # percent of the wall time libvgpu granted in turns; None: no limiter ran

    @classmethod
    def parse(cls, done: subprocess.CompletedProcess[str]) -> Pace:
        busy = _BUSY_RE.search(done.stdout)
        assert busy, done.stdout + done.stderr
        wall = float(busy.group(2))
        granted = _GRANTED_RE.search(done.stderr)
        return cls(float(busy.group(1)), wall, int(busy.group(3)),
                   100 * float(granted.group(1)) / wall if granted else None)


def _pace(runner: Runner, kind: str, env: dict[str, str]) -> Pace:
    # Each kind goes through a different access path; the kernel case also
    # uses cuLaunchKernelEx, and every case alternates legacy and _ptsz.
    full = {"FAKE_CUDA_LAUNCH_NS": "1000000", "FAKE_CUDA_GRAPH_LAUNCH_NS": "3000000",
            "LIBVGPU_ARBITER_DIR": str(runner.tmp / "arbiter"), "LIBCUDA_LOG_LEVEL": "3", **env}
    return Pace.parse(runner.run(f"pace_{kind}", full, PACE_ACCESS[kind]))


def _held_to_share(pace: Pace, share: int) -> None:
    # The GPU is never busy beyond the share (the case itself checks this too),
    # and the limiter granted the share's time: within 40% of it below, 5 points above.
    assert pace.busy <= share + 5, pace
    assert pace.granted is not None and 0.6 * share <= pace.granted <= share + 5, pace


@pytest.mark.parametrize("policy", ["force"])
@pytest.mark.parametrize("kind", sorted(PACE_ACCESS))
def test_capped_launches_are_held_to_the_share(runner: Runner, kind: str, policy: str) -> None:
    pace = _pace(runner, kind, {"CUDA_DEVICE_SM_LIMIT": "30", "GPU_CORE_UTILIZATION_POLICY": policy})
    print(f"{kind} [{runner.variant}, {policy}, cap 30%]: {pace}")
    _held_to_share(pace, 30)
    assert pace.slept >= 20, pace  # it waited between its turns (6 ms of each 20 ms)


@pytest.mark.parametrize("kind", sorted(PACE_ACCESS))
def test_uncapped_launches_are_never_held_back(runner: Runner, kind: str) -> None:
    # The control: with no cap no limiter runs, and the launching thread never
    # waits (a capped one sleeps around its turns, about 150 times here).
    pace = _pace(runner, kind, {})
    print(f"{kind} [{runner.variant}, no cap]: {pace}")
    assert pace.granted is None and pace.slept < 10, pace


def _timed_turns(stderr: str) -> tuple[int, float]:
    """(turns charged by the GPU's span, microseconds of edges left out per such turn) from the exit report."""
    match = re.search(r"turns charged by the GPU's span: (\d+), their edges left out ([\d.]+) us", stderr)
    assert match, stderr
    return int(match.group(1)), float(match.group(2))


TIMED = {"CUDA_DEVICE_SM_LIMIT": "30", "GPU_CORE_UTILIZATION_POLICY": "force", "LIBVGPU_TURN_CHARGE": "gpu",
         "FAKE_CUDA_LAUNCH_NS": "1000000", "FAKE_CUDA_START_NS": "400000", "LIBCUDA_LOG_LEVEL": "3"}


@pytest.mark.parametrize("kind", sorted(PACE_ACCESS))
def test_turns_timed_on_the_gpu_leave_out_its_start(runner: Runner, kind: str) -> None:
    # The fake GPU reaches a turn's first launch 0.4 ms after an idle gap.
    # Timed with events, each turn is charged without that edge, and the
    # share still holds.
    env = {**TIMED, "FAKE_CUDA_GRAPH_LAUNCH_NS": "3000000", "PACE_ONE_ENTRY": "1",
           "LIBVGPU_ARBITER_DIR": str(runner.tmp / "arbiter")}
    done = runner.run(f"pace_{kind}", env, PACE_ACCESS[kind])
    _held_to_share(Pace.parse(done), 30)
    turns, edge_us = _timed_turns(done.stderr)
    assert turns >= 5, done.stderr
    # At least the 0.4 ms start; at most half a turn (about 6 ms at 30% of a 20 ms period),
    # so the GPU's span is really measured. Load can only lengthen the host's side.
    assert 350 <= edge_us <= 3000, done.stderr


def test_turns_on_two_streams_are_charged_by_host_time(runner: Runner) -> None:
    # Legacy and per-thread default streams alternate: the events around a
    # turn would not bracket all its work, so no turn is charged by them.
    env = {**TIMED, "LIBVGPU_ARBITER_DIR": str(runner.tmp / "arbiter")}
    done = runner.run("pace_kernel", env)
    assert _timed_turns(done.stderr)[0] == 0, done.stderr


def test_turn_charge_setting_is_checked(runner: Runner) -> None:
    done = runner.run("pace_kernel", {**TIMED, "LIBVGPU_TURN_CHARGE": "wall"}, expect_ok=False)
    assert done.returncode != 0
    assert "LIBVGPU_TURN_CHARGE='wall' is not valid (expected host (the default) or gpu)" in done.stderr


def test_default_policy_alone_borrows_the_idle_gpu(runner: Runner) -> None:
    # Under `default` a capped process with the GPU to itself is not held to
    # its share: the limiter keeps extending its turn, granting it the time.
    pace = _pace(runner, "kernel", {"CUDA_DEVICE_SM_LIMIT": "30", "GPU_CORE_UTILIZATION_POLICY": "default"})
    print(f"kernel [{runner.variant}, default, cap 30%]: {pace}")
    assert pace.granted is not None and pace.granted >= 90, pace
