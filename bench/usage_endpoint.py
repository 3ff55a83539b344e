#!/usr/bin/env python3
"""How fast ``GET api/vgpu/v1/usage`` answers with many kernels in the slice.

Every open JupyterLab tab asks it once a second, in the user's server's one
event loop, so it must stay small: the goal is a p99 under 5 ms with 16
kernels in the slice at 10 requests/s. The run starts a real jupyter server
in a 16 GiB slice (tests/lab_harness.py), opens N notebook sessions whose
kernels start through hami-provisioner and hold GPU memory, then sends
requests at a fixed rate over one keep-alive connection and times each
answer on the client (so the loopback is included).

    python3 bench/usage_endpoint.py                     # fake driver, 16 kernels, 10/s for 60 s
    python3 bench/usage_endpoint.py --driver real       # a real GPU: each kernel holds memory with PyTorch
    python3 bench/usage_endpoint.py --kernels 4 --seconds 10 --json
    python3 bench/usage_endpoint.py --quick             # a smoke run (tests use it)

``--driver fake`` builds libvgpu and the fake CUDA driver as the tests do
(needs cmake); ``--driver real`` uses the installed libvgpu.
"""
from __future__ import annotations

import argparse
import http.client
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test harness: a real server in a slice

GOAL_P99_MS = 5.0
TORCH_HOLD = "import torch\n_held = torch.empty({mib} << 20, dtype=torch.uint8, device='cuda')"


def percentile(sorted_ms: list[float], q: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(q / 100 * (len(sorted_ms) - 1))))
    return sorted_ms[index]


def start_server(tmp: Path, driver: str, kernels: int, mib: int) -> tuple[Any, list[str]]:
    from lab_harness import Server, install_spec

    if driver == "fake":
        from cbuild import build_tests
        from lab_harness import slice_env

        env = slice_env(build_tests("plain"), tmp, memory="16g", cores="")
    else:
        # The installed libvgpu (the server imports this checkout's hami_kernel, which has no build of it).
        import subprocess

        library = subprocess.run([sys.executable, "-c", "import hami_kernel; print(hami_kernel.library_path())"],
                                 cwd="/", capture_output=True, text=True, check=True).stdout.strip()
        env = {"CUDA_DEVICE_MEMORY_LIMIT": "16g", "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(tmp / "slice.region"),
               "LIBVGPU_ARBITER_DIR": str(tmp / "arbiter"), "LIBVGPU_LIBRARY": library}
    server = Server(tmp, env, base_url="/")
    install_spec(server.data, "gpu", {"memory": "2GiB"})
    server.start()
    ids = []
    for i in range(kernels):
        kernel = server.open_notebook(f"bench/notebook-{i:02d}.ipynb", "gpu")
        if driver == "fake":
            assert server.allocate(kernel, mib) == 0
        else:
            server.execute(kernel, TORCH_HOLD.format(mib=mib))
        ids.append(kernel)
    return server, ids


def measure(server: Any, rate: float, seconds: float, endpoint: str = "api/vgpu/v1/usage") -> list[float]:
    """Requests at ``rate`` per second for ``seconds``; each answer's time in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    path = f"{server.base_url}{endpoint}"
    headers = {"Authorization": f"token {server.token}"}
    times = []
    period = 1.0 / rate
    start = time.perf_counter()
    for n in range(max(1, int(rate * seconds))):
        due = start + n * period
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers)
        reply = conn.getresponse()
        body = reply.read()
        times.append((time.perf_counter() - t0) * 1000)
        if reply.status != 200:
            raise SystemExit(f"usage_endpoint.py: HTTP {reply.status}: {body[:200]!r}")
    conn.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--driver", choices=["fake", "real"], default="fake")
    parser.add_argument("--kernels", type=int, default=16)
    parser.add_argument("--mib", type=int, default=64, help="what each kernel holds (MiB)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quick", action="store_true", help="2 kernels, 2 s: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.kernels, args.seconds = 2, 2.0
    if args.kernels < 1 or args.rate <= 0 or args.seconds <= 0 or args.mib < 1:
        parser.error("--kernels and --mib must be at least 1, --rate and --seconds positive")

    with tempfile.TemporaryDirectory(prefix="usage-bench-") as tmp:
        server, ids = start_server(Path(tmp), args.driver, args.kernels, args.mib)
        try:
            report = server.usage()
            in_region = sum(1 for k in report["kernels"] if k["kernel_id"] in ids)
            if in_region != len(ids):
                raise SystemExit(f"usage_endpoint.py: {in_region} of {len(ids)} kernels in the usage report")
            body_bytes = len(json.dumps(report))
            times = measure(server, args.rate, args.seconds)
            # The same loop on jupyter-server's cheapest authenticated endpoint: the floor
            # (HTTP, authentication, loopback, this client) that every endpoint pays.
            floor = sorted(measure(server, args.rate, min(args.seconds, 20.0), "api/status"))
        finally:
            server.stop()
    ordered = sorted(times)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "driver": args.driver, "kernels": args.kernels, "rate_per_s": args.rate, "requests": len(times),
        "report_bytes": body_bytes, "goal_p99_ms": GOAL_P99_MS,
        "p50_ms": round(percentile(ordered, 50), 3), "p90_ms": round(percentile(ordered, 90), 3),
        "p99_ms": round(percentile(ordered, 99), 3), "max_ms": round(ordered[-1], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "api_status_p50_ms": round(percentile(floor, 50), 3), "api_status_p99_ms": round(percentile(floor, 99), 3),
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "cpus": __import__("os").cpu_count()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['date']}: {args.kernels} kernels in the slice ({args.driver} driver), "
              f"{len(times)} requests at {args.rate:g}/s, report {body_bytes} bytes")
        print("| endpoint | p50 ms | p90 ms | p99 ms | max ms | goal p99 ms |")
        print("| --- | --- | --- | --- | --- | --- |")
        print(f"| usage | {result['p50_ms']} | {result['p90_ms']} | {result['p99_ms']} | {result['max_ms']} "
              f"| {GOAL_P99_MS} |")
        print(f"| api/status (the server's floor) | {result['api_status_p50_ms']} | | "
              f"{result['api_status_p99_ms']} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
