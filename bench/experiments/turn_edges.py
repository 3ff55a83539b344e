#!/usr/bin/env python3
"""Where a short turn loses time, with no libvgpu: the host sleeps for a gap,
then launches a shape's kernels for a turn's worth of host time and
synchronizes, as a process under a cap does. For each gap it prints, per turn,
the host's span (wake to synchronized), the GPU's span (a timed event before
the first launch to one after the last), their difference (the GPU waiting
for the host at the start, plus the synchronize's return), and the GPU time
per kernel against the same kernels back to back with no gap.

    python3 turn_edges.py [--size N] [--turn-ms 2] [--gaps-ms 0,6,18] [--turns 200]

A difference near a turn's loss under a cap (about 130 µs for 16M elements,
260 µs for 4M at 10% on an H100) says the loss is at the edges, where a charge
from the GPU's own start would remove it; a GPU time per kernel above the
gapless one says the GPU itself runs slower after an idle gap.
"""
from __future__ import annotations

import argparse
import statistics
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1 << 22, help="float32 elements per add (default 4M)")
    parser.add_argument("--turn-ms", type=float, default=2.0, help="host time spent launching per turn")
    parser.add_argument("--gaps-ms", default="0,6,18", help="idle gaps between turns, comma-separated")
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args()

    import torch
    x = torch.randn(args.size, device="cuda")
    y = torch.randn(args.size, device="cuda")
    z = torch.empty_like(x)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(200):
        torch.add(x, y, out=z)
    torch.cuda.synchronize()

    print(f"add of {args.size} float32, turns of {args.turn_ms:g} ms host time, {args.turns} turns per gap")
    print(f"{'gap ms':>7} {'host span us':>13} {'GPU span us':>12} {'host-GPU us':>12} "
          f"{'p90 host-GPU':>13} {'kernels':>8} {'GPU us/kernel':>14}")
    for gap_ms in (float(g) for g in args.gaps_ms.split(",")):
        host_spans, gpu_spans, counts = [], [], []
        for _ in range(args.turns):
            if gap_ms > 0:
                time.sleep(gap_ms / 1e3)
            t0 = time.perf_counter()
            begin.record()
            n = 0
            while (time.perf_counter() - t0) * 1e3 < args.turn_ms:
                torch.add(x, y, out=z)
                n += 1
            end.record()
            end.synchronize()
            t1 = time.perf_counter()
            host_spans.append((t1 - t0) * 1e6)
            gpu_spans.append(begin.elapsed_time(end) * 1e3)
            counts.append(n)
        diffs = sorted(h - g for h, g in zip(host_spans, gpu_spans))
        per_kernel = sum(gpu_spans) / sum(counts)
        print(f"{gap_ms:7g} {statistics.mean(host_spans):13.1f} {statistics.mean(gpu_spans):12.1f} "
              f"{statistics.mean(diffs):12.1f} {diffs[int(0.9 * len(diffs))]:13.1f} "
              f"{statistics.mean(counts):8.1f} {per_kernel:14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
