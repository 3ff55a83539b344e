"""How far the driver's per-process count runs ahead of libvgpu's: the backstop's slack.

The backstop (hami_arbiter/backstop.py) compares what NVML says a slice's
processes hold with the slice's limit, allowing `slack` (128 MiB) per
process for memory the driver holds that libvgpu does not charge (kernel
code loaded lazily after the context was measured, the driver's rounding).
This measures that gap for real workloads: each runs under libvgpu in a
20 GiB slice on GPU 0, and this process (not preloaded) compares NVML's
figure for it with the region's, after each step.  A gap above the slack
would make the backstop act on a well-behaved slice at its limit.

    python3 bench/backstop_slack.py [--slack-mib 128]

Needs the package installed (libvgpu from hami_kernel.library_path()),
PyTorch, and one idle NVIDIA GPU; about a minute.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from hami_arbiter.nvml import NvmlReader
from hami_kernel import library_path
from hami_kernel.region import read_region

MiB = 1 << 20

WORKLOAD = r'''
import sys, torch

def cuda(*shape, dtype=torch.float32):
    return torch.randn(*shape, device="cuda", dtype=dtype)

def matmuls():
    return [cuda(4096, 4096, dtype=t) @ cuda(4096, 4096, dtype=t)
            for t in (torch.float32, torch.float16, torch.bfloat16)]

def transformer():
    layer = torch.nn.TransformerEncoderLayer(1024, 16, batch_first=True).cuda()
    x = torch.randn(8, 512, 1024, device="cuda", requires_grad=True)
    layer(x).sum().backward()
    return layer, x

def sorting():
    index = torch.randint(0, 1000, (1 << 20,), device="cuda")
    return [cuda(10_000_000).sort(), cuda(1 << 20).topk(100), cuda(1 << 24).cumsum(0),
            torch.zeros(1000, device="cuda").scatter_add_(0, index, torch.ones(1 << 20, device="cuda"))]

steps = {
    "context": lambda: torch.zeros(1, device="cuda"),
    "matmul fp32/fp16/bf16": matmuls,
    "conv2d (cuDNN)": lambda: torch.nn.Conv2d(64, 128, 3).cuda()(cuda(32, 64, 128, 128)),
    "fft": lambda: torch.fft.fft2(cuda(2048, 2048)),
    "transformer layer fwd+bwd": transformer,
    "sort, topk, scatter, cumsum": sorting,
    "many small tensors": lambda: [torch.empty(1000 + i, device="cuda") for i in range(20000)],
}
keep = []
for name, step in steps.items():
    keep.append(step())
    torch.cuda.synchronize()
    print(name, flush=True)
    sys.stdin.readline()
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slack-mib", type=int, default=128)
    args = parser.parse_args()
    region = os.path.join(tempfile.mkdtemp(prefix="backstop-slack-"), "region")
    env = {**os.environ, "LD_PRELOAD": str(library_path()), "CUDA_DEVICE_MEMORY_LIMIT": "20g",
           "CUDA_DEVICE_MEMORY_SHARED_CACHE": region, "CUDA_VISIBLE_DEVICES": "0"}
    child = subprocess.Popen([sys.executable, "-c", WORKLOAD], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    reader = NvmlReader()
    worst = 0
    try:
        for step in iter(child.stdout.readline, ""):
            gpu0 = reader.read()[0]
            driver = sum(p.used or 0 for p in gpu0.processes if p.pid == child.pid)
            charged = sum(d.memory_used for p in read_region(region).processes if p.pid == child.pid for d in p.devices)
            gap = driver - charged
            worst = max(worst, gap)
            print(json.dumps({"step": step.strip(), "driver_mib": round(driver / MiB, 1),
                              "libvgpu_mib": round(charged / MiB, 1), "gap_mib": round(gap / MiB, 1)}), flush=True)
            child.stdin.write("\n")
            child.stdin.flush()
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    verdict = "within" if worst <= args.slack_mib * MiB else "ABOVE"
    print(f"largest gap {worst / MiB:.1f} MiB: {verdict} the backstop's slack of {args.slack_mib} MiB per process")
    return 0 if verdict == "within" else 1


if __name__ == "__main__":
    sys.exit(main())
