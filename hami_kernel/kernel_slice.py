"""A kernel's sub-slice: the part of its server's GPU slice one kernel may use.

The server (a user's notebook server) runs under a slice set by Kubernetes or
by our single-machine spawner, in HAMi's variables. Each kernel may be held
to less: a sub-slice, which libvgpu enforces as a per-process cap inside the
slice. Both the provisioner (at start) and ``%vgpu set`` (while running)
check a sub-slice against the server's slice here, so the rules are one.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

from .slice import CORES_ENV, MEMORY_ENV, DeviceLimit, device_limits, format_memory, format_memory_env, \
    parse_memory, parse_share

PROCESS_MEMORY_ENV = "LIBVGPU_PROCESS_MEMORY_LIMIT"
PROCESS_CORES_ENV = "LIBVGPU_PROCESS_SM_LIMIT"
REGION_ENV = "CUDA_DEVICE_MEMORY_SHARED_CACHE"
IDENTITY_ENV = "LIBVGPU_IDENTITY"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
CPU_ONLY = ("this server has no GPU (CUDA_VISIBLE_DEVICES is empty: a CPU-only server); "
            "start a server with a GPU profile to get a GPU slice")

_PER_DEVICE_RE = re.compile(rf"(?:{MEMORY_ENV}|{CORES_ENV})_([0-9]+)")


class SubSliceError(ValueError):
    """A sub-slice that cannot be granted; the message is meant for the user."""


def region_path(env: Mapping[str, str]) -> str:
    """The shared region libvgpu uses under this env (its default when unset:
    in the user's private directory, /tmp/libvgpu.<euid>, mode 0700)."""
    return env.get(REGION_ENV) or f"/tmp/libvgpu.{os.geteuid()}/region"


def cpu_only(env: Mapping[str, str]) -> bool:
    """Was this server started without a GPU?  The spawners say so with an empty
    CUDA_VISIBLE_DEVICES (CUDA then shows no device at all)."""
    return VISIBLE_ENV in env and not env[VISIBLE_ENV].strip()


def server_limits(env: Mapping[str, str]) -> list[DeviceLimit]:
    """The server's slice per GPU, from HAMi's variables (uncapped when absent)."""
    indices = [int(m.group(1)) for key, value in env.items() if (m := _PER_DEVICE_RE.fullmatch(key))]
    return device_limits(env, max(indices, default=0) + 1)


@dataclass(frozen=True)
class SubSlice:
    """Per-GPU caps for one kernel; None means "as much as the server's slice"."""

    memory: int | None = None
    cores: int | None = None

    @classmethod
    def parse(cls, memory: int | str | None = None, cores: int | str | None = None) -> SubSlice:
        """From kernelspec config or user input; "" and 0 mean no own cap."""
        try:
            mem = None if memory in (None, "", 0, "0") else parse_memory(memory)
            share = None if cores in (None, "", 0, "0") else parse_share(cores)
        except ValueError as exc:
            raise SubSliceError(str(exc)) from None
        return cls(mem, None if share == 100 else share)

    def describe(self) -> str:
        if self.memory is None and self.cores is None:
            return "the whole server slice"
        parts = [format_memory(self.memory) if self.memory is not None else "all of the slice's VRAM"]
        if self.cores is not None:
            parts.append(f"{self.cores}% compute")
        return " · ".join(parts)

    def check_within(self, server: list[DeviceLimit]) -> None:
        """Refuses a sub-slice larger than the server's slice on any of its GPUs."""
        for i, limit in enumerate(server):
            where = f"GPU {i}" if len(server) > 1 else "this server's GPU slice"
            if self.memory is not None and limit.memory is not None and self.memory > limit.memory:
                raise SubSliceError(
                    f"this kernel asks for {format_memory(self.memory)} of GPU memory, but {where} "
                    f"has only {format_memory(limit.memory)}; choose a smaller GPU kernel or a larger server")
            if self.cores is not None and limit.cores is not None and self.cores > limit.cores:
                raise SubSliceError(
                    f"this kernel asks for {self.cores}% of the GPU's compute, but {where} has only "
                    f"{limit.cores}%; choose a smaller GPU kernel or a larger server")

    def to_env(self) -> dict[str, str]:
        """libvgpu's per-process caps; an uncapped part is absent."""
        env = {}
        if self.memory is not None:
            env[PROCESS_MEMORY_ENV] = format_memory_env(self.memory)
        if self.cores is not None:
            env[PROCESS_CORES_ENV] = str(self.cores)
        return env
