"""Which kernels hold GPU memory and do nothing: read from a usage report, no I/O.

A kernel is *idle* when it is not executing and has neither executed
anything nor launched GPU work for a while; how long is the smaller of the
two times, so either kind of activity keeps it busy. It is *reclaimable*
under a :class:`Rule` when it has been idle at least ``idle_after`` seconds
and holds at least ``min_memory`` bytes. The server's policy
(:mod:`.reclaim`) and the hub's service (:mod:`hami_idle`) decide on the same
facts, taken from the same usage document, so they never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..slice import parse_memory

__all__ = ["KernelIdle", "Rule", "kernel_idleness", "idle_memory_by_device", "min_memory_bytes"]

# The only state in which a kernel may be touched: "busy" is executing, and
# "starting", "restarting", "autorestarting", "dead" or unknown are not settled.
SETTLED = "idle"


@dataclass(frozen=True)
class Rule:
    """When a kernel counts as idle, and when it holds enough to act on."""

    idle_after: float  # seconds without execution and without GPU launches
    min_memory: int  # bytes of VRAM held, over all its processes and GPUs

    def as_json(self) -> dict[str, Any]:
        return {"idle_after_seconds": self.idle_after, "min_memory_bytes": self.min_memory}


def min_memory_bytes(value: Any) -> int:
    """A policy's minimum VRAM ("0", "1GiB", 2**30) in bytes; ValueError with the reason.
    The server's IdlePolicy and the hub's service read it alike."""
    text = str(value).strip()
    return 0 if text == "0" else parse_memory(text)


@dataclass(frozen=True)
class KernelIdle:
    """One kernel of the server, all its processes in the slice together."""

    kernel_id: str
    path: str | None
    execution_state: str | None
    memory: int  # bytes held now, all processes and GPUs
    by_device: Mapping[str, int] = field(default_factory=dict)  # GPU UUID -> bytes
    exec_idle: float | None = None  # seconds since it last executed (any kernel message)
    gpu_idle: float | None = None  # seconds it has surely launched no GPU work
    launches: int = 0

    @property
    def idle_seconds(self) -> float | None:
        """How long it has done nothing at all; None when that is not known."""
        if self.exec_idle is None or self.gpu_idle is None:
            return None
        return min(self.exec_idle, self.gpu_idle)

    def is_idle(self, idle_after: float) -> bool:
        """Settled (not executing) and quiet for at least ``idle_after`` seconds."""
        idle = self.idle_seconds
        return self.execution_state == SETTLED and idle is not None and idle >= idle_after

    def reclaimable(self, rule: Rule) -> bool:
        return self.is_idle(rule.idle_after) and self.memory >= rule.min_memory and self.memory > 0

    def as_json(self) -> dict[str, Any]:
        return {"kernel_id": self.kernel_id, "path": self.path, "execution_state": self.execution_state,
                "memory_bytes": self.memory, "idle_seconds": self.idle_seconds, "exec_idle_seconds": self.exec_idle,
                "gpu_idle_seconds": self.gpu_idle, "launches": self.launches, "devices": dict(self.by_device)}


def kernel_idleness(report: Mapping[str, Any]) -> dict[str, KernelIdle]:
    """{kernel id: its idleness} for the kernels of the server in a usage report.

    A kernel's child processes share its identity: their memory adds up, and
    the kernel's GPU has been quiet only as long as its busiest process's.
    Processes of no kernel of this server are left out: nobody here can
    shut them down.
    """
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for entry in report.get("kernels") or []:
        if entry.get("kernel_id"):
            grouped.setdefault(entry["kernel_id"], []).append(entry)
    out = {}
    for kernel_id, entries in grouped.items():
        by_device: dict[str, int] = {}
        for entry in entries:
            for use in entry.get("devices") or []:
                by_device[use["uuid"]] = by_device.get(use["uuid"], 0) + int(use["memory_used_bytes"])
        quiet = [e.get("gpu_quiet_seconds") for e in entries]
        first = entries[0]
        out[kernel_id] = KernelIdle(
            kernel_id=kernel_id, path=first.get("path"), execution_state=first.get("execution_state"),
            memory=sum(by_device.values()), by_device=by_device, exec_idle=first.get("idle_seconds"),
            gpu_idle=None if any(q is None for q in quiet) else min(quiet),  # type: ignore[type-var]
            launches=sum(int(e.get("launches") or 0) for e in entries))
    return out


def idle_memory_by_device(kernels: Iterable[KernelIdle], idle_after: float) -> dict[str, int]:
    """{GPU UUID: bytes held by kernels idle at least ``idle_after`` seconds}."""
    out: dict[str, int] = {}
    for kernel in kernels:
        if kernel.is_idle(idle_after):
            for uuid, held in kernel.by_device.items():
                out[uuid] = out.get(uuid, 0) + held
    return out
