"""Re-dividing a server's slice between its kernels while they run.

``%vgpu set`` calls this from inside a kernel, and the server extension can
call it for any of its kernels. libvgpu reads the per-process caps from the
shared region at every allocation and every launch, so a new cap applies at
once: to the next allocation (memory already held stays held) and to the
next kernel launch. A restart returns the kernel to its kernelspec's
sub-slice.
"""
from __future__ import annotations

import os
from typing import Mapping

from . import region
from .kernel_slice import CPU_ONLY, SubSlice, SubSliceError, cpu_only, server_limits
from .kernel_slice import region_path as default_region_path
from .slice import format_memory
from .status import no_gpu_reason


def set_kernel_slice(identity: str, memory: int | str | None = None, cores: int | str | None = None, *,
                     region_path: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Sets the sub-slice of the kernel whose processes carry ``identity``.

    ``memory`` / ``cores`` left as None are unchanged; "" or 0 lifts the
    kernel's own cap (the server's slice still applies). Raises
    SubSliceError (a ValueError) with a message for the user when the
    request exceeds the server's slice or no process of the kernel is in the
    region. Returns one line saying what changed.
    """
    if memory is None and cores is None:
        raise SubSliceError("nothing to set: give memory=SIZE and/or cores=PERCENT")
    env = os.environ if env is None else env
    if cpu_only(env):  # before the identity: a CPU server's kernels have none
        raise SubSliceError(f"there is no GPU slice to re-divide: {CPU_ONLY}")
    if not identity:
        raise SubSliceError("this process has no identity in the GPU slice (LIBVGPU_IDENTITY is unset): "
                            "start it from a GPU kernelspec")
    sub = SubSlice.parse(memory, cores)
    sub.check_within(server_limits(env))
    path = region_path or default_region_path(env)
    try:
        changed = []
        if memory is not None:
            changed.append(region.set_process_memory_limit(path, identity, None, sub.memory))
        if cores is not None:
            changed.append(region.set_process_sm_limit(path, identity, None, sub.cores))
    except (region.RegionError, OSError) as exc:
        # No region because there is no GPU at all: say that, not which file is missing.
        absent = None if os.path.lexists(path) else no_gpu_reason(env)
        if absent:
            raise SubSliceError(f"there is no GPU slice to re-divide: {absent}") from None
        raise SubSliceError(f"cannot change the GPU slice: {exc}") from None
    if not any(changed):
        raise SubSliceError(f"kernel {identity} has no process in the GPU slice yet "
                            "(it has not used the GPU); nothing was changed")
    parts = []
    if memory is not None:
        parts.append(f"VRAM {format_memory(sub.memory) if sub.memory else 'up to the slice'}")
    if cores is not None:
        parts.append(f"compute {f'{sub.cores}%' if sub.cores else 'up to the slice'}")
    return f"kernel {identity[:8]}: {', '.join(parts)} (applies to new allocations and launches now)"
