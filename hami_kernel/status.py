"""What GPU slice this process is in, and whether libvgpu really enforces it.

The ``%vgpu`` magic and its live view are thin shells around this module:
:func:`gather` collects the slice's state (limits from the environment, usage
from the shared region) into plain dataclasses; :mod:`hami_kernel.status_text`
turns them into something to show.
:mod:`hami_kernel.check` diagnoses a kernel whose limits may not apply.

Nothing here writes anything or makes a CUDA call: looking at the slice must
never change it (a CUDA call would attach this process to the region).
"""
from __future__ import annotations

import ctypes
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .kernel_slice import CPU_ONLY, IDENTITY_ENV, PROCESS_CORES_ENV, PROCESS_MEMORY_ENV, cpu_only, \
    region_path
from .idle_view import read_idle
from .region import MAX_DEVICES, RegionError, RegionSnapshot, read_region
from .slice import CORES_ENV, MEMORY_ENV, parse_env_cores, format_memory, parse_env_memory

__all__ = [
    "EnvSetting",
    "ConfiguredLimits",
    "KernelUsage",
    "DeviceStatus",
    "SliceStatus",
    "configured_limits",
    "gather",
    "describe_configured",
    "mapped_files",
    "libvgpu_mappings",
    "NO_REGION",
    "NO_DRIVER",
    "no_gpu_reason",
    "NOT_APPLIED",
]

POLICY_ENV = "GPU_CORE_UTILIZATION_POLICY"
POLICIES = ("default", "force", "disable")

NO_REGION = "no GPU memory used yet in this slice: libvgpu creates the region at the first CUDA call"
NOT_APPLIED = "libvgpu is not loaded in this process, so none of these limits apply (see %vgpu check)"
NO_DRIVER = ("no NVIDIA GPU visible: the NVIDIA driver's libcuda.so.1 cannot be loaded "
             "(this machine has no GPU driver)")

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


# ---- limits configured in the environment ------------------------------------


@dataclass(frozen=True)
class EnvSetting:
    """One limit variable as libvgpu will read it."""

    variable: str  # e.g. "CUDA_DEVICE_MEMORY_LIMIT_1"
    ordinal: int | None  # CUDA device ordinal it applies to; None = every device
    value: int | None  # bytes or percent; None = no cap ("0"/"100" for a share)


@dataclass(frozen=True)
class ConfiguredLimits:
    """The limits this process's environment asks libvgpu for.

    They are what libvgpu starts with; once the region exists its values win
    (the slice may have been resized, a kernel re-divided with ``%vgpu set``).
    """

    slice_memory: tuple[EnvSetting, ...]
    slice_cores: tuple[EnvSetting, ...]
    kernel_memory: tuple[EnvSetting, ...]
    kernel_cores: tuple[EnvSetting, ...]
    policy: str
    malformed: tuple[tuple[str, str], ...] = ()  # (variable family, message) per malformed variable

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(message for _, message in self.malformed)


_BROKEN = "libvgpu refuses every CUDA call until it is fixed"


def _percent(value: int) -> str:
    return f"{value}%"


# field, variable family, reader, label, shown for "no cap", how a value is shown.
# parse_env_memory is the C library's strict syntax, so we never accept what it refuses;
# parse_env_cores reads percents the same way (0 and 100 both mean no cap).
_FAMILIES: tuple[tuple[str, str, Callable[[str, str], int | None], str, str, Callable[[int], str]], ...] = (
    ("slice_memory", MEMORY_ENV, parse_env_memory, "slice VRAM", "no limit", format_memory),
    ("slice_cores", CORES_ENV, parse_env_cores, "slice compute", "no cap", _percent),
    ("kernel_memory", PROCESS_MEMORY_ENV, parse_env_memory, "this kernel's VRAM cap", "none (the slice's)",
     format_memory),
    ("kernel_cores", PROCESS_CORES_ENV, parse_env_cores, "this kernel's compute cap", "none (the slice's)",
     _percent),
)


def configured_limits(env: Mapping[str, str]) -> ConfiguredLimits:
    malformed: list[tuple[str, str]] = []
    fields: dict[str, tuple[EnvSetting, ...]] = {}
    for field_name, family, parse, *_ in _FAMILIES:
        found = []
        # NAME and NAME_0..NAME_15 (one per device entry of the region), as
        # libvgpu's config reads them; set but empty is malformed, as there.
        for variable, ordinal in [(family, None)] + [(f"{family}_{i}", i) for i in range(MAX_DEVICES)]:
            raw = env.get(variable)
            if raw is None:
                continue
            try:
                found.append(EnvSetting(variable, ordinal, parse(raw, variable)))
            except ValueError as exc:
                malformed.append((family, f"{exc}; {_BROKEN}"))
        fields[field_name] = tuple(found)
    policy = env.get(POLICY_ENV, "default").lower()
    if policy not in POLICIES:
        malformed.append((POLICY_ENV, f"{POLICY_ENV}={env.get(POLICY_ENV)!r} is malformed: expected default, "
                                      f"force or disable; {_BROKEN}"))
    return ConfiguredLimits(policy=policy, malformed=tuple(malformed), **fields)


def _describe_settings(settings: tuple[EnvSetting, ...], show: Callable[[int], str], none: str) -> str:
    """'1 GiB per GPU, device 1: 2 GiB' from the bare variable and its overrides."""
    if not settings:
        return none
    parts = []
    for s in settings:
        if s.ordinal is not None:
            parts.append(f"device {s.ordinal}: {none if s.value is None else show(s.value)}")
        else:
            parts.append(none if s.value is None else f"{show(s.value)} per GPU")
    return ", ".join(parts)


def describe_configured(limits: ConfiguredLimits) -> list[tuple[str, str, bool]]:
    """(what, value, well-formed) rows, in the order a user reads them."""
    broken = {family for family, _ in limits.malformed}
    rows = []
    for field_name, family, _parse, label, none, show in _FAMILIES:
        if family in broken:
            rows.append((label, f"malformed {family}", False))
        else:
            rows.append((label, _describe_settings(getattr(limits, field_name), show, none), True))
    rows.append(("policy", f"malformed {POLICY_ENV}" if POLICY_ENV in broken else limits.policy,
                 POLICY_ENV not in broken))
    return rows


# ---- the slice as the region shows it -----------------------------------------


@dataclass(frozen=True)
class KernelUsage:
    """One process of the slice on one GPU (or, for ``own``, all of this kernel's)."""

    identity: str
    pid: int
    memory_used: int
    memory_limit: int | None  # its own cap; None = only the slice's
    sm_share: float  # 0..1 of the GPU over the last second (the pacer's under a cap, else NVML's)
    sm_limit: int | None  # percent; None = only the slice's
    launches: int
    mine: bool  # a process of this kernel
    processes: int = 1  # >1 when this kernel's child processes use the GPU too


@dataclass(frozen=True)
class DeviceStatus:
    uuid: str
    memory_limit: int | None  # the whole slice's; None = unlimited
    memory_used: int  # by every live process of the slice
    sm_limit: int | None  # the slice's compute share, percent
    own: KernelUsage | None  # None: this kernel has not used the GPU yet
    kernels: tuple[KernelUsage, ...]

    @property
    def memory_free(self) -> int | None:
        if self.memory_limit is None:
            return None
        return max(self.memory_limit - self.memory_used, 0)

    @property
    def own_memory_cap(self) -> int | None:
        """What this kernel may hold at most: its cap, never more than the slice."""
        caps = [c for c in (self.own.memory_limit if self.own else None, self.memory_limit) if c is not None]
        return min(caps, default=None)

    @property
    def own_sm_cap(self) -> int | None:
        caps = [c for c in (self.own.sm_limit if self.own else None, self.sm_limit) if c is not None]
        return min(caps, default=None)


@dataclass(frozen=True)
class SliceStatus:
    identity: str | None  # LIBVGPU_IDENTITY of this kernel
    pid: int
    loaded: bool  # libvgpu is mapped into this process
    configured: ConfiguredLimits
    region_path: str
    region_missing: bool  # no CUDA call made yet anywhere in the slice
    region_error: str | None  # the region exists but cannot be read
    devices: tuple[DeviceStatus, ...] = ()
    taken_at: float = field(default_factory=time.time)
    no_gpu: str | None = None  # why this process has no GPU at all (a CPU-only server, no driver)
    idle: Mapping[str, Any] | None = None  # the server's idle document (idle_view), if it writes one

    @property
    def policy(self) -> str:
        return self.configured.policy


def load_driver() -> None:
    """Load the NVIDIA driver's library (OSError if there is none).  Loading it makes
    no CUDA call, so it attaches nothing to the slice."""
    ctypes.CDLL("libcuda.so.1")


def no_gpu_reason(env: Mapping[str, str]) -> str | None:
    """Why this process can have no GPU slice at all, or None when it may have one."""
    if cpu_only(env):
        return CPU_ONLY
    try:
        load_driver()
    except OSError:
        return NO_DRIVER
    return None


def mapped_files(maps_path: str = "/proc/self/maps") -> list[str]:
    """Paths of the files mapped into this process, from the kernel's own record."""
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as maps:
            return sorted({parts[5].strip() for line in maps if len(parts := line.split(maxsplit=5)) == 6})
    except OSError:
        return []


def libvgpu_mappings(maps_path: str = "/proc/self/maps") -> list[str]:
    """Paths of libvgpu files mapped into this process (empty when it is not loaded)."""
    return [p for p in mapped_files(maps_path) if os.path.basename(p).startswith("libvgpu")]


def _own_usage(usages: list[KernelUsage], pid: int) -> KernelUsage | None:
    """This kernel's processes on one GPU as one: usage summed, caps from this process.

    Child processes inherit LIBVGPU_IDENTITY, so a kernel may be several
    processes; ``%vgpu set`` caps each of them the same, so one's caps stand
    for all.
    """
    if not usages:
        return None
    lead = next((u for u in usages if u.pid == pid), usages[0])
    return KernelUsage(
        identity=lead.identity, pid=lead.pid,
        memory_used=sum(u.memory_used for u in usages), memory_limit=lead.memory_limit,
        sm_share=sum(u.sm_share for u in usages), sm_limit=lead.sm_limit,
        launches=sum(u.launches for u in usages), mine=True, processes=len(usages))


def _devices(snapshot: RegionSnapshot, identity: str | None, pid: int, policy: str) -> tuple[DeviceStatus, ...]:
    def is_mine(proc_identity: str, proc_pid: int) -> bool:
        # Without an identity (a plain LD_PRELOAD run) the pid is all there is.
        return proc_identity == identity if identity else proc_pid == pid

    devices = []
    for dev in snapshot.devices:
        kernels = []
        for proc in snapshot.processes:
            use = next((d for d in proc.devices if d.uuid == dev.uuid), None)
            if use is None:
                continue
            kernels.append(KernelUsage(
                identity=proc.identity, pid=proc.pid, memory_used=use.memory_used,
                memory_limit=use.memory_limit, sm_limit=use.sm_limit,
                # Every share in the region is measured: by the pacer under a cap,
                # from NVML's per-process utilization otherwise.
                sm_share=use.sm_share,
                launches=use.launches, mine=is_mine(proc.identity, proc.pid)))
        devices.append(DeviceStatus(
            uuid=dev.uuid, memory_limit=dev.memory_limit, memory_used=dev.memory_used,
            sm_limit=dev.sm_limit, own=_own_usage([k for k in kernels if k.mine], pid),
            kernels=tuple(kernels)))
    return tuple(devices)


def gather(env: Mapping[str, str] | None = None, *, pid: int | None = None,
           snapshot: RegionSnapshot | None = None) -> SliceStatus:
    """The slice of this process now; ``snapshot`` replaces reading the region."""
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    identity = env.get(IDENTITY_ENV) or None
    configured = configured_limits(env)
    path = region_path(env)
    missing, error = False, None
    no_gpu = None
    if snapshot is None and cpu_only(env):
        no_gpu = CPU_ONLY  # no slice, whatever a region left at the default path says
    elif snapshot is None:
        try:
            snapshot = read_region(path)
        except RegionError as exc:
            # A missing file is the normal state before the first CUDA call, not an error,
            # unless there is no GPU to make that call on.
            missing = not os.path.lexists(path)
            error = None if missing else str(exc)
            no_gpu = no_gpu_reason(env) if missing else None
    return SliceStatus(
        identity=identity, pid=pid, loaded=bool(libvgpu_mappings()), configured=configured,
        region_path=snapshot.path if snapshot else path, region_missing=missing, region_error=error,
        devices=_devices(snapshot, identity, pid, configured.policy) if snapshot else (),
        no_gpu=no_gpu, idle=read_idle(snapshot.path if snapshot else path) if snapshot else None)
