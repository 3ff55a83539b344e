"""A worker's environment: the caller's minus LD_PRELOAD and every variable libvgpu reads
(clean_env), plus, for a hooked worker, its slice's variables (Slice, worker_env)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .measurements import MEMORY_LIMIT

# What clean_env drops (names and prefixes), besides LD_PRELOAD.
SLICE_VARIABLES = ("CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_SM_LIMIT", "GPU_CORE_UTILIZATION_POLICY",
                   "CUDA_DEVICE_MEMORY_SHARED_CACHE", "LIBCUDA_LOG_LEVEL", "LIBVGPU_")


def parse_size(text: str) -> int:
    """'16g', '4096m', '1024k' or bytes, 1024-based (as libvgpu reads CUDA_DEVICE_MEMORY_LIMIT)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def clean_env(base: Dict[str, str]) -> Dict[str, str]:
    """The caller's environment minus LD_PRELOAD and everything libvgpu reads."""
    env = {k: v for k, v in base.items()
           if k != "LD_PRELOAD" and not any(k.startswith(p) for p in SLICE_VARIABLES)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class Slice:
    """What makes a worker hooked: its slice's variables. None for a native worker."""
    region: str
    arbiter_dir: str
    memory_limit: str = MEMORY_LIMIT
    sm_limit: Optional[int] = None
    policy: Optional[str] = None
    extra: Tuple[Tuple[str, str], ...] = ()  # --slice-env settings, the same for every slice of a run

    def variables(self, library: str) -> Dict[str, str]:
        env = {"LD_PRELOAD": library, "CUDA_DEVICE_MEMORY_LIMIT": self.memory_limit,
               "CUDA_DEVICE_MEMORY_SHARED_CACHE": self.region, "LIBVGPU_ARBITER_DIR": self.arbiter_dir}
        env.update(self.extra)
        if self.sm_limit is not None:
            env["CUDA_DEVICE_SM_LIMIT"] = str(self.sm_limit)
        if self.policy is not None:
            env["GPU_CORE_UTILIZATION_POLICY"] = self.policy
        return env


def worker_env(base: Dict[str, str], library: str, slice_: Optional[Slice]) -> Dict[str, str]:
    env = clean_env(base)
    if slice_ is not None:
        env.update(slice_.variables(library))
    return env
