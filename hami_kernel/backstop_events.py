"""The arbiter's backstop events for this slice: what ``%vgpu`` shows under "backstop".

The backstop (``hami_arbiter.backstop``) runs as root on the GPU node and
watches the driver's own per-process figures.  When it finds a slice over its
VRAM limit it writes an event, and if it kills a process it says which.  The
events must reach the slice's users without letting anyone else forge or
remove them, so they live in the arbiter's own directory, which only root
can write and which GPU pods mount read-only:

    /run/hami-jupyter/arbiter/events/pidns-<inode>/uid-<uid>.jsonl

one file per PID namespace (a container, or the whole machine) and user of
the slice's processes, so a process finds its own with nothing but
``os.stat("/proc/self/ns/pid")`` and ``os.getuid()``, and users sharing a
machine's namespace do not see each other's.  Each line is one JSON object
(:class:`BackstopEvent`); the daemon rewrites the file atomically, newest
last, keeping the last few.  ``HAMI_JUPYTER_EVENTS_DIR`` moves the root (a
machine whose arbiter uses another ``--socket-dir``).
"""
from __future__ import annotations

import html
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EVENTS_DIR", "EVENTS_DIR_ENV", "BackstopEvent", "events_file", "own_events_file", "read_events",
           "format_text", "format_html"]

EVENTS_DIR = "/run/hami-jupyter/arbiter/events"
EVENTS_DIR_ENV = "HAMI_JUPYTER_EVENTS_DIR"
_MAX_FILE = 1 << 20  # the daemon keeps files far smaller; a larger one is not its


@dataclass(frozen=True)
class BackstopEvent:
    time: float  # seconds since the epoch
    gpu: int  # NVML's index
    action: str  # "over" (found over its limit), "killed", "kill-failed"
    used: int  # bytes the slice's processes held on that GPU, per the driver
    limit: int  # the slice's limit there, bytes
    pid: int | None  # the process acted on, as its own namespace numbers it
    comm: str  # its command name
    process_used: int  # bytes that process held
    message: str  # one sentence


def events_file(root: str | os.PathLike[str], pidns: int, uid: int) -> Path:
    """Where the events for the users ``uid`` in PID namespace ``pidns`` go (the writer uses this too)."""
    return Path(root) / f"pidns-{int(pidns)}" / f"uid-{int(uid)}.jsonl"


def own_events_file(root: str | None = None) -> Path | None:
    """This process's events file, or None if its PID namespace cannot be named."""
    root = root or os.environ.get(EVENTS_DIR_ENV) or EVENTS_DIR
    try:
        return events_file(root, os.stat("/proc/self/ns/pid").st_ino, os.getuid())
    except OSError:
        return None


def _event(record: object) -> BackstopEvent | None:
    if not isinstance(record, dict):
        return None
    try:
        pid = record.get("pid")
        return BackstopEvent(
            time=float(record["time"]), gpu=int(record["gpu"]), action=str(record["action"]),
            used=int(record["used"]), limit=int(record["limit"]), pid=None if pid is None else int(pid),
            comm=str(record.get("comm", "")), process_used=int(record.get("process_used", 0)),
            message=" ".join(str(record.get("message", "")).split()))
    except (KeyError, TypeError, ValueError):
        return None


def read_events(path: str | os.PathLike[str] | None = None, limit: int = 5) -> list[BackstopEvent]:
    """The newest ``limit`` events, oldest first; [] when there are none or the file cannot be read.

    Opened without following links and without blocking, so a FIFO or a
    link planted where a file is expected cannot hang or redirect the reader."""
    if path is None:
        path = own_events_file()
        if path is None:
            return []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        if not _regular(fd):
            return []
        data = os.read(fd, _MAX_FILE)
    except OSError:
        return []
    finally:
        os.close(fd)
    events = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            event = _event(json.loads(line))
        except ValueError:
            continue
        if event is not None:
            events.append(event)
    return events[-limit:] if limit > 0 else []


def _regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def _line(event: BackstopEvent) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.time))
    return f"{stamp} GPU {event.gpu}: {event.message}"


def format_text(events: list[BackstopEvent]) -> str:
    """The events as lines under a heading; "" when there are none (nothing to show)."""
    if not events:
        return ""
    return "\n".join(["backstop (the node's check of the driver's figures):"] + [f"  {_line(e)}" for e in events])


def format_html(events: list[BackstopEvent]) -> str:
    if not events:
        return ""
    items = "".join(f"<li>{html.escape(_line(e))}</li>" for e in events)
    return (f"<div class='hami-vgpu-backstop'><p><b>backstop</b> (the node's check of the driver's figures):</p>"
            f"<ul>{items}</ul></div>")
