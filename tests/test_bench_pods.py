"""bench/pods.py without a GPU: how shares are taken over the common interval, and
how tenants are started and released together (stand-in workers)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import pods  # noqa: E402


def test_shares_are_taken_over_the_interval_all_tenants_ran() -> None:
    # Two tenants that started 0.2 s apart: only windows inside [100.7, 102.0] count.
    a = {"t0": 100.0, "windows": [[0, 0.5, 10], [0.5, 1.0, 12], [1.0, 1.5, 14], [1.5, 2.0, 10]]}
    b = {"t0": 100.2, "windows": [[0, 0.5, 5], [0.5, 1.0, 6], [1.0, 1.5, 7], [1.5, 2.0, 5]]}
    assert pods.shares_of([a, b], 20.0) == [120.0, 65.0]
    with pytest.raises(SystemExit, match="no window"):
        pods.common_rate(a, 200.0, 201.0)


STANDIN = ("import json, os, sys; print('ready', flush=True); sys.stdin.readline(); "
           "print(json.dumps({k: os.environ.get(k) for k in ('LD_PRELOAD', 'CUDA_DEVICE_SM_LIMIT', "
           "'GPU_CORE_UTILIZATION_POLICY', 'LIBVGPU_ARBITER_SOCKET')}))")


def test_tenants_get_their_slice_and_start_together(tmp_path: Path) -> None:
    node = pods.Node("/nonexistent/libvgpu.so", pods=False)
    capped, native = pods.together([node.start(["-c", STANDIN], 30, "force"), node.start(["-c", STANDIN], None)])
    assert capped == {"LD_PRELOAD": "/nonexistent/libvgpu.so", "CUDA_DEVICE_SM_LIMIT": "30",
                      "GPU_CORE_UTILIZATION_POLICY": "force", "LIBVGPU_ARBITER_SOCKET": node.socket}
    assert native == dict.fromkeys(capped)  # no libvgpu at all
    shutil.rmtree(node.base)


def test_a_worker_that_fails_stops_the_run_with_its_output() -> None:
    node = pods.Node("/nonexistent/libvgpu.so", pods=False)
    with pytest.raises(SystemExit, match="did not get ready"):
        pods.together([node.start(["-c", "import sys; print('no GPU here'); sys.exit(1)"], None)])
    shutil.rmtree(node.base)
