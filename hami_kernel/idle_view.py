"""What ``%vgpu`` shows of the idle-memory policy: read from the file the server writes beside the region.

The server extension's policy (``c.IdlePolicy``) writes each kernel's
idleness there every few seconds (``<region>.idle.json``); a kernel cannot
know its neighbours' execution state otherwise. Without the file (no server
extension, or a plain IPython), ``%vgpu`` simply shows no idle column.
"""
from __future__ import annotations

import json
import time
from typing import Any, Mapping

__all__ = ["read_idle", "idle_cell", "policy_line", "idle_file_path", "format_bytes", "format_seconds"]

STALE_SECONDS = 300.0  # an older file is from a server that stopped: not shown
IDLE_FILE_SUFFIX = ".idle.json"


def idle_file_path(region_path: str) -> str:
    """Where the server writes its kernels' idleness for ``%vgpu``: beside the region."""
    return region_path + IDLE_FILE_SUFFIX


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{n} B"


def format_seconds(s: float) -> str:
    s = int(max(s, 0))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def read_idle(region_path: str, now: float | None = None) -> dict[str, Any] | None:
    """The server's idle document, or None when there is none (or it is stale or unreadable)."""
    try:
        with open(idle_file_path(region_path), encoding="utf-8") as f:
            doc = json.load(f)
        if not isinstance(doc, dict) or not isinstance(doc.get("kernels"), dict):
            return None
        if (time.time() if now is None else now) - float(doc.get("time", 0)) > STALE_SECONDS:
            return None
        return doc
    except (OSError, ValueError, TypeError):
        return None


def idle_cell(idle: Mapping[str, Any] | None, identity: str) -> str:
    """"12 min IDLE", "3 s", or "?" for a process the server does not know as a kernel."""
    info = (idle or {}).get("kernels", {}).get(identity)
    if not info or info.get("idle_seconds") is None:
        return "?"
    text = format_seconds(info["idle_seconds"])
    if info.get("reclaim_at"):
        return text + " IDLE, shut down at " + time.strftime("%H:%M", time.localtime(info["reclaim_at"]))
    return text + (" IDLE" if info.get("idle") else "")


def policy_line(idle: Mapping[str, Any] | None) -> str | None:
    if not idle or not isinstance(idle.get("policy"), dict):
        return None
    p = idle["policy"]
    after = format_seconds(p.get("idle_after_seconds", 0))
    what = {"off": "only marks them", "warn": "warns their user",
            "shutdown": f"shuts them down {format_seconds(p.get('grace_seconds', 0))} after a warning"}.get(
        p.get("action"), str(p.get("action")))
    return (f"idle = no cell run and no GPU launch; IDLE = idle for {after} or more; the idle policy {what} "
            f"(kernels holding {format_bytes(int(p.get('min_memory_bytes', 0)))} or more, never while executing)")
