"""What the GPU driver says, through NVML: the GPUs' names and each process's memory.

libvgpu's region holds what the slice charges each process; the driver holds
what each process really has on the GPU (what nvidia-smi shows). The usage
report carries both, so a user can see that they agree. NVML is optional: on
a machine without it (or without a driver) names and driver figures are
simply absent. In a container whose processes the driver sees under other
PIDs (another PID namespace), no process matches and the figures are absent.
"""
from __future__ import annotations

import time
from typing import Any

__all__ = ["DriverView"]

_RETRY_SECONDS = 60.0  # after NVML failed to start, try again at most this often


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DriverView:
    """NVML, started once and kept; every answer degrades to 'unknown', never an error."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: dict[str, Any] = {}  # lowercase UUID -> handle
        self._names: dict[str, str] = {}
        self._failed_at: float | None = None

    def _start(self) -> bool:
        if self._nvml is not None:
            return True
        if self._failed_at is not None and time.monotonic() - self._failed_at < _RETRY_SECONDS:
            return False
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            handles, names = {}, {}
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle)).lower()
                handles[uuid], names[uuid] = handle, _text(pynvml.nvmlDeviceGetName(handle))
        except Exception:  # no nvidia-ml-py, no libnvidia-ml, no driver, no GPU
            self._failed_at = time.monotonic()
            return False
        self._nvml, self._handles, self._names = pynvml, handles, names
        return True

    def names(self) -> dict[str, str]:
        """{lowercase UUID: model name}."""
        return self._names if self._start() else {}

    def process_memory(self) -> dict[str, dict[int, int]]:
        """{lowercase UUID: {pid: bytes}}: the driver's figure for each process, now."""
        if not self._start():
            return {}
        memory: dict[str, dict[int, int]] = {}
        for uuid, handle in self._handles.items():
            try:
                processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:  # a GPU gone or not supported: no figures for it
                continue
            memory[uuid] = {int(p.pid): int(p.usedGpuMemory) for p in processes
                            if isinstance(getattr(p, "usedGpuMemory", None), int)}
        return memory
