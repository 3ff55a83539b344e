"""libvgpu's compute share on a real GPU: turns timed with the driver's events.

The shares themselves are benchmarks (bench/suite.py, bench/RESULTS.md); this
checks that the real driver gives the limiter what LIBVGPU_TURN_CHARGE=gpu
needs, and that turns so charged still hold the cap's share of the time.

Run on the GPU machine: pytest -m gpu tests/gpu -v -s
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hami_kernel

pytestmark = pytest.mark.gpu

# bf16 matmuls back to back for a few seconds; prints the wall time from the
# first launch to the last one done.
LOOP = r"""
import json, sys, time, torch
a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
b = torch.randn_like(a)
torch.cuda.synchronize()
start = time.monotonic()
n = 0
while time.monotonic() - start < float(sys.argv[1]):
    torch.matmul(a, b)
    n += 1
torch.cuda.synchronize()
print(json.dumps({"seconds": time.monotonic() - start, "launches": n}))
"""


def capped_run(tmp_path: Path, charge: str, seconds: float = 4.0) -> tuple[dict, str]:
    env = dict(os.environ)
    env.update({
        "LD_PRELOAD": str(hami_kernel.library_path()),
        "CUDA_DEVICE_MEMORY_LIMIT": "8g",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(tmp_path / f"{charge}.region"),
        "LIBVGPU_ARBITER_DIR": str(tmp_path / f"arbiter-{charge}"),
        "CUDA_DEVICE_SM_LIMIT": "30",
        "GPU_CORE_UTILIZATION_POLICY": "force",
        "LIBVGPU_POWER_AWARE": "0",  # time shares only: the power charge is measured in bench/
        "LIBVGPU_TURN_CHARGE": charge,
        "LIBCUDA_LOG_LEVEL": "3",
    })
    done = subprocess.run([sys.executable, "-c", LOOP, str(seconds)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    print(charge, done.stdout.strip(), done.stderr.strip(), sep="\n")
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def time_in_turns(stderr: str) -> float:
    match = re.search(r"compute share 30%: \d+ turns, ([\d.]+) s in turns", stderr)
    assert match, stderr
    return float(match.group(1))


@pytest.mark.parametrize("charge", ["host", "gpu"])
def test_turns_hold_the_share_of_time(tmp_path: Path, charge: str) -> None:
    run, stderr = capped_run(tmp_path, charge)
    # Turns charged by the GPU's span leave the edges out, so they may take
    # a little more of the wall time than the cap; never much more.
    share = time_in_turns(stderr) / run["seconds"]
    assert 0.25 <= share <= 0.34, f"{share:.3f} of the time in turns under a 30% cap"


def test_the_real_driver_times_turns(tmp_path: Path) -> None:
    _, stderr = capped_run(tmp_path, "gpu")
    match = re.search(r"turns charged by the GPU's span: (\d+), their edges left out ([\d.]+) us", stderr)
    assert match, stderr
    turns, edge_us = int(match.group(1)), float(match.group(2))
    assert turns >= 20, stderr  # 4 s at 30% of 20 ms periods: about 200 turns
    assert 0 < edge_us < 1000, stderr
    assert "charged by host time" not in stderr  # no fallback warning
