"""A notebook on a GPU kernelspec, executed with nbclient on a real GPU.

The server's slice is 8 GiB; the notebook's kernel is `gpu-4g` (a 4 GiB
sub-slice, installed by `hami-kernel install`). Run on the GPU machine:
pytest -m gpu tests/gpu -v -s
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
GiB, MiB = 1 << 30, 1 << 20

CELLS = [
    # 1: what PyTorch sees
    "import json, os, subprocess, torch\n"
    "free, total = torch.cuda.mem_get_info()\n"
    "results = {'total': total, 'pid': os.getpid(), 'identity': os.environ.get('LIBVGPU_IDENTITY')}",
    # 2: within the sub-slice, then past it
    "held = torch.empty(3 * 2**30, dtype=torch.uint8, device='cuda')\n"
    "try:\n"
    "    more = torch.empty(2 * 2**30, dtype=torch.uint8, device='cuda')\n"
    "    results['oom'] = False\n"
    "except torch.OutOfMemoryError as exc:\n"
    "    results['oom'] = True\n"
    "    results['oom_message'] = str(exc).splitlines()[0]",
    # 3: the magic
    "%vgpu",
    # 4: what NVML attributes to this process, and what the region says
    "torch.cuda.synchronize()\n"
    "smi = subprocess.run(['nvidia-smi', '--query-compute-apps=pid,used_memory', '--format=csv,noheader,nounits'],\n"
    "                     capture_output=True, text=True).stdout\n"
    "results['smi_mib'] = {int(p): int(m) for p, m in (l.split(', ') for l in smi.strip().splitlines())}\n"
    "from hami_kernel.region import read_region\n"
    "mine = read_region(os.environ['CUDA_DEVICE_MEMORY_SHARED_CACHE']).process(results['identity'])\n"
    "results['region_used'] = mine[0].devices[0].memory_used if mine else None\n"
    "print(json.dumps(results))",
]


def test_notebook_on_a_4g_kernel_in_an_8g_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = tmp_path / "prefix"
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("CUDA_DEVICE_MEMORY_LIMIT", "8g")  # the server's slice
    monkeypatch.setenv("CUDA_DEVICE_MEMORY_SHARED_CACHE", str(tmp_path / "server.region"))
    monkeypatch.setenv("LIBVGPU_ARBITER_DIR", str(tmp_path))
    subprocess.run([sys.executable, "-m", "hami_kernel.kernelspec_cli", "install", "--name", "gpu-4g",
                    "--memory", "4GiB", "--prefix", str(prefix)], check=True)

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    client = nbclient.NotebookClient(nb, kernel_name="gpu-4g", timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    vgpu_text = "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in nb.cells[2].outputs)
    results = json.loads(nb.cells[3].outputs[-1]["text"].strip().splitlines()[-1])
    print(vgpu_text)
    print(results)
    assert results["total"] == 4 * GiB  # torch sees the kernel's 4 GiB, not the server's 8
    assert results["oom"] is True, "a 2 GiB tensor on top of 3 GiB must not fit in 4 GiB"
    smi = results["smi_mib"][str(results["pid"])] * MiB  # JSON keys are strings
    used = results["region_used"]
    # The region charges exactly what the driver holds for the process:
    # allocations plus its measured context (NVML rounds to MiB).
    assert abs(used - smi) <= 64 * MiB, (used, smi)
    # %vgpu shows that same number for this kernel.
    from hami_kernel.slice import format_memory
    assert format_memory(used) in vgpu_text, vgpu_text
