"""A dead process's share returns to its slice only once the driver has
freed its memory, and within a second (csrc/tests/test_reclaim.c).

The fake driver frees a SIGKILLed process's memory some milliseconds after
its death and lists it in NVML until then, as the real driver tears a dead
context down a little after the kernel has dropped the process's locks.
Its high-water mark is what the "GPU" really held at its peak.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cbuild import Runner

SLICE = {"CUDA_DEVICE_MEMORY_LIMIT": "1g", "FAKE_CUDA_CONTEXT_SIZE": str(4 << 20)}


def _run(runner: Runner, case: str, env: dict[str, str], timeout: float) -> str:
    binary = runner.build / "csrc" / "tests" / "test_reclaim"
    done = subprocess.run([str(binary), case], env=runner.env({**SLICE, **env}), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0 and f"PASS {case}" in done.stdout, (
        f"{case} [{runner.variant}] exited {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}")
    print(done.stdout)
    return done.stdout


@pytest.mark.parametrize("case", ["kill_and_take", "kill_and_take_unknown_pid"])
def test_killed_holders_share_is_handed_out_only_once_the_gpu_freed_it(runner: Runner, case: str) -> None:
    # A holds 700 MiB of the 1 GiB slice and is SIGKILLed; B asks for 700 MiB
    # every millisecond. The fake frees A's memory 100 ms after it finds A
    # dead: B must not get its memory before (the GPU's peak would pass the
    # slice), and must get it within 1 s of the kill. With the dead slot's
    # driver pid unknown (a PID namespace), the reclaim waits out a 500 ms grace.
    _run(runner, case, {"FAKE_CUDA_DEAD_FREE_MS": "100"}, timeout=60)


def test_stress_of_kills_and_restarts_never_exceeds_the_slice(runner: Runner) -> None:
    # 32 processes x 10,000 random allocations and frees (1-16 MiB, up to 8
    # held each) in one 1 GiB slice, with 1,000 SIGKILLs and restarts spread
    # over the run, against a fake that frees a dead process's memory 20 ms
    # after its death. The GPU's true peak stays within the slice and it
    # holds nothing at the end (the case checks both, and that the slice was
    # full at times). Plain and under the sanitizers alike.
    env = {"STRESS_PROCS": "32", "STRESS_OPS": "10000", "STRESS_KILLS": "1000", "FAKE_CUDA_DEAD_FREE_MS": "20"}
    _run(runner, "stress", env, timeout=600)
