#!/usr/bin/env python3
"""Idle GPU memory given back, on a real GPU: two servers, one kernel idle with 20 GiB.

Two ``jupyter server`` processes with hami-jupyter's extension, each in its
own 40 GiB slice of GPU 0 (tests/lab_harness.py starts them, with the
installed libvgpu), both with the idle policy set to shut down kernels
holding 8 GiB or more after ``--idle-after`` seconds idle, ``--grace``
seconds after warning. Kernels start through hami-provisioner from notebook
sessions:

- alice's ``lunch.ipynb`` allocates 20 GiB through PyTorch and then does nothing;
- bob's ``train.ipynb`` holds 10 GiB and multiplies matrices from a thread
  all along (no cell running: busy on the GPU only);
- bob's ``sleep.ipynb`` holds 10 GiB and runs one long cell (executing).

Every second it records both usage reports (with the policy's notices) and
nvidia-smi (the GPU's used memory and each process's). It stops once
alice's kernel has been shut down and nvidia-smi no longer lists it (or
after ``--timeout`` seconds), then checks: the warning came before the
shutdown, the shutdown came once the kernel had been idle ``--idle-after +
--grace`` seconds, the memory the server says came back is what nvidia-smi
shows gone, and bob's kernels are alive, unwarned and still hold their
memory. Writes ``idle_reclaim.json`` and ``idle_reclaim.log`` into ``--out``
(default ``$OUT``, else the current directory); exit 0 only when every check
passed. About 90 s with the defaults.

    python3 bench/idle_reclaim_gpu.py

``--driver fake`` runs the same over the fake CUDA driver and NVML of the C
test build (the kernels allocate through ctypes instead of PyTorch, NVML
stands in for nvidia-smi), so CI checks the script itself
(tests/test_bench_idle_reclaim.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

GiB, MiB = 1 << 30, 1 << 20
IDLE = """
import torch
held = torch.empty(20 << 30, dtype=torch.uint8, device="cuda")
held.fill_(1)
torch.cuda.synchronize()
"""
TRAIN = """
import threading, time, torch
held = torch.empty(10 << 30, dtype=torch.uint8, device="cuda")
x = torch.randn(4096, 4096, device="cuda")
def work():
    while True:
        x @ x
        torch.cuda.synchronize()
        time.sleep(0.05)
threading.Thread(target=work, daemon=True).start()
"""
SLEEP = """
import time, torch
held = torch.empty(10 << 30, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
time.sleep(3600)
"""


FAKE_IDLE = "assert alloc(20480) == 0\n"
FAKE_SLEEP = "assert alloc(10240) == 0\nimport time\ntime.sleep(3600)\n"
# What nvidia-smi would say, from the fake NVML (loaded in a child with the fake's env).
FAKE_SMI = """
import json, pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
mem = pynvml.nvmlDeviceGetMemoryInfo(h)
procs = {p.pid: p.usedGpuMemory >> 20 for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)}
name = pynvml.nvmlDeviceGetName(h)
print(json.dumps({"used_mib": mem.used >> 20, "total_mib": mem.total >> 20,
                  "name": name.decode() if isinstance(name, bytes) else name, "processes": procs}))
"""


def fake_smi(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", FAKE_SMI], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True).stdout
    doc = json.loads(out)
    doc["processes"] = {int(pid): mib for pid, mib in doc["processes"].items()}
    return doc  # type: ignore[no-any-return]


def nvidia_smi() -> dict[str, Any]:
    used = subprocess.run(["nvidia-smi", "--id=0", "--query-gpu=memory.used,memory.total,name",
                           "--format=csv,noheader,nounits"], capture_output=True, text=True, check=True).stdout
    used_mib, total_mib, name = (part.strip() for part in used.strip().split(","))
    apps = subprocess.run(["nvidia-smi", "--id=0", "--query-compute-apps=pid,used_memory",
                           "--format=csv,noheader,nounits"], capture_output=True, text=True, check=True).stdout
    procs = {}
    for line in apps.splitlines():
        if line.strip():
            pid, mib = (part.strip() for part in line.split(","))
            procs[int(pid)] = int(mib)
    return {"used_mib": int(used_mib), "total_mib": int(total_mib), "name": name, "processes": procs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-after", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=15.0)
    parser.add_argument("--timeout", type=float, default=150.0)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "."))
    parser.add_argument("--driver", choices=("real", "fake"), default="real")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def log(line: str) -> None:
        stamped = f"{datetime.now(timezone.utc):%H:%M:%S} {line}"
        print(stamped, flush=True)
        log_lines.append(stamped)

    from kernel_code import ALLOCATOR, holding_and_launching
    from lab_harness import Server, install_spec

    codes = {"idle": IDLE, "train": TRAIN, "sleep": SLEEP}
    extra: dict[str, str] = {}
    if args.driver == "fake":
        from cbuild import build_tests

        build = build_tests("plain")
        library = str(build / "csrc" / "libvgpu.so")
        extra = {"LD_LIBRARY_PATH": str(build / "fakedrv"), "FAKE_CUDA_DEVICE_MEMORY": "141g"}
        codes = {"idle": ALLOCATOR + FAKE_IDLE, "train": ALLOCATOR + holding_and_launching(10240),
                 "sleep": ALLOCATOR + FAKE_SLEEP}
    else:
        library = subprocess.run([sys.executable, "-c", "import hami_kernel; print(hami_kernel.library_path())"],
                                 cwd="/", capture_output=True, text=True, check=True).stdout.strip()
    policy = ["--IdlePolicy.action=shutdown", f"--IdlePolicy.idle_after={args.idle_after}",
              f"--IdlePolicy.grace={args.grace}", "--IdlePolicy.check_interval=1",
              "--IdlePolicy.min_memory=8GiB"]
    samples: list[dict[str, Any]] = []
    checks: dict[str, bool] = {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="idle-reclaim-") as tmp_name:
        tmp = Path(tmp_name)
        if args.driver == "fake":
            extra["FAKE_CUDA_STATE"] = str(tmp / "fake.state")  # one fake GPU for both servers

        def smi() -> dict[str, Any]:
            return fake_smi(extra) if args.driver == "fake" else nvidia_smi()

        servers = {}
        for user in ("alice", "bob"):
            env = {"CUDA_DEVICE_MEMORY_LIMIT": "40g", "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(tmp / user / "slice.region"),
                   "LIBVGPU_ARBITER_DIR": str(tmp / "arbiter"), "LIBVGPU_LIBRARY": library, **extra}
            (tmp / user).mkdir()
            servers[user] = Server(tmp / user, env, base_url=f"/user/{user}/", extra_args=policy)
            install_spec(servers[user].data, "gpu", {})
        alice, bob = servers["alice"], servers["bob"]
        try:
            for srv in servers.values():
                srv.start()
            before = smi()
            log(f"{before['name']}: {before['used_mib']} MiB of {before['total_mib']} MiB used before the kernels")
            lunch = alice.open_notebook("lunch.ipynb", "gpu")
            train = bob.open_notebook("train.ipynb", "gpu")
            sleep = bob.open_notebook("sleep.ipynb", "gpu")
            bob.execute(train, codes["train"])
            bob.client(sleep).execute(codes["sleep"])  # runs on: executing until the end
            alice.execute(lunch, codes["idle"])
            idle_since = time.time()
            log("alice/lunch.ipynb holds 20 GiB and idles from now; bob's train.ipynb works, sleep.ipynb executes")
            lunch_pid, seen_in_smi = None, False
            while time.time() - started < args.timeout:
                t = time.time()
                sample = {"time": t, "alice": alice.usage(), "bob": bob.usage(), "nvidia_smi": smi()}
                samples.append(sample)
                entry = next((k for k in sample["alice"]["kernels"] if k["kernel_id"] == lunch), None)
                if entry:
                    lunch_pid = entry["pid"]
                    seen_in_smi = seen_in_smi or lunch_pid in sample["nvidia_smi"]["processes"]
                done = [n for n in sample["alice"]["idle"]["notices"] if n["kind"] == "shutdown"]
                # Done once nvidia-smi no longer lists it (a driver that never listed it: the notice will do).
                if done and (not seen_in_smi or lunch_pid not in sample["nvidia_smi"]["processes"]):
                    break
                time.sleep(max(0.0, 1.0 - (time.time() - t)))
            last = samples[-1]
            notices = {n["kind"]: n for n in last["alice"]["idle"]["notices"] if n["kernel_id"] == lunch}
            warning, done = notices.get("warning"), notices.get("shutdown")
            held_sample = next((s for s in samples if any(k["kernel_id"] == lunch for k in s["alice"]["kernels"])
                                and lunch_pid in s["nvidia_smi"]["processes"]), samples[0])
            smi_before = held_sample["nvidia_smi"]
            smi_after = last["nvidia_smi"]
            checks["warned before the shutdown"] = bool(warning and done and warning["time"] < done["time"])
            checks["shut down once idle + grace had passed"] = bool(
                done and done["time"] - idle_since >= args.idle_after + args.grace - 2)
            checks["shut down within idle + grace + 20 s"] = bool(
                done and done["time"] - idle_since <= args.idle_after + args.grace + 20)
            freed_mib = (done or {}).get("freed_bytes", 0) / MiB
            gone_mib = smi_before["used_mib"] - smi_after["used_mib"]
            checks["the server says >= 20 GiB came back"] = freed_mib >= 20 * 1024
            checks["nvidia-smi listed the kernel's process, then no more"] = (
                seen_in_smi and lunch_pid not in smi_after["processes"])
            checks["nvidia-smi: >= 20 GiB came back"] = gone_mib >= 20 * 1024
            bob_kernels = {k["id"] for k in bob.get("api/kernels")}
            bob_usage = {k["kernel_id"]: k for k in last["bob"]["kernels"]}
            checks["bob's kernels are alive"] = {train, sleep} <= bob_kernels
            checks["bob's kernels still hold their 10 GiB"] = all(
                sum(d["memory_used_bytes"] for d in bob_usage.get(k, {"devices": []})["devices"]) >= 10 * GiB
                for k in (train, sleep))
            checks["bob got no notice"] = last["bob"]["idle"]["notices"] == []
            log(f"warning at +{warning['time'] - idle_since:.1f} s: {warning['message']}" if warning else "no warning")
            log(f"shutdown at +{done['time'] - idle_since:.1f} s: {done['message']}" if done else "no shutdown")
            log(f"nvidia-smi: {smi_before['used_mib']} MiB used with the kernel, {smi_after['used_mib']} MiB after "
                f"({gone_mib} MiB back); the server says {freed_mib:.0f} MiB came back")
            for name, ok in checks.items():
                log(f"{'PASS' if ok else 'FAIL'} {name}")
        finally:
            for srv in servers.values():
                srv.stop()
    (args.out / "idle_reclaim.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "checks": checks, "samples": samples}, indent=1))
    if not checks:
        log("FAIL: the run did not get as far as the checks")
    (args.out / "idle_reclaim.log").write_text("\n".join(log_lines) + "\n")
    log(f"{len(samples)} samples, {time.time() - started:.0f} s; written to {args.out}")
    return 0 if checks and all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
