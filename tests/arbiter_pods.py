"""Tenants of one fake GPU as separate "pods", and the arbiter daemon they share.

A pod is a private mount namespace (unshare, as root): its own /tmp (a
tmpfs), /etc overlaid with its slice file (root-owned, as the kubelet mounts
the pod's annotation), and its processes run as a uid of their own
(setpriv). Tenants are csrc/tests/tenant (plain build) under libvgpu over
the fake driver; the daemon is the real ``hami-arbiter`` process.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cbuild import ROOT

CAN_MAKE_PODS = os.geteuid() == 0 and all(shutil.which(tool) for tool in ("unshare", "setpriv"))
WHY_NOT = "pods need root, unshare and setpriv (CI runs as root)"


class Daemon:
    """``hami-arbiter`` on a socket directory of its own."""

    def __init__(self, base: Path, grants: Path | None = None):
        self.dir = base / "arbiter"
        self.socket = self.dir / "arbiter.sock"
        self.log = base / "arbiter.log"
        self.grants = grants
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "hami_arbiter.cli", "--socket-dir", str(self.dir), "--backstop", "off",
                "--log-level", os.environ.get("HAMI_ARBITER_TEST_LOG", "INFO")]
        if self.grants is not None:
            argv += ["--grants-dir", str(self.grants)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.socket.unlink(missing_ok=True)  # as a node's restart leaves it

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def joins(self) -> list[tuple[int, int]]:
        """(pid, share) of every client the daemon welcomed, in order."""
        return [(int(p), int(s)) for p, s in re.findall(r"pid (\d+) \(uid \d+\) joins \S+ at (\d+)%",
                                                       self.log.read_text())]


class Node:
    """The fake GPU node: a shared directory (not under /tmp, which pods replace) and a daemon."""

    def __init__(self, build: Path, sanitized: bool = False):
        self.build = build
        self.sanitized = sanitized
        self.base = Path(tempfile.mkdtemp(prefix="hami-arbiter-", dir="/var/tmp"))
        self.base.chmod(0o755)
        self.daemon = Daemon(self.base)
        self.next_uid = 61_000 + os.getpid() % 1_000

    def uid(self) -> int:
        self.next_uid += 1
        return self.next_uid

    def pod(self, argv: list[str], slice_lines: dict[str, str] | None, env: dict[str, str], uid: int,
            launch_ns: int = 1_000_000) -> subprocess.Popen[str]:
        """Starts argv in a new pod as uid; slice_lines None: no slice file."""
        preload = str(self.build / "csrc" / "libvgpu.so")
        full = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(self.build / "fakedrv"),
                "LD_PRELOAD": preload, "FAKE_CUDA_STATE": "/tmp/fake.state",
                "FAKE_CUDA_LAUNCH_NS": str(launch_ns), "LIBCUDA_LOG_LEVEL": "3", **env}
        if self.sanitized:
            # The sanitizer runtime has to come first in the process.
            asan = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True,
                                  text=True).stdout.strip()
            full.update(LD_PRELOAD=f"{asan} {preload}", ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=99",
                        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98")
        slice_text = "".join(f"{k}={v}\n" for k, v in (slice_lines or {}).items())
        install = ""
        if slice_lines is not None:
            install = (f"mkdir -p \"$top/up/hami-jupyter\"; printf %s {shlex.quote(slice_text)} > "
                       f"\"$top/up/hami-jupyter/slice\"; chmod 644 \"$top/up/hami-jupyter/slice\"")
        private_tmp = "mount -t tmpfs -o mode=1777 none /tmp" if not str(self.build).startswith("/tmp/") \
            else f"export LIBVGPU_ARBITER_DIR=$top/tmp"
        script = f"""
set -e
mount --make-rprivate /
top=$(mktemp -d -p {shlex.quote(str(self.base))})
mount -t tmpfs none "$top"
mkdir -p "$top/up" "$top/work" "$top/tmp"
chmod 1777 "$top/tmp"
{install}
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$top/up,workdir=$top/work" /etc
{private_tmp}
exec setpriv --reuid={uid} --regid={uid} --clear-groups env -i {' '.join(shlex.quote(f'{k}={v}') for k, v in full.items())} {' '.join(shlex.quote(a) for a in argv)}
"""
        return subprocess.Popen(["unshare", "--mount", "sh", "-c", script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    @property
    def tenant(self) -> str:
        return str(self.build / "csrc" / "tests" / "tenant")


def window(start_in: float, length: float, tail: float = 0.4) -> list[str]:
    """busy's START END STOP (CLOCK_MONOTONIC seconds) from now."""
    now = time.monotonic()
    return [f"{now + start_in:.6f}", f"{now + start_in + length:.6f}", f"{now + start_in + length + tail:.6f}"]


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    return out, err


def busy_of(out: str) -> float:
    match = re.search(r"^busy ([\d.]+)$", out, re.M)
    assert match, out
    return float(match.group(1))


def bursts_of(out: str) -> tuple[float, float, float]:
    match = re.search(r"^bursts p50 ([\d.]+) p99 ([\d.]+) max ([\d.]+)$", out, re.M)
    assert match, out
    return float(match.group(1)), float(match.group(2)), float(match.group(3))
