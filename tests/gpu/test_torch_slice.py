"""libvgpu under PyTorch on a real GPU: the slice is what PyTorch sees and gets.

Run on the GPU machine: pytest -m gpu tests/gpu -v -s
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hami_kernel

pytestmark = pytest.mark.gpu
GiB = 1 << 30
PROBE = str(Path(__file__).with_name("torch_probe.py"))


def slice_env(region: Path, limit: str = "4g", **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "LD_PRELOAD": str(hami_kernel.library_path()),
        "CUDA_DEVICE_MEMORY_LIMIT": limit,
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(region),
        "LIBCUDA_LOG_LEVEL": "2",
    })
    env.update(extra)
    return env


def probe(env: dict[str, str], *args: str) -> dict:
    done = subprocess.run([sys.executable, PROBE, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(args, result)
    return result


ALLOCATORS = {
    "native": {},
    "expandable_segments": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
    "cudaMallocAsync": {"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"},
}


@pytest.mark.parametrize("allocator", sorted(ALLOCATORS))
def test_torch_sees_and_is_held_to_a_4gib_slice(tmp_path: Path, allocator: str) -> None:
    env = slice_env(tmp_path / "region", **ALLOCATORS[allocator])
    r = probe(env, "limits", "3", "2")
    assert r["total"] == 4 * GiB
    assert r["free"] < 4 * GiB  # the context is charged to the slice
    assert r["more"] == "OutOfMemoryError"
    assert r["again"] == "ok"


def test_without_the_library_torch_sees_the_whole_gpu(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    r = probe(env, "limits", "3", "2")
    assert r["total"] > 40 * GiB
    assert r["more"] == "ok"


def start_holder(env: dict[str, str], gib: float, first_try: float | None = None
                 ) -> tuple[subprocess.Popen[str], dict]:
    args = [sys.executable, PROBE, "hold", str(gib)] + ([str(first_try)] if first_try else [])
    holder = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None
    line = holder.stdout.readline()
    assert line.startswith("ready"), holder.stderr.read() if holder.stderr else line
    return holder, json.loads(line.split(" ", 1)[1])


def gpu_usage_mib_by_pid() -> dict[int, int]:
    """What the GPU itself says each process holds (nvidia-smi, without libvgpu)."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}).stdout
    usage = {}
    for line in out.strip().splitlines():
        pid, mib = (part.strip() for part in line.split(","))
        usage[int(pid)] = int(mib)
    return usage


def test_two_processes_cannot_hold_more_than_the_slice_together(tmp_path: Path) -> None:
    env = slice_env(tmp_path / "region")
    first, _ = start_holder(env, 2)
    # The second asks for 2 GiB (refused: with two contexts that would pass
    # 4 GiB), then settles for 0.75 GiB and keeps it.
    second, tried = start_holder(env, 0.75, first_try=2)
    try:
        assert tried["tried"] == "OutOfMemoryError"
        usage = gpu_usage_mib_by_pid()
        together = usage[first.pid] + usage[second.pid]
        print(f"nvidia-smi: first {usage[first.pid]} MiB + second {usage[second.pid]} MiB "
              f"= {together} MiB of a 4096 MiB slice")
        assert together <= 4096
    finally:
        for p in (first, second):
            p.kill()
            p.wait()


def test_sigkilled_process_frees_its_share_at_once(tmp_path: Path) -> None:
    env = slice_env(tmp_path / "region")
    holder, _ = start_holder(env, 2.5)
    assert probe(env, "try", "2.5")["result"] == "OutOfMemoryError"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    assert probe(env, "try", "2.5")["result"] == "ok"
    print(f"retook 2.5 GiB {time.monotonic() - started:.2f} s after the kill "
          "(a new Python process and CUDA start included)")


def test_a_process_whose_context_does_not_fit_gets_out_of_memory(tmp_path: Path) -> None:
    # 3.5 GiB held leaves no room for a second CUDA context in 4 GiB: CUDA
    # start-up itself reports out of memory; the holder is untouched.
    env = slice_env(tmp_path / "region")
    holder, _ = start_holder(env, 3)
    try:
        result = probe(env, "try", "0.1")["result"]
        assert "out of memory" in result.lower() or result == "OutOfMemoryError"
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_nvidia_smi_under_the_library_shows_the_slice(tmp_path: Path) -> None:
    env = slice_env(tmp_path / "region")
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total,memory.used,memory.free",
                          "--format=csv,noheader,nounits", "-i", "0"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    total, used, free = (int(x) for x in out.stdout.strip().split(","))
    print("nvidia-smi under libvgpu: total/used/free MiB", total, used, free)
    assert total == 4096
    assert used + free == total


def test_malformed_limit_fails_closed_under_torch(tmp_path: Path) -> None:
    env = slice_env(tmp_path / "region", limit="4gigs")
    done = subprocess.run([sys.executable, "-c",
                           "import torch; print(torch.cuda.is_available())"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False"
    assert "CUDA_DEVICE_MEMORY_LIMIT='4gigs' is not valid" in done.stderr
