"""What the backstop needs to know about a host process, and a kill that cannot hit a stranger.

The arbiter runs in the host's PID namespace (hostPID), where NVML's pids
live.  A pid alone is not a process: between the moment the backstop sees a
pid on the GPU and the moment it acts, that process may exit and its pid be
given to another.  So a process is named by its pid *and* its start time
(field 22 of ``/proc/<pid>/stat``, in clock ticks since boot), and
:func:`kill_if_same` sends SIGKILL only through a pidfd opened first and
checked against that start time, so the signal reaches the process that was
checked or nobody.
"""
from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass

__all__ = ["ProcessGone", "ProcIdentity", "identity", "kill_if_same", "KILLED", "GONE", "REUSED", "FAILED"]

# What kill_if_same did.
KILLED = "killed"
GONE = "gone"  # the process had already exited
REUSED = "reused"  # the pid now belongs to another process: left alone
FAILED = "failed"  # it could not be checked or signalled (EPERM, /proc unreadable)

_MAX_STAT = 4096


class ProcessGone(Exception):
    """The pid names no live process (it exited, or is a zombie whose memory is already released)."""


@dataclass(frozen=True)
class ProcIdentity:
    pid: int
    start: int  # clock ticks after boot: with the pid, the process's name
    comm: str
    uid: int | None = None  # real uid in its own user namespace; None if it could not be read
    pidns: int | None = None  # inode of its PID namespace (/proc/<pid>/ns/pid)
    nspid: int | None = None  # its pid as its own namespace numbers it


def _read(path: str, limit: int = _MAX_STAT) -> str:
    # O_NONBLOCK: /proc files never block, but a /proc replaced by something odd must not hang us.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return os.read(fd, limit).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _stat_fields(pid: int, proc: str) -> tuple[str, list[str]]:
    """comm and the fields after it; comm may hold spaces and parentheses, so split at the last ')'."""
    text = _read(f"{proc}/{pid}/stat")
    open_, close = text.find("("), text.rfind(")")
    if open_ < 0 or close < open_:
        raise ValueError(f"/proc/{pid}/stat is malformed")
    return text[open_ + 1:close], text[close + 2:].split()


def identity(pid: int, proc: str = "/proc") -> ProcIdentity:
    """Who pid is now.  ProcessGone if it no longer exists (or is a zombie); OSError/ValueError
    if it exists but cannot be read, which the caller must treat as "unknown", never as "gone"."""
    try:
        comm, rest = _stat_fields(pid, proc)
    except FileNotFoundError:
        raise ProcessGone(pid) from None
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise ProcessGone(pid) from None
        raise
    # rest[0] is field 3 (state), so field 22 (starttime) is rest[19].
    if len(rest) < 20 or not rest[19].isdigit():
        raise ValueError(f"/proc/{pid}/stat is malformed")
    if rest[0] in ("Z", "X"):
        raise ProcessGone(pid)  # exited; its GPU memory is the driver's to free
    uid = nspid = pidns = None
    try:
        for line in _read(f"{proc}/{pid}/status", 16384).splitlines():
            name, _, value = line.partition(":")
            if name == "Uid" and value.split():
                uid = int(value.split()[0])
            elif name == "NSpid" and value.split():
                nspid = int(value.split()[-1])
        pidns = os.stat(f"{proc}/{pid}/ns/pid").st_ino
        if uid is not None:
            uid = _uid_inside(uid, _read(f"{proc}/{pid}/uid_map"))
    except (OSError, ValueError):
        pass  # the extras only address the event to the slice's users
    return ProcIdentity(pid=pid, start=int(rest[19]), comm=comm, uid=uid, pidns=pidns, nspid=nspid)


def _uid_inside(uid: int, uid_map: str) -> int | None:
    """The uid as the process's own user namespace numbers it (what its getuid() says), from
    the host's; the same number where there is no user namespace (the map "0 0 4294967295")."""
    for line in uid_map.splitlines():
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields):
            inside, outside, count = map(int, fields)
            if outside <= uid < outside + count:
                return inside + uid - outside
    return None


def _start_time(pid: int, proc: str) -> int:
    _, rest = _stat_fields(pid, proc)
    if len(rest) < 20 or not rest[19].isdigit():
        raise ValueError(f"/proc/{pid}/stat is malformed")
    return int(rest[19])


def kill_if_same(pid: int, start: int, proc: str = "/proc") -> str:
    """SIGKILL pid if it is still the process that started at ``start``.

    With a pidfd (Linux 5.3+) the check and the signal are about one process
    whatever happens in between; without one, the window is the few
    microseconds between reading /proc and kill(2)."""
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return GONE
        except OSError:
            pidfd = None  # an old kernel: fall back to the plain check below
    try:
        try:
            if _start_time(pid, proc) != start:
                return REUSED
        except FileNotFoundError:
            return GONE
        except (OSError, ValueError):
            return FAILED
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return GONE
        except OSError:
            return FAILED
        return KILLED
    finally:
        if pidfd is not None:
            os.close(pidfd)
