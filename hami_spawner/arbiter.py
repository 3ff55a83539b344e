"""One machine: the hub's own ``hami-arbiter``, started and kept running by the hub.

LocalGpuSpawner (local.py) asks :func:`supervisor` for the daemon of its
socket directory when it starts a GPU server: the first call starts the
daemon, and a watch task restarts it whenever it dies (capped processes go
on at their own caps meanwhile, and rejoin when it is back).

The daemon learns each server's slice from *grants*: one file per server,
``<grants dir>/<pid>-<start time>``, written by the hub (the only writer:
the directory is the hub user's, mode 0700) with the slice's NAME=VALUE
lines; the daemon resolves a client to its nearest granted ancestor
(hami_arbiter/slices.py). A grant is removed when its server stops.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hami_arbiter.slices import proc_stat

log = logging.getLogger("hami_spawner.arbiter")
SOCKET_NAME = "arbiter.sock"
WATCH_SECONDS = 1.0
START_SECONDS = 10.0


def _die_with_the_hub() -> None:
    """In the daemon's child, before exec: SIGTERM when the hub goes, however it goes
    (PR_SET_PDEATHSIG), so that a killed hub leaves no daemon behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class ArbiterSupervisor:
    """A ``hami-arbiter`` process on one socket directory, restarted when it dies."""

    def __init__(self, socket_dir: str, grants_dir: str, backstop: str = "kill", python: str = sys.executable):
        self.socket_dir = Path(socket_dir)
        self.grants_dir = Path(grants_dir)
        self.backstop = backstop
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._watch: asyncio.Task[None] | None = None

    @property
    def socket(self) -> Path:
        return self.socket_dir / SOCKET_NAME

    def ensure_running(self) -> None:
        """Starts the daemon if it is not running; waits (briefly) for its socket."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            self.restarts += 1
            log.warning("hami-arbiter exited with %s; starting it again", self.proc.returncode)
        self.grants_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.grants_dir, 0o700)
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [self.python, "-m", "hami_arbiter.cli", "--socket-dir", str(self.socket_dir),
             "--grants-dir", str(self.grants_dir), "--backstop", self.backstop],
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_the_hub)
        deadline = time.monotonic() + START_SECONDS
        while not self.socket.exists() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.socket.exists():
            log.error("hami-arbiter did not start on %s: capped processes pace themselves at their own caps",
                      self.socket_dir)

    def watch(self) -> None:
        """Keeps the daemon running from the hub's event loop (once)."""
        if self._watch is None or self._watch.done():
            self._watch = asyncio.ensure_future(self._watch_loop())

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            if self.proc is not None and self.proc.poll() is not None:
                self.ensure_running()

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    # -- grants -----------------------------------------------------------------------

    def grant(self, pid: int, lines: dict[str, str]) -> Path | None:
        """Records the slice of the server `pid`; None if the process is already gone."""
        info = proc_stat(pid)
        if info is None:
            return None
        path = self.grants_dir / f"{pid}-{info[1]}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{k}={v}\n" for k, v in sorted(lines.items())))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return path

    def revoke(self, pid: int) -> None:
        for path in self.grants_dir.glob(f"{pid}-*"):
            path.unlink(missing_ok=True)


_supervisors: dict[str, ArbiterSupervisor] = {}


def supervisor(socket_dir: str, grants_dir: str, backstop: str = "kill") -> ArbiterSupervisor:
    """The hub's daemon for a socket directory, started on first use and stopped at exit."""
    sup = _supervisors.get(socket_dir)
    if sup is None:
        sup = _supervisors[socket_dir] = ArbiterSupervisor(socket_dir, grants_dir, backstop)
        atexit.register(sup.stop)
    sup.ensure_running()
    try:
        sup.watch()
    except RuntimeError:
        pass  # no event loop (a script): started, not watched
    return sup
