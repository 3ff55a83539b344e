#!/usr/bin/env python3
"""The worker programs of the GPU benchmark suite (bench/suite.py): one workload per process.

    python3 bench/workloads.py info --json
    python3 bench/workloads.py launch --launches 200000 --json
    python3 bench/workloads.py tflops --size 8192 --products 600 --json
    python3 bench/workloads.py init --json
    python3 bench/workloads.py SHAPE --seconds 30 --window 0.5 [--wait-go] --json
        SHAPE: matmul | small | sync | graph | coop

Every program prints ONE JSON object as the last line of stdout (with --json;
without it, the same numbers as "key: value" lines). Programs that use
--wait-go first print a line "ready" (after CUDA start-up and warm-up) and
then block until a line "go" arrives on stdin, so that a caller can start
several of them and release them together; EOF instead of "go" ends the
worker with exit status 3.

Throughput of the window shapes. A shape is one repeated *iteration* (one
4096^3 matmul, one elementwise add, ...). The loop enqueues iterations back to
back and, once the host clock has passed the end of the current window,
synchronizes the device and reads the clock again. After that synchronize all
work enqueued so far has completed, and the next window's work is enqueued
only afterwards, so each window's count is exactly the work that ran between
its two (synchronized) timestamps: no work is attributed to the wrong window.
A window lasts at least --window seconds, plus the time to drain what was
still queued at its edge; rates are always count / measured duration. The
drain leaves the GPU idle for the few microseconds between the synchronize
returning and the next launch, equally in native and hooked runs.
Timestamps are time.monotonic() (CLOCK_MONOTONIC, one clock for every
process of the host), so the suite can line up the windows of concurrent
workers.

torch, cupy and numpy are imported inside the programs only: importing this
module needs none of them (the suite's CPU tests import run_windows).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

# Sizes of the workloads; the suite's README describes them.
SHARE_MATMUL_N = 4096      # shape "matmul": few big launches
SYNC_MATMUL_N = 4096       # shape "sync": one matmul, then synchronize
SMALL_ELEMENTS = 1 << 22   # shape "small": elementwise add over 4M float32 (~18 us on an H100)
GRAPH_MATMUL_N = 1024      # shape "graph": a CUDA graph of GRAPH_MATMULS matmuls
GRAPH_MATMULS = 20
COOP_BLOCK = 256           # shape "coop": one block per SM, grid-wide syncs
COOP_ROUNDS = 4
COOP_SPIN = 50_000         # dependent FMAs per thread between grid syncs (~0.1 ms)
SPIN_CYCLES = 1_000_000    # shape "spin": one thread, about 0.5 ms at 2 GHz

EMPTY_KERNEL = 'extern "C" __global__ void empty() {}'
COOP_KERNEL = r'''
#include <cooperative_groups.h>
extern "C" __global__ void coop_spin(float *out, int rounds, int spin) {
    cooperative_groups::grid_group grid = cooperative_groups::this_grid();
    float acc = (float)threadIdx.x;
    for (int r = 0; r < rounds; ++r) {
        for (int i = 0; i < spin; ++i)
            acc = acc * 0.999f + 1.0f;   /* converges to 1000 */
        grid.sync();
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}
'''

Window = Tuple[float, float, int]  # (start s, end s) since the run's t0, iterations completed


# --------------------------------------------------------------------------- the timed loop

def run_windows(step: Callable[[], object], synchronize: Callable[[], object], seconds: float,
                window: float, clock: Callable[[], float] = time.monotonic
                ) -> Tuple[float, List[Window]]:
    """Runs step() back to back for `seconds`, counting iterations per window.

    Returns (t0, windows): t0 is the clock at the start; each window is
    (start, end, iterations) with start and end relative to t0. Windows are
    contiguous, and each ends with a synchronize (see the module docstring).
    """
    synchronize()
    t0 = clock()
    windows: List[Window] = []
    start, edge, count = t0, t0 + window, 0
    while True:
        step()
        count += 1
        if clock() < edge:
            continue
        synchronize()
        now = clock()
        windows.append((start - t0, now - t0, count))
        if now - t0 >= seconds:
            return t0, windows
        start, edge, count = now, now + window, 0


@dataclass
class Shape:
    """One iteration of a window shape, plus how to wait for the device."""
    step: Callable[[], object]
    synchronize: Callable[[], object]
    describe: dict
    mem_total: Callable[[], int]
    check: Callable[[], None] = lambda: None  # after the run: did the work really happen?


def torch_random(n_rows: int, n_cols: int, dtype_name: str):
    import torch
    return torch.randn(n_rows, n_cols, device="cuda", dtype=getattr(torch, dtype_name))


def torch_mem_total() -> int:
    import torch
    return int(torch.cuda.mem_get_info()[1])


def cupy_mem_total() -> int:
    import cupy
    return int(cupy.cuda.runtime.memGetInfo()[1])


def shape_matmul(n: int = SHARE_MATMUL_N) -> Shape:
    import torch
    torch.manual_seed(0)
    a, b = torch_random(n, n, "bfloat16"), torch_random(n, n, "bfloat16")
    c = torch.empty_like(a)
    return Shape(step=lambda: torch.matmul(a, b, out=c), synchronize=torch.cuda.synchronize,
                 describe={"iteration": f"bf16 matmul {n}x{n}x{n}", "flop_per_iteration": 2 * n ** 3},
                 mem_total=torch_mem_total)


def shape_small(elements: int = SMALL_ELEMENTS) -> Shape:
    import torch
    torch.manual_seed(0)
    x, y = torch_random(1, elements, "float32"), torch_random(1, elements, "float32")
    z = torch.empty_like(x)
    return Shape(step=lambda: torch.add(x, y, out=z), synchronize=torch.cuda.synchronize,
                 describe={"iteration": f"float32 add of {elements} elements"},
                 mem_total=torch_mem_total)


def shape_sync(n: int = SYNC_MATMUL_N) -> Shape:
    import torch
    inner = shape_matmul(n)

    def step() -> None:
        inner.step()
        torch.cuda.synchronize()

    return Shape(step=step, synchronize=torch.cuda.synchronize,
                 describe={"iteration": f"bf16 matmul {n}^3 then torch.cuda.synchronize()",
                           "flop_per_iteration": 2 * n ** 3},
                 mem_total=torch_mem_total)


def shape_graph() -> Shape:
    import torch
    torch.manual_seed(0)
    n = GRAPH_MATMUL_N
    a, b = torch_random(n, n, "bfloat16"), torch_random(n, n, "bfloat16")
    outs = [torch.empty_like(a) for _ in range(GRAPH_MATMULS)]

    def body() -> None:
        for out in outs:
            torch.matmul(a, b, out=out)

    side = torch.cuda.Stream()  # warm up off the capture stream, as torch's docs ask
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return Shape(step=graph.replay, synchronize=torch.cuda.synchronize,
                 describe={"iteration": f"CUDA graph replay of {GRAPH_MATMULS} bf16 matmuls {n}^3",
                           "flop_per_iteration": GRAPH_MATMULS * 2 * n ** 3},
                 mem_total=torch_mem_total)


def coop_kernel() -> Tuple[Callable[..., object], str]:
    """coop_spin, launched through cuLaunchCooperativeKernel either way.

    As asked: RawKernel(enable_cooperative_groups=True), which CuPy builds as
    relocatable code linked with the toolkit's libcudadevrt.a. Should that
    build fail (no toolkit found), the kernel is built plainly (grid sync has
    not needed relocatable code since CUDA 11) and CuPy's Function is asked
    for the cooperative launch itself. The JSON says which one ran.
    """
    import cupy
    kernel = cupy.RawKernel(COOP_KERNEL, "coop_spin", enable_cooperative_groups=True)
    try:
        kernel.compile()
        return kernel, "RawKernel(enable_cooperative_groups=True)"
    except Exception as exc:  # CompileException, or CuPy's "cudadevrt is not found"
        print(f"workloads: coop_spin did not build with enable_cooperative_groups=True ({exc}); "
              "building it without relocatable code, launched cooperatively", file=sys.stderr)
    function = cupy.RawKernel(COOP_KERNEL, "coop_spin").kernel

    def launch(grid: tuple, block: tuple, args: tuple) -> None:
        function(grid, block, args, enable_cooperative_groups=True)

    return launch, "Function(enable_cooperative_groups=True), built without -rdc"


def shape_coop() -> Shape:
    import cupy
    import numpy
    kernel, build = coop_kernel()
    sms = int(cupy.cuda.Device(0).attributes["MultiProcessorCount"])
    grid, block = (sms,), (COOP_BLOCK,)
    out = cupy.zeros(sms * COOP_BLOCK, dtype=cupy.float32)
    args = (out, numpy.int32(COOP_ROUNDS), numpy.int32(COOP_SPIN))

    def check() -> None:
        low, high = float(out.min()), float(out.max())
        if not (999.0 <= low <= high <= 1001.0):
            raise RuntimeError(f"coop_spin wrote values in [{low}, {high}], expected about 1000: "
                               "the cooperative kernel did not run to completion")

    return Shape(step=lambda: kernel(grid, block, args),
                 synchronize=cupy.cuda.Device(0).synchronize,
                 describe={"iteration": f"cooperative launch (cuLaunchCooperativeKernel) of {sms}x"
                                        f"{COOP_BLOCK} threads, {COOP_ROUNDS} grid syncs",
                           "grid": sms, "block": COOP_BLOCK, "build": build},
                 mem_total=cupy_mem_total, check=check)


def shape_spin(cycles: int = SPIN_CYCLES) -> Shape:
    """One thread spinning on the clock: the GPU is busy (its clocks stay up)
    while drawing next to nothing for the work, so its power is about what
    it draws between a capped process's turns (bench/experiments/power_charge_check.sh)."""
    import torch
    return Shape(step=lambda: torch.cuda._sleep(cycles), synchronize=torch.cuda.synchronize,
                 describe={"iteration": f"one thread spinning {cycles} clock cycles (torch.cuda._sleep)"},
                 mem_total=torch_mem_total)


SHAPES = {"matmul": shape_matmul, "small": shape_small, "sync": shape_sync,
          "graph": shape_graph, "coop": shape_coop, "spin": shape_spin}
SIZED_SHAPES = ("matmul", "small", "sync")  # --size: the matmul's n, or the add's elements


# --------------------------------------------------------------------------- shared helpers

def libvgpu_loaded() -> bool:
    """Whether libvgpu is mapped into this process (proves LD_PRELOAD took effect)."""
    with open("/proc/self/maps") as maps:
        return any("libvgpu" in line for line in maps)


def wait_for_go(stdin=None, stdout=None) -> None:
    """Says "ready", then blocks until the caller writes "go" (EOF: the caller is gone)."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    print("ready", file=stdout, flush=True)
    line = stdin.readline()
    if line.strip() != "go":
        print(f"workloads: expected 'go' on stdin, got {line!r}; exiting", file=sys.stderr)
        raise SystemExit(3)


def emit(result: dict, as_json: bool, stdout=None) -> None:
    stdout = stdout or sys.stdout
    if as_json:
        print(json.dumps(result, sort_keys=True), file=stdout, flush=True)
        return
    for key in sorted(result):
        print(f"{key}: {result[key]}", file=stdout)
    stdout.flush()


# --------------------------------------------------------------------------- programs

def program_window(args: argparse.Namespace) -> dict:
    if args.size is not None and args.program not in SIZED_SHAPES:
        raise SystemExit(f"workloads: --size applies to {', '.join(SIZED_SHAPES)}, not {args.program}")
    shape = SHAPES[args.program]() if args.size is None else SHAPES[args.program](args.size)
    run_windows(shape.step, shape.synchronize, args.warmup_seconds, args.warmup_seconds)
    result = {"mem_total": shape.mem_total(), **shape.describe}
    if args.wait_go:
        wait_for_go()
    # As timeit does: Python's cyclic collector would otherwise stop the
    # launching thread for milliseconds now and then (torch's objects make a
    # full collection long), and under a cap such a stop falls in a turn.
    gc.collect()
    gc.disable()
    try:
        t0, windows = run_windows(shape.step, shape.synchronize, args.seconds, args.window)
    finally:
        gc.enable()
    shape.check()
    result.update(t0=t0, windows=[list(w) for w in windows], window=args.window,
                  seconds=args.seconds, iterations=sum(w[2] for w in windows))
    return result


def program_launch(args: argparse.Namespace) -> dict:
    import cupy
    kernel = cupy.RawKernel(EMPTY_KERNEL, "empty")
    device = cupy.cuda.Device(0)
    grid, block, params = (1,), (1,), ()

    def launches(count: int) -> float:
        device.synchronize()
        start = time.perf_counter()
        for _ in range(count):
            kernel(grid, block, params)
        device.synchronize()
        return time.perf_counter() - start

    launches(args.warmup_launches)  # compiles (NVRTC), loads the module, warms the path
    runs = [launches(args.launches) / args.launches * 1e9 for _ in range(args.repeats)]
    return {"launches": args.launches, "ns_per_launch_runs": runs,
            "ns_per_launch": statistics.median(runs), "mem_total": cupy_mem_total()}


def program_tflops(args: argparse.Namespace) -> dict:
    import torch
    shape = shape_matmul(args.size)
    run_windows(shape.step, shape.synchronize, args.warmup_seconds, args.warmup_seconds)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(args.products):
        shape.step()
    end.record()
    end.synchronize()
    ms = start.elapsed_time(end)
    flop = shape.describe["flop_per_iteration"] * args.products
    return {"size": args.size, "products": args.products, "ms": ms,
            "tflops": flop / (ms / 1e3) / 1e12, "mem_total": shape.mem_total()}


def program_init(args: argparse.Namespace) -> dict:
    """CUDA start-up alone: cuInit, the primary context and a first allocation."""
    import_start = time.monotonic()
    import cupy
    start = time.monotonic()
    count = cupy.cuda.runtime.getDeviceCount()
    device = cupy.cuda.Device(0)
    device.use()
    one = cupy.empty(1, dtype=cupy.float32)
    device.synchronize()
    end = time.monotonic()
    del one
    return {"devices": count, "import_ms": (start - import_start) * 1e3,
            "init_ms": (end - start) * 1e3, "init_start": start, "init_end": end,
            "mem_total": cupy_mem_total()}


def program_info(args: argparse.Namespace) -> dict:
    """Versions and the device, and a first use of torch, cuBLAS, CuPy and NVRTC."""
    import cupy
    import torch
    props = torch.cuda.get_device_properties(0)
    check = shape_matmul(256)
    check.step()
    check.synchronize()
    cupy.RawKernel(EMPTY_KERNEL, "empty")((1,), (1,), ())
    cupy.cuda.Device(0).synchronize()
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cupy": cupy.__version__,
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "device": props.name, "sms": props.multi_processor_count,
            "mem_total": torch_mem_total()}


PROGRAMS = {"info": program_info, "launch": program_launch, "tflops": program_tflops,
            "init": program_init, **{name: program_window for name in SHAPES}}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="program", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON line")
    for name in ("info", "init"):
        sub.add_parser(name, parents=[common])
    launch = sub.add_parser("launch", parents=[common])
    launch.add_argument("--launches", type=int, default=200_000)
    launch.add_argument("--warmup-launches", type=int, default=10_000)
    launch.add_argument("--repeats", type=int, default=5, help="timed batches; their median is reported")
    tflops = sub.add_parser("tflops", parents=[common])
    tflops.add_argument("--size", type=int, default=8192)
    tflops.add_argument("--products", type=int, default=600)
    tflops.add_argument("--warmup-seconds", type=float, default=1.0)
    for name in SHAPES:
        shape = sub.add_parser(name, parents=[common])
        shape.add_argument("--seconds", type=float, default=30.0)
        shape.add_argument("--window", type=float, default=0.5)
        shape.add_argument("--warmup-seconds", type=float, default=1.0)
        shape.add_argument("--size", type=int, default=None,
                           help="matmul/sync: n of the n^3 matmul; small: elements of the add")
        shape.add_argument("--wait-go", action="store_true",
                           help='print "ready" after warm-up, start on "go" from stdin')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = PROGRAMS[args.program](args)
    result.update(program=args.program, libvgpu_loaded=libvgpu_loaded())
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
