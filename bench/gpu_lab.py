#!/usr/bin/env python3
"""A real ``jupyter lab`` on a GPU: two PyTorch kernels in one slice, seen by the server
extension and by nvidia-smi at the same moments.

The server runs in a 16 GiB / 50% slice (tests/lab_harness.py starts it, with
the installed libvgpu); two notebook sessions start kernels through
hami-provisioner from an 8 GiB kernelspec; one holds 3 GiB and multiplies
matrices, the other holds 1.5 GiB and idles. Every second, for ``--seconds``,
it records the usage report (what the status bar and panel show) and
``nvidia-smi --query-compute-apps`` (what the driver attributes to each
process), and prints both per process. ``--out`` keeps everything, the
reports included, for bench/gpu_lab_screenshot.py.

    python3 bench/gpu_lab.py --out gpu_lab.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

MiB = 1 << 20
BUSY = """
import threading, time, torch
x = torch.randn(8192, 8192, device="cuda")
held = torch.empty(3 << 30, dtype=torch.uint8, device="cuda")
def work(until):
    while time.time() < until:
        x @ x
        torch.cuda.synchronize()
threading.Thread(target=work, args=(time.time() + {seconds},), daemon=True).start()
"""
IDLE = """
import torch
held = torch.empty(1536 << 20, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
"""


def nvidia_smi() -> dict[int, int]:
    """{pid: MiB} as the driver attributes GPU memory to processes."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        if line.strip():
            pid, used = (part.strip() for part in line.split(","))
            found[int(pid)] = int(used)
    return found


def gpu_name() -> str:
    return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from lab_harness import Server, install_spec

    library = subprocess.run([sys.executable, "-c", "import hami_kernel; print(hami_kernel.library_path())"],
                             cwd="/", capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="gpu-lab-") as tmp_name:
        tmp = Path(tmp_name)
        env = {"CUDA_DEVICE_MEMORY_LIMIT": "16g", "CUDA_DEVICE_SM_LIMIT": "50",
               "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(tmp / "slice.region"),
               "LIBVGPU_ARBITER_DIR": str(tmp / "arbiter"), "LIBVGPU_LIBRARY": library}
        server = Server(tmp, env, app="jupyterlab", base_url="/user/alice/")
        install_spec(server.data, "gpu-8g", {"memory": "8GiB", "cores": 30})
        server.start()
        samples: list[dict[str, Any]] = []
        try:
            train = server.open_notebook("experiments/train.ipynb", "gpu-8g")
            evaluate = server.open_notebook("experiments/eval.ipynb", "gpu-8g")
            server.execute(train, BUSY.format(seconds=args.seconds + 30))
            server.execute(evaluate, IDLE)
            time.sleep(2)  # a second of statistics in the region
            for _ in range(args.seconds):
                t = time.time()
                samples.append({"time": t, "usage": server.usage(), "nvidia_smi": nvidia_smi()})
                time.sleep(max(0.0, 1.0 - (time.time() - t)))
            _, _, metrics = server.get("api/vgpu/v1/metrics", raw=True)
        finally:
            server.stop()

    last = samples[-1]
    rows = []
    for kernel in last["usage"]["kernels"]:
        shown = sum(d["memory_used_bytes"] for d in kernel["devices"]) / MiB
        driver = last["nvidia_smi"].get(kernel["pid"])
        rows.append((kernel["path"], kernel["pid"], shown, driver,
                     sum(d["compute_used_ratio"] for d in kernel["devices"])))
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {gpu_name()}")
    device = last["usage"]["devices"][0]
    print(f"slice: {device['memory_used_bytes'] / MiB:.0f} MiB of {device['memory_limit_bytes'] / MiB:.0f} MiB, "
          f"compute {device['compute_used_ratio'] * 100:.0f}% of {device['compute_cap_ratio'] * 100:.0f}%")
    print("| notebook | pid | VRAM shown (MiB) | nvidia-smi (MiB) | difference (MiB) | compute shown |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path, pid, shown, driver, compute in rows:
        diff = "" if driver is None else f"{shown - driver:+.0f}"
        print(f"| {path} | {pid} | {shown:.0f} | {driver if driver is not None else 'absent'} | {diff} "
              f"| {compute * 100:.0f}% |")
    worst = max((abs(shown - driver) for _, _, shown, driver, _ in rows if driver is not None), default=None)
    print(f"largest difference over the last sample: {worst} MiB; samples: {len(samples)}")
    if args.out:
        args.out.write_text(json.dumps({"gpu": gpu_name(), "samples": samples, "metrics": metrics}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
