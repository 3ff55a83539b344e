#!/usr/bin/env python3
"""A notebook-like GPU worker for bench/pods.py: short bursts after think time.

    python3 bench/notebook.py --bursts 300 --think-ms 20,60 --burst-ms 2 [--wait-go] --json

A *burst* (a "cell") is a few bf16 matmuls, sized at start-up so that the
burst takes about --burst-ms on this GPU when it has the GPU to itself,
followed by a synchronize. Between bursts the worker sleeps a think time
drawn uniformly from --think-ms (seeded, so every run has the same
sequence). Each burst's latency is the host time from its first launch to
the synchronize's return. Prints one JSON object: the latencies (ms), their
p50 / p99 / max, and the burst's calibration.
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import libvgpu_loaded, wait_for_go  # noqa: E402

MATMUL_N = 4096


def percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * (len(sorted_ms) - 1) + 0.5))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bursts", type=int, default=300)
    p.add_argument("--think-ms", default="20,60", help="LO,HI: think time drawn uniformly between them")
    p.add_argument("--burst-ms", type=float, default=2.0)
    p.add_argument("--matmuls", type=int, default=0,
                   help="matmuls per burst (0: calibrate to --burst-ms); give the alone run's count to others")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--wait-go", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    lo, hi = (float(x) for x in args.think_ms.split(","))

    import torch
    torch.manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    c = torch.empty_like(a)
    for _ in range(20):  # warm-up (cuBLAS picks its kernel)
        torch.matmul(a, b, out=c)
    torch.cuda.synchronize()
    t = time.monotonic()
    for _ in range(50):
        torch.matmul(a, b, out=c)
    torch.cuda.synchronize()
    per_matmul_ms = (time.monotonic() - t) * 1000 / 50
    count = args.matmuls or max(1, round(args.burst_ms / per_matmul_ms))
    if args.wait_go:
        wait_for_go()
    rng = random.Random(args.seed)
    latencies = []
    t0 = time.monotonic()
    gc.disable()
    try:
        for _ in range(args.bursts):
            time.sleep(rng.uniform(lo, hi) / 1000)
            start = time.monotonic()
            for _ in range(count):
                torch.matmul(a, b, out=c)
            torch.cuda.synchronize()
            latencies.append((time.monotonic() - start) * 1000)
    finally:
        gc.enable()
    t1 = time.monotonic()
    ordered = sorted(latencies)
    result = {"program": "notebook", "t0": t0, "t1": t1, "bursts": args.bursts, "matmuls_per_burst": count,
              "matmul_ms_alone": per_matmul_ms, "think_ms": [lo, hi], "latencies_ms": latencies,
              "p50_ms": percentile(ordered, 0.5), "p99_ms": percentile(ordered, 0.99), "max_ms": ordered[-1],
              "libvgpu_loaded": libvgpu_loaded()}
    print(json.dumps(result, sort_keys=True) if args.json else result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
