"""The hub-wide view: every server's usage report, put together by user and by GPU. No I/O.

Idleness is decided with :mod:`hami_kernel.serverext.idle`, the module each
server's own policy uses, on the same usage documents.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from hami_kernel.serverext.idle import Rule, idle_memory_by_device, kernel_idleness

from .hub import RunningServer

__all__ = ["ServerUsage", "fleet_view"]


@dataclass(frozen=True)
class ServerUsage:
    server: RunningServer
    report: dict[str, Any] | None  # None when it could not be read
    error: str | None = None


def fleet_view(servers: Sequence[ServerUsage], rule: Rule, now: float) -> dict[str, Any]:
    """The document of ``api/idle``: servers (most idle memory first), GPUs with their slices, totals."""
    entries, gpus = [], {}
    for item in servers:
        srv = item.server
        entry: dict[str, Any] = {"user": srv.user, "server": srv.name, "url": srv.url, "status": "unreadable",
                                 "message": item.error or "", "memory_bytes": 0, "idle_memory_bytes": 0,
                                 "kernels": []}
        entries.append(entry)
        report = item.report
        if report is None:
            continue
        entry.update(status=report.get("status", "unreadable"), message=report.get("message", ""))
        kernels = kernel_idleness(report)
        idle_by_device = idle_memory_by_device(kernels.values(), rule.idle_after)
        entry["memory_bytes"] = sum(d["memory_used_bytes"] for d in report.get("devices") or [])
        entry["idle_memory_bytes"] = sum(idle_by_device.values())
        pending = {k["kernel_id"]: k.get("reclaim_at") for k in report.get("kernels") or [] if k.get("kernel_id")}
        entry["kernels"] = sorted(({**k.as_json(), "idle": k.is_idle(rule.idle_after),
                                    "reclaimable": k.reclaimable(rule), "reclaim_at": pending.get(k.kernel_id)}
                                   for k in kernels.values()), key=lambda k: -k["memory_bytes"])
        for dev in report.get("devices") or []:
            gpu = gpus.setdefault(dev["uuid"], {"uuid": dev["uuid"], "name": dev.get("name"), "slices": []})
            gpu["name"] = gpu["name"] or dev.get("name")
            gpu["slices"].append({
                "user": srv.user, "server": srv.name, "memory_used_bytes": dev["memory_used_bytes"],
                "memory_limit_bytes": dev.get("memory_limit_bytes"), "compute_cap_ratio": dev.get("compute_cap_ratio"),
                "idle_memory_bytes": idle_by_device.get(dev["uuid"], 0)})
    for gpu in gpus.values():
        gpu["memory_used_bytes"] = sum(s["memory_used_bytes"] for s in gpu["slices"])
        gpu["idle_memory_bytes"] = sum(s["idle_memory_bytes"] for s in gpu["slices"])
        gpu["slices"].sort(key=lambda s: (s["user"], s["server"]))
    entries.sort(key=lambda e: (-e["idle_memory_bytes"], -e["memory_bytes"], e["user"], e["server"]))
    return {
        "time": now,
        "rule": rule.as_json(),
        "memory_bytes": sum(e["memory_bytes"] for e in entries),
        "idle_memory_bytes": sum(e["idle_memory_bytes"] for e in entries),
        "servers": entries,
        "gpus": sorted(gpus.values(), key=lambda g: g["uuid"]),
    }
