#!/usr/bin/env python3
"""Tenants of one GPU as separate "pods" through the trusted arbiter (issue 14's GPU measurements).

    sudo python3 bench/pods.py --out DIR [--quick] [--only NAME[,NAME]]

Run as root on the GPU machine, from a directory outside the source tree
once hami-jupyter is installed (libvgpu and hami-arbiter come from the
installed package). Each tenant is a "pod": a private mount namespace
(unshare) with its own /tmp (a tmpfs), /etc overlaid with its slice file
(root-owned, as the kubelet mounts HamiSpawner's annotation, naming the
arbiter's socket), running as a uid of its own (setpriv). Without root or
unshare, tenants are told apart only by private turn directories, and the
report says so. One ``hami-arbiter`` serves them all, as on a node.

Measurements (names for --only):
  alone       the matmul worker alone, no libvgpu: the throughput shares are taken of
  pair        busy 30/70 under `default`, then under `force` (goal: 30±2 / 70±2)
  four        four busy tenants at 25% (goal: 25±2 each, together ≥ 97% of alone)
  notebook    a notebook-like tenant (bursts after think time): alone; beside a busy
              tenant with no libvgpu; at 30% beside a busy 70% under libvgpu `default`
              (goals: p50 ≤ the no-libvgpu pair's, p99 ≤ 1.2× it, busy keeps ≥ 85% of alone)
  force       the notebook tenant alone under `force` 30%, 500 bursts (goal: max ≤ 3× p50)

Writes DIR/pods.json (every number) and DIR/pods.md (the tables); the tables
also go to stdout. About 4 minutes (--quick: about 2). A measurement whose
workers do not get ready or finish in time is recorded as such, with what
they were doing in DIR/stuck_<name>.txt (bench/workers.py), and the run goes
on with the next; the daemon's log is kept in pods.json even when the run is
ended by SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from gpu_suite.environment import clean_env  # noqa: E402
from gpu_suite.window_stats import rate, steady  # noqa: E402
from workers import Stuck, WorkerFailed, together  # noqa: E402

MEASUREMENTS = ("alone", "pair", "four", "notebook", "force")


class NoCommonWindow(Exception):
    """The runs of a measurement have no window in common to take shares over."""


# What ends one measurement (recorded, and the run goes on with the next); SIGTERM still ends the run.
FAILURES = (Stuck, WorkerFailed, NoCommonWindow)
WORKER_SCRIPTS = ("workloads.py", "notebook.py")  # what the pods run; they import nothing else of bench/
MEMORY_LIMIT = "16g"


POD_PROBE = """set -e
mount --make-rprivate /
top=$1
mount -t tmpfs none "$top"
mkdir -p "$top/up" "$top/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$top/up,workdir=$top/work" /etc
mount -t tmpfs -o mode=1777 none /tmp
"""


def can_make_pods() -> bool:
    """Root, unshare and setpriv, and the mounts a pod needs are allowed here (a container may forbid them)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None:
        return False
    top = tempfile.mkdtemp(prefix="hami-pod-probe-", dir="/var/tmp")
    try:
        return subprocess.run(["unshare", "--mount", "sh", "-c", POD_PROBE, "probe", top],
                              capture_output=True).returncode == 0
    finally:
        shutil.rmtree(top, ignore_errors=True)


def another_uid_can_run(code: str) -> bool:
    """Whether a pod's uid can run this Python with code (a Python under /root, say, it cannot).

    Through ``env``, as a pod starts its worker: setpriv exec'ing the
    interpreter itself still gets past directory permissions (root's
    capabilities last through that first exec)."""
    return subprocess.run(["setpriv", "--reuid=62000", "--regid=62000", "--clear-groups", "env", sys.executable,
                           "-c", code], cwd="/", capture_output=True).returncode == 0


class Node:
    """The GPU node: a directory all pods can read, the arbiter daemon, and a way to start pods."""

    def __init__(self, library: str, pods: bool, as_root: bool = False):
        self.library = library
        self.pods = pods
        self.as_root = as_root
        self.base = Path(tempfile.mkdtemp(prefix="hami-pods-", dir="/var/tmp" if pods else None))
        self.base.chmod(0o755)
        for name in WORKER_SCRIPTS:  # pods cannot see a /tmp checkout
            shutil.copy(BENCH_DIR / name, self.base / name)
        self.socket_dir = self.base / "arbiter"
        self.daemon: Optional[subprocess.Popen] = None
        self.uid = 62_000

    @property
    def socket(self) -> str:
        return str(self.socket_dir / "arbiter.sock")

    def start_daemon(self) -> None:
        log = open(self.base / "arbiter.log", "ab")
        self.daemon = subprocess.Popen([sys.executable, "-m", "hami_arbiter.cli", "--socket-dir",
                                        str(self.socket_dir), "--backstop", "off"], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while not Path(self.socket).exists():
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"pods: hami-arbiter did not start: {(self.base / 'arbiter.log').read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(10)

    def start(self, argv: List[str], share: Optional[int], policy: str = "default") -> subprocess.Popen:
        """A tenant; share None: no libvgpu at all."""
        env = clean_env(dict(os.environ))
        env["PYTHONFAULTHANDLER"] = "1"  # a stuck worker's threads are shown (workers.Stuck)
        slice_lines: Dict[str, str] = {}
        if share is not None:
            env["LD_PRELOAD"] = self.library
            slice_lines = {"CUDA_DEVICE_MEMORY_LIMIT": MEMORY_LIMIT, "CUDA_DEVICE_SM_LIMIT": str(share),
                           "GPU_CORE_UTILIZATION_POLICY": policy, "LIBVGPU_ARBITER_SOCKET": self.socket}
        argv = [sys.executable, *argv]
        self.uid += 1
        uid = 0 if self.as_root else self.uid
        if not self.pods:
            env.update(slice_lines)
            env["LIBVGPU_ARBITER_DIR"] = tempfile.mkdtemp(prefix="turns-", dir=self.base)
            return subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=self.base)
        env.update(HOME="/tmp", TMPDIR="/tmp")
        text = "".join(f"{k}={v}\n" for k, v in slice_lines.items())
        install = (f'mkdir -p "$top/up/hami-jupyter"; printf %s {shlex.quote(text)} > "$top/up/hami-jupyter/slice";'
                   f' chmod 644 "$top/up/hami-jupyter/slice"') if slice_lines else ""
        script = f"""
set -e
mount --make-rprivate /
top=$(mktemp -d -p {shlex.quote(str(self.base))})
mount -t tmpfs none "$top"
mkdir -p "$top/up" "$top/work"
{install}
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$top/up,workdir=$top/work" /etc
mount -t tmpfs -o mode=1777 none /tmp
cd {shlex.quote(str(self.base))}
exec setpriv --reuid={uid} --regid={uid} --clear-groups env -i \
{' '.join(shlex.quote(f'{k}={v}') for k, v in env.items())} {' '.join(shlex.quote(a) for a in argv)}
"""
        return subprocess.Popen(["unshare", "--mount", "sh", "-c", script], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def busy_argv(seconds: float) -> List[str]:
    return ["workloads.py", "matmul", "--seconds", str(seconds), "--window", "0.5", "--wait-go", "--json"]


def notebook_argv(bursts: int, matmuls: int = 0) -> List[str]:
    return ["notebook.py", "--bursts", str(bursts), "--matmuls", str(matmuls), "--wait-go", "--json"]


def common_rate(run: dict, lo: float, hi: float) -> float:
    """The run's rate over its windows inside [lo, hi] (CLOCK_MONOTONIC seconds)."""
    windows = [w for w in run["windows"] if run["t0"] + w[0] >= lo and run["t0"] + w[1] <= hi]
    if not windows:
        raise NoCommonWindow(f"no window of the run inside [{lo:.3f}, {hi:.3f}]")
    return rate(windows)


def shares_of(runs: Sequence[dict], native: float) -> List[float]:
    """Each run's throughput, in % of the native alone rate, over the interval all of them ran
    (their first window left out)."""
    lo = max(r["t0"] + r["windows"][1][0] for r in runs)
    hi = min(r["t0"] + r["windows"][-1][1] for r in runs)
    return [100 * common_rate(r, lo, hi) / native for r in runs]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=",".join(MEASUREMENTS))
    p.add_argument("--as-root", action="store_true",
                   help="pods keep root's uid (private /tmp and /etc still): for a Python only root can read")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from hami_kernel import library_path
    pods = can_make_pods()
    as_root = args.as_root
    if pods and not as_root and not another_uid_can_run("import torch, hami_kernel"):
        as_root = True  # this Python (or torch) is readable by root only: pods keep root's uid
    node = Node(str(library_path()), pods, as_root)
    busy_s, bursts, force_bursts = (8, 120, 200) if args.quick else (20, 300, 500)
    results: dict = {"pods": node.pods, "quick": args.quick, "started": time.time()}
    kind = ("pods (private /tmp and /etc, " + ("root's uid: Python unreadable to others" if as_root else "own uid")
            + ")") if pods else "private turn directories (no root or unshare: not real pods)"
    results["tenants_as"] = kind
    lines: List[str] = [f"Tenants as {kind}, one hami-arbiter.", ""]

    def save() -> None:
        (out / "pods.json").write_text(json.dumps(results, indent=1, sort_keys=True))
        (out / "pods.md").write_text("\n".join(lines) + "\n")

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)
        save()

    def stuck(name: str, exc: Exception) -> None:
        """A measurement that could not be taken: said in the table, and the run goes on."""
        report = getattr(exc, "report", None)
        if report is not None:
            (out / f"stuck_{name}.txt").write_text(f"{exc}\n\n{report}\n")
        results[f"stuck_{name}"] = str(exc)
        where = f"what its workers were doing: stuck_{name}.txt" if report is not None else "all of it in pods.json"
        parts = [line.strip() for line in str(exc).splitlines() if line.strip()]
        said = parts[0].rstrip(":") + (f" (… {parts[-1]})" if len(parts) > 1 else "")
        say(f"| {name} | did not finish: {said}; {where} |")

    # `timeout` and the device's limit end a run with SIGTERM: the daemon's log is still saved.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    node.start_daemon()
    try:
        try:
            (alone,) = together([node.start(busy_argv(10), None)])
        except FAILURES as exc:  # nothing else can be measured without it
            stuck("alone", exc)
            return 1
        native = rate(steady(alone["windows"]))
        results["alone"] = alone
        say(f"| matmul alone, no libvgpu | {native:.1f} matmuls/s |")
        def pair(policy: str) -> None:
            runs = together([node.start(busy_argv(busy_s), s, policy) for s in (30, 70)], busy_s + 60)
            shares = shares_of(runs, native)
            results[f"pair_{policy}"] = {"runs": runs, "shares": shares}
            ok = abs(shares[0] - 30) <= 2 and abs(shares[1] - 70) <= 2
            say(f"| busy 30/70 `{policy}` as pods | {shares[0]:.1f}% / {shares[1]:.1f}% | goal 30±2 / 70±2: "
                f"{'met' if ok else 'MISSED'} |")

        def four() -> None:
            runs = together([node.start(busy_argv(busy_s), 25) for _ in range(4)], busy_s + 60)
            shares = shares_of(runs, native)
            results["four"] = {"runs": runs, "shares": shares}
            ok = all(abs(s - 25) <= 2 for s in shares) and sum(shares) >= 97
            say(f"| four at 25% | {' / '.join(f'{s:.1f}%' for s in shares)}, together {sum(shares):.1f}% | "
                f"goal 25±2 each, ≥ 97%: {'met' if ok else 'MISSED'} |")

        def notebook() -> None:
            (nb_alone,) = together([node.start(notebook_argv(bursts), None)])
            k = nb_alone["matmuls_per_burst"]
            nb_native, busy_native = together([node.start(notebook_argv(bursts, k), None),
                                               node.start(busy_argv(busy_s), None)])
            nb_vgpu, busy_vgpu = together([node.start(notebook_argv(bursts, k), 30),
                                           node.start(busy_argv(busy_s), 70)])
            # The busy tenant's throughput while the notebook ran, of what it gets alone.
            keep = 100 * common_rate(busy_vgpu, nb_vgpu["t0"], nb_vgpu["t1"]) / native
            results["notebook"] = {"alone": nb_alone, "beside_busy_native": nb_native, "busy_native": busy_native,
                                   "beside_busy_libvgpu": nb_vgpu, "busy_libvgpu": busy_vgpu, "busy_keeps": keep}
            for label, r in (("alone, no libvgpu", nb_alone), ("beside busy, no libvgpu", nb_native),
                             ("30% beside busy 70%, libvgpu `default`", nb_vgpu)):
                say(f"| notebook {label} | p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f}, max {r['max_ms']:.2f} |")
            ok = (nb_vgpu["p50_ms"] <= nb_native["p50_ms"] and nb_vgpu["p99_ms"] <= 1.2 * nb_native["p99_ms"]
                  and keep >= 85)
            say(f"| busy tenant beside the notebook (libvgpu) | {keep:.1f}% of alone | goals p50 ≤ "
                f"{nb_native['p50_ms']:.2f}, p99 ≤ {1.2 * nb_native['p99_ms']:.2f}, busy ≥ 85%: "
                f"{'met' if ok else 'MISSED'} |")

        def force() -> None:
            k = results.get("notebook", {}).get("alone", {}).get("matmuls_per_burst", 0)
            (nb_force,) = together([node.start(notebook_argv(force_bursts, k), 30, "force")], 120)
            results["force"] = nb_force
            ok = nb_force["max_ms"] <= 3 * nb_force["p50_ms"]
            say(f"| notebook alone, `force` 30%, {force_bursts} bursts | p50 {nb_force['p50_ms']:.2f} ms, "
                f"p99 {nb_force['p99_ms']:.2f}, max {nb_force['max_ms']:.2f} | goal max ≤ 3× p50: "
                f"{'met' if ok else 'MISSED'} |")

        steps = [("pair", "pair_default", lambda: pair("default")), ("pair", "pair_force", lambda: pair("force")),
                 ("four", "four", four), ("notebook", "notebook", notebook), ("force", "force", force)]
        for measurement, name, step in steps:
            if measurement not in only:
                continue
            try:
                step()
            except FAILURES as exc:  # recorded; the next measurement is taken all the same
                stuck(name, exc)
    finally:
        node.stop()
        results["arbiter_log"] = (node.base / "arbiter.log").read_text()[-20000:]
        save()
        shutil.rmtree(node.base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
