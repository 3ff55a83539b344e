"""The usage report: what ``GET api/vgpu/v1/usage`` answers, as plain data.

One function, :func:`build_report`, turns what the server knows (its slice's
limits from its environment, a snapshot of the shared region or the reason it
could not be read, its kernels and their notebooks) into the JSON document the
JupyterLab status bar and panel show and the Prometheus metrics are made from.
It does no I/O, so every answer, the odd ones included, is tested directly.

Units are base units throughout: bytes, and ratios of one GPU (0.3 for 30%).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..region import RegionSnapshot
from ..slice import DeviceLimit

__all__ = ["API_VERSION", "NO_SLICE", "NO_USAGE_YET", "KernelInfo", "LaunchClock", "build_report"]

API_VERSION = 1
NO_SLICE = "no GPU slice for this server"
NO_USAGE_YET = "no GPU memory used yet in this slice: libvgpu creates the region at the first CUDA call"


@dataclass(frozen=True)
class KernelInfo:
    """A kernel of this server, as its kernel and session managers know it."""

    kernel_id: str
    name: str  # kernelspec name
    execution_state: str | None
    last_activity: float | None  # seconds since the epoch
    path: str | None  # the notebook or console the session attached it to
    session_type: str | None  # "notebook", "console", ...


class LaunchClock:
    """Remembers when each process's launch count last moved.

    The region keeps a count of launches, not their times; sampling it tells
    when a process last launched GPU work. A process seen for the first time
    has no known last launch (None) unless it has launched nothing yet; the
    time it was first seen still bounds how long its GPU has been quiet.
    """

    def __init__(self) -> None:
        # (identity, pid, claimed_at) -> (launches, last launch or None, first seen)
        self._seen: dict[tuple[str, int, float], tuple[int, float | None, float]] = {}

    def observe(self, snapshot: RegionSnapshot, now: float) -> None:
        current: dict[tuple[str, int, float], tuple[int, float | None, float]] = {}
        for proc in snapshot.processes:
            key = (proc.identity, proc.pid, proc.claimed_at)
            launches = sum(d.launches for d in proc.devices)
            before = self._seen.get(key)
            if before is None:
                current[key] = (launches, None, now)
            elif launches != before[0]:
                current[key] = (launches, now, before[2])
            else:
                current[key] = before
        self._seen = current  # processes gone from the region are forgotten

    def last_launch(self, identity: str, pid: int, claimed_at: float) -> float | None:
        seen = self._seen.get((identity, pid, claimed_at))
        return seen[1] if seen else None

    def quiet_since(self, identity: str, pid: int, claimed_at: float, launches: int, now: float) -> float:
        """Since when the process has surely launched nothing: a lower bound on its GPU idle time.

        Its last launch when one was seen; else, if it launched before it was
        first seen, the time it was first seen (never earlier: a server that
        just started cannot call a busy kernel idle); with no launch at all,
        the time it attached to the GPU.
        """
        seen = self._seen.get((identity, pid, claimed_at))
        if seen is not None and seen[1] is not None:
            return seen[1]
        if launches == 0:
            return claimed_at
        return seen[2] if seen is not None else now


def _ratio(percent: int | None) -> float | None:
    return None if percent is None else percent / 100


def _seconds_since(then: float | None, now: float) -> float | None:
    return None if then is None else round(max(now - then, 0.0), 3)


def _limits_json(limits: Sequence[DeviceLimit]) -> list[dict[str, Any]]:
    return [{"index": i, "memory_limit_bytes": lim.memory, "compute_cap_ratio": _ratio(lim.cores)}
            for i, lim in enumerate(limits)]


def build_report(*, region_path: str, limits: Sequence[DeviceLimit], policy: str, has_slice: bool,
                 snapshot: RegionSnapshot | None, region_error: str | None, kernels: Mapping[str, KernelInfo],
                 device_names: Mapping[str, str], driver_memory: Mapping[str, Mapping[int, int]] | None = None,
                 launches: LaunchClock | None = None,
                 now: float | None = None) -> dict[str, Any]:
    """The usage document.

    ``status`` says which case it is, and ``message`` says it in words:

    - ``no_slice``: the server runs in no GPU slice (no limits, no region);
    - ``no_usage_yet``: the slice is configured but no process has used the GPU;
    - ``region_error``: the region exists but cannot be read (the reason);
    - ``ok``: the region's figures.
    """
    now = time.time() if now is None else now
    driver_memory = driver_memory or {}
    report: dict[str, Any] = {
        "version": API_VERSION,
        "time": now,
        "status": "ok",
        "message": "",
        "slice": None,
        "devices": [],
        "kernels": [],
    }
    if snapshot is None and region_error is None and not has_slice:
        report.update(status="no_slice", message=NO_SLICE)
        return report
    report["slice"] = {"region": region_path, "policy": policy, "limits": _limits_json(limits)}
    if region_error is not None:
        report.update(status="region_error", message=region_error)
        return report
    if snapshot is None:
        report.update(status="no_usage_yet", message=NO_USAGE_YET)
        return report

    for dev in snapshot.devices:
        share = sum(use.sm_share for proc in snapshot.processes for use in proc.devices if use.uuid == dev.uuid)
        report["devices"].append({
            "uuid": dev.uuid,
            "name": device_names.get(dev.uuid.lower()),
            "memory_used_bytes": dev.memory_used,
            "memory_limit_bytes": dev.memory_limit,
            "compute_used_ratio": round(min(share, 1.0), 4),
            "compute_cap_ratio": _ratio(dev.sm_limit),
        })

    for proc in snapshot.processes:
        info = kernels.get(proc.identity)
        last_launch = launches.last_launch(proc.identity, proc.pid, proc.claimed_at) if launches else None
        total_launches = sum(d.launches for d in proc.devices)
        report["kernels"].append({
            "kernel_id": info.kernel_id if info else None,
            "identity": proc.identity,
            "pid": proc.pid,
            "kernel_name": info.name if info else None,
            "path": info.path if info else None,
            "session_type": info.session_type if info else None,
            "execution_state": info.execution_state if info else None,
            "idle_seconds": _seconds_since(info.last_activity, now) if info else None,
            # 0 launches: never launched (null); otherwise since the count last moved, when seen.
            "gpu_idle_seconds": _seconds_since(last_launch, now) if total_launches else None,
            # How long the process has surely launched no GPU work (what the idle policy uses):
            # since the last launch seen, since it was first seen, or since it attached to the GPU.
            "gpu_quiet_seconds": _seconds_since(
                launches.quiet_since(proc.identity, proc.pid, proc.claimed_at, total_launches, now)
                if launches else (proc.claimed_at if total_launches == 0 else now), now),
            "launches": total_launches,
            "devices": [{
                "uuid": use.uuid,
                "memory_used_bytes": use.memory_used,
                "memory_limit_bytes": use.memory_limit,
                # What the driver attributes to the process (nvidia-smi's figure); null when unknown.
                "driver_memory_used_bytes": driver_memory.get(use.uuid.lower(), {}).get(proc.pid),
                "compute_used_ratio": round(use.sm_share, 4),
                "compute_cap_ratio": _ratio(use.sm_limit),
                "launches": use.launches,
            } for use in proc.devices],
        })
    # Kernels of this server first, by notebook; processes of no kernel of ours last.
    report["kernels"].sort(key=lambda k: (k["kernel_id"] is None, k["path"] or "", k["identity"], k["pid"]))
    return report
