"""The driver's own view of who holds GPU memory: NVML's running compute processes, per GPU.

Read through ctypes from ``libnvidia-ml.so.1`` (what the NVIDIA container
toolkit mounts with NVIDIA_DRIVER_CAPABILITIES=utility), so the arbiter needs
no Python binding.  The pids are in the PID namespace of the caller's host
view: the DaemonSet runs with hostPID so that they are real pids there.

Errors never escape as anything but :class:`NvmlError`: the library missing,
NVML failing to initialise or the device count failing make the whole read
fail (the caller logs once and retries on its next pass, when this reader
initialises NVML again); one GPU failing (fallen off the bus, "GPU is lost")
is reported on that GPU alone, so the others are still watched.
"""
from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

__all__ = ["NvmlError", "GpuProcess", "GpuProcesses", "NvmlReader", "NOT_AVAILABLE"]

NVML_SUCCESS = 0
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_FUNCTION_NOT_FOUND = 13
# usedGpuMemory when the driver cannot say (e.g. no permission to see the process's memory).
NOT_AVAILABLE = (1 << 64) - 1


class NvmlError(Exception):
    """NVML could not be read (one sentence)."""


class _ProcessInfoV1(ctypes.Structure):  # nvmlProcessInfo_v1_t
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


class _ProcessInfo(ctypes.Structure):  # nvmlProcessInfo_t (the _v2 and _v3 queries)
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used: int | None  # bytes; None when the driver does not say


@dataclass(frozen=True)
class GpuProcesses:
    index: int  # NVML's (physical) index
    uuid: str
    processes: tuple[GpuProcess, ...] = ()
    error: str | None = None  # this GPU could not be read: processes is empty


class NvmlReader:
    """Reads every GPU's compute processes.  Thread-safe; initialises NVML lazily and again after a failure."""

    def __init__(self, library: str = "libnvidia-ml.so.1"):
        self.library = library
        self._lib: ctypes.CDLL | None = None
        self._initialised = False
        self._lock = threading.Lock()

    def _error(self, code: int) -> str:
        try:
            self._lib.nvmlErrorString.restype = ctypes.c_char_p  # type: ignore[union-attr]
            text = self._lib.nvmlErrorString(code)  # type: ignore[union-attr]
            return text.decode("utf-8", "replace") if text else f"error {code}"
        except (AttributeError, OSError):
            return f"error {code}"

    def _call(self, name: str, *args: object) -> int:
        try:
            function = getattr(self._lib, name)
        except AttributeError:
            return NVML_ERROR_FUNCTION_NOT_FOUND
        return int(function(*args))

    def _init(self) -> None:
        if self._lib is None:
            try:
                self._lib = ctypes.CDLL(self.library)
            except OSError as exc:
                raise NvmlError(f"cannot load NVML ({self.library}): {exc}") from None
        if not self._initialised:
            code = self._call("nvmlInit_v2")
            if code != NVML_SUCCESS:
                raise NvmlError(f"NVML failed to initialise: {self._error(code)}")
            self._initialised = True

    def _reset(self) -> None:
        """Forget the session after a failure, so the next read starts NVML afresh (a driver reload)."""
        if self._initialised:
            self._call("nvmlShutdown")
        self._initialised = False

    def close(self) -> None:
        with self._lock:
            self._reset()

    def read(self) -> list[GpuProcesses]:
        with self._lock:
            try:
                self._init()
                count = ctypes.c_uint(0)
                code = self._call("nvmlDeviceGetCount_v2", ctypes.byref(count))
                if code != NVML_SUCCESS:
                    raise NvmlError(f"NVML cannot count the GPUs: {self._error(code)}")
                return [self._gpu(i) for i in range(count.value)]
            except NvmlError:
                self._reset()
                raise

    def _gpu(self, index: int) -> GpuProcesses:
        handle = ctypes.c_void_p()
        code = self._call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index), ctypes.byref(handle))
        if code != NVML_SUCCESS:
            return GpuProcesses(index, "", error=f"GPU {index}: {self._error(code)}")
        buf = ctypes.create_string_buffer(96)
        uuid = ""
        if self._call("nvmlDeviceGetUUID", handle, buf, ctypes.c_uint(len(buf))) == NVML_SUCCESS:
            uuid = buf.value.decode("ascii", "replace")
        try:
            return GpuProcesses(index, uuid, tuple(self._processes(handle)))
        except NvmlError as exc:
            return GpuProcesses(index, uuid, error=f"GPU {index}: {exc}")

    def _processes(self, handle: ctypes.c_void_p) -> list[GpuProcess]:
        # The newest query the driver has; older drivers lack _v3 and _v2.
        for name, struct in (("nvmlDeviceGetComputeRunningProcesses_v3", _ProcessInfo),
                             ("nvmlDeviceGetComputeRunningProcesses_v2", _ProcessInfo),
                             ("nvmlDeviceGetComputeRunningProcesses", _ProcessInfoV1)):
            if not hasattr(self._lib, name):
                continue
            size = 0
            for _ in range(4):  # processes may start between the sizing call and the query
                count = ctypes.c_uint(size)
                infos = (struct * max(size, 1))()
                code = self._call(name, handle, ctypes.byref(count), infos if size else None)
                if code == NVML_SUCCESS:
                    return [GpuProcess(int(infos[i].pid),
                                       None if infos[i].usedGpuMemory == NOT_AVAILABLE else int(infos[i].usedGpuMemory))
                            for i in range(min(count.value, size))]
                if code != NVML_ERROR_INSUFFICIENT_SIZE:
                    raise NvmlError(self._error(code))
                size = count.value + 8
            raise NvmlError("the process list kept growing while it was read")
        raise NvmlError("this NVML has no query for running compute processes")
