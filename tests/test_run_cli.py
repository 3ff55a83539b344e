"""``hami-kernel run``: a command in a slice without Jupyter (the README's no-hub line).

The command runs under the real libvgpu over the fake driver (two 80 GiB GPUs)
and asks CUDA what it sees, as nvidia-smi or PyTorch would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cbuild import build_tests

GIB = 1 << 30
# What the command under the slice sees through CUDA's driver API, and its region.
PROBE = """
import ctypes, json, os
cu = ctypes.CDLL("libcuda.so.1")
assert cu.cuInit(0) == 0
total, free, ctx = ctypes.c_size_t(), ctypes.c_size_t(), ctypes.c_void_p()
assert cu.cuDeviceTotalMem_v2(ctypes.byref(total), 0) == 0
assert cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0) == 0 and cu.cuCtxSetCurrent(ctx) == 0
ptr = ctypes.c_uint64()
over = cu.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(int(os.environ["ASK"])))
print(json.dumps({"total": total.value, "over_limit_alloc": over,
                  "region": os.environ["CUDA_DEVICE_MEMORY_SHARED_CACHE"],
                  "preload": os.environ["LD_PRELOAD"].split(":")[0]}))
"""


@pytest.fixture(scope="module")
def fake_gpus() -> dict[str, str]:
    build = build_tests("plain")
    return {"LD_LIBRARY_PATH": str(build / "fakedrv"), "FAKE_CUDA_DEVICE_COUNT": "2",
            "FAKE_CUDA_DEVICE_MEMORY": "80g", "LIBVGPU_LIBRARY": str(build / "csrc" / "libvgpu.so")}


def hami_kernel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "LIBVGPU_", "LD_PRELOAD"))}
    return subprocess.run([sys.executable, "-m", "hami_kernel.kernelspec_cli", *args], env={**full, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def test_a_command_runs_in_its_own_slice(fake_gpus: dict[str, str], tmp_path: Path) -> None:
    done = hami_kernel("run", "--memory", "4GiB", "--cores", "25", "--", sys.executable, "-c", PROBE,
                       env={**fake_gpus, "ASK": str(5 * GIB), "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["total"] == 4 * GIB  # the slice, not the GPU's 80 GiB
    assert seen["over_limit_alloc"] == 2  # CUDA_ERROR_OUT_OF_MEMORY: 5 GiB is over the slice
    assert seen["preload"] == fake_gpus["LIBVGPU_LIBRARY"]
    # A private region per run, gone with the command: a second run is not held to the first's limit.
    assert seen["region"].startswith(str(tmp_path / "hami-run-")) and not Path(seen["region"]).exists()
    again = hami_kernel("run", "--memory", "8GiB", "--", sys.executable, "-c", PROBE,
                        env={**fake_gpus, "ASK": str(GIB), "TMPDIR": str(tmp_path)})
    assert json.loads(again.stdout)["total"] == 8 * GIB and json.loads(again.stdout)["over_limit_alloc"] == 0


def test_runs_naming_one_region_share_one_slice(fake_gpus: dict[str, str], tmp_path: Path) -> None:
    region = tmp_path / "shared.region"
    first = hami_kernel("run", "--memory", "2GiB", "--region", str(region), "--", sys.executable, "-c", PROBE,
                        env={**fake_gpus, "ASK": str(GIB)})
    assert json.loads(first.stdout)["region"] == str(region) and region.exists()
    # The region keeps the slice's limit: a later run naming it is held to 2 GiB.
    second = hami_kernel("run", "--memory", "6GiB", "--region", str(region), "--", sys.executable, "-c", PROBE,
                         env={**fake_gpus, "ASK": str(3 * GIB)})
    assert json.loads(second.stdout)["total"] == 2 * GIB and json.loads(second.stdout)["over_limit_alloc"] == 2


def test_the_commands_exit_status_is_returned(fake_gpus: dict[str, str]) -> None:
    assert hami_kernel("run", "--memory", "1GiB", "--", "sh", "-c", "exit 3", env=fake_gpus).returncode == 3
    assert hami_kernel("run", "--memory", "1GiB", "--", "sh", "-c", "kill -TERM $$", env=fake_gpus).returncode == 143


@pytest.mark.parametrize("args, message", [
    (["--", "true"], "give --memory, --cores or both"),
    (["--memory", "4GB", "--", "true"], "'4GB' is ambiguous: write 4GiB"),
    (["--cores", "150", "--", "true"], "150"),
    (["--memory", "4GiB"], "give the command to run after --"),
    (["--memory", "4GiB", "--", "hami-no-such-command"], "cannot run 'hami-no-such-command': No such file"),
])
def test_bad_input_is_one_line_and_status_2(fake_gpus: dict[str, str], args: list[str], message: str) -> None:
    done = hami_kernel("run", *args, env=fake_gpus)
    assert done.returncode == 2, done
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("hami-kernel: error: ") and message in done.stderr


def test_run_needs_no_jupyter(fake_gpus: dict[str, str]) -> None:
    # Where only the driver and hami-jupyter are (a training node), run still works.
    blocked = ("import sys; sys.modules['jupyter_client'] = None; "
               "from hami_kernel.kernelspec_cli import main; "
               "raise SystemExit(main(['run', '--memory', '1GiB', '--', 'sh', '-c', 'exit 7']))")
    done = subprocess.run([sys.executable, "-c", blocked], env={**os.environ, **fake_gpus},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 7, done.stderr
