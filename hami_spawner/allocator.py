"""Single-machine placement of GPU slices (no JupyterHub import).

The hub keeps one :class:`Allocator`; each server's slice is placed on
``count`` distinct GPUs that have enough free memory and compute, and the
placements survive a hub restart through :meth:`Allocator.state` /
:meth:`Allocator.restore`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from hami_kernel.slice import Slice, format_memory

STATE_VERSION = 1


class NoCapacity(RuntimeError):
    """No set of GPUs can take the slice now; the message is for the user."""


class NeverFits(NoCapacity):
    """No set of this machine's GPUs could take the slice even if all were idle:
    no GPU at all, none of the wanted type, none large enough, or too few.
    Waiting does not help, unlike a plain :class:`NoCapacity`."""


class AlreadyPlaced(ValueError):
    """The key already holds a placement; release it first."""


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory: int  # bytes


@dataclass(frozen=True)
class Placement:
    """Where a server's slice runs; memory/cores are per GPU, None = whole GPU."""

    key: str
    gpus: tuple[str, ...]
    memory: int | None
    cores: int | None

    @property
    def slice(self) -> Slice:
        return Slice(self.memory, self.cores, len(self.gpus))

    def to_env(self) -> dict[str, str]:
        """CUDA_VISIBLE_DEVICES plus the libvgpu limits for the server's process."""
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.gpus), **self.slice.to_env()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def discover_gpus(nvml: Any = None) -> list[Gpu]:
    """GPUs seen by NVML; [] when NVML or its driver is missing or there is no GPU."""
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except ImportError:
            return []
    try:
        nvml.nvmlInit()
    except Exception:  # library or driver not found: this machine has no usable GPU
        return []
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(Gpu(index=index, uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                            name=_text(nvml.nvmlDeviceGetName(handle)),
                            memory=int(nvml.nvmlDeviceGetMemoryInfo(handle).total)))
        return gpus
    finally:
        nvml.nvmlShutdown()


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(p.lower() in name.lower() for p in patterns)


def _mem(nbytes: int) -> str:
    return format_memory(nbytes) if nbytes > 0 else "0 GiB"


class Allocator:
    """GPUs and the placements on them; place/release are thread-safe."""

    def __init__(self, gpus: Iterable[Gpu]):
        self._gpus = {g.uuid: g for g in sorted(gpus, key=lambda g: g.index)}
        self._placements: dict[str, Placement] = {}
        self._lock = threading.RLock()

    @property
    def gpus(self) -> list[Gpu]:
        return list(self._gpus.values())

    @property
    def placements(self) -> dict[str, Placement]:
        with self._lock:
            return dict(self._placements)

    def get(self, key: str) -> Placement | None:
        with self._lock:
            return self._placements.get(key)

    def used(self, uuid: str) -> tuple[int, int]:
        """(bytes, percent) taken on one GPU; a whole-GPU slice takes all of it."""
        gpu = self._gpus[uuid]
        with self._lock:
            on_gpu = [p for p in self._placements.values() if uuid in p.gpus]
            return (sum(gpu.memory if p.memory is None else p.memory for p in on_gpu),
                    sum(100 if p.cores is None else p.cores for p in on_gpu))

    def free(self, uuid: str) -> tuple[int, int]:
        memory, cores = self.used(uuid)
        return max(self._gpus[uuid].memory - memory, 0), max(100 - cores, 0)

    def _fits(self, gpu: Gpu, size: Slice) -> bool:
        memory, cores = self.free(gpu.uuid)
        need_memory = gpu.memory if size.memory is None else size.memory
        need_cores = 100 if size.cores is None else size.cores
        return memory >= need_memory and cores >= need_cores

    def _load(self, gpu: Gpu) -> float:
        memory, cores = self.used(gpu.uuid)
        return memory / gpu.memory + cores / 100

    def place(self, key: str, size: Slice, policy: str = "binpack",
              gpu_types: Iterable[str] = (), avoid: Iterable[str] = (),
              label: str | None = None) -> Placement:
        """Place ``size`` for ``key`` on ``size.count`` distinct GPUs.

        ``binpack`` takes the most-used GPUs that fit, ``spread`` the least
        used; ties go to the lower index.  ``label`` names the slice in the
        NoCapacity message (default: the key).
        """
        if policy not in ("binpack", "spread"):
            raise ValueError(f"placement policy must be 'binpack' or 'spread', not {policy!r}")
        gpu_types, avoid = tuple(gpu_types), tuple(avoid)
        label = key if label is None else label
        with self._lock:
            if key in self._placements:
                raise AlreadyPlaced(f"{key!r} already holds GPU slice "
                                    f"{self._placements[key].slice.describe()}; release it "
                                    f"before placing another")
            eligible = [g for g in self._gpus.values()
                        if (not gpu_types or _matches(g.name, gpu_types))
                        and not _matches(g.name, avoid)]
            if not eligible:
                raise NeverFits(self._no_gpu_message(label, gpu_types, avoid))
            self._check_ever_fits(label, size, eligible)
            fitting = [g for g in eligible if self._fits(g, size)]
            if len(fitting) < size.count:
                raise NoCapacity(self._full_message(label, size, eligible, len(fitting)))
            sign = -1 if policy == "binpack" else 1
            fitting.sort(key=lambda g: (sign * self._load(g), g.index))
            chosen = sorted(fitting[:size.count], key=lambda g: g.index)
            placement = Placement(key, tuple(g.uuid for g in chosen), size.memory, size.cores)
            self._placements[key] = placement
            return placement

    def _no_gpu_message(self, label: str, gpu_types: tuple, avoid: tuple) -> str:
        if not self._gpus:
            return (f"This machine has no NVIDIA GPU, so the {label!r} slice can never be "
                    f"placed here.")
        wanted = (f" of type {' or '.join(gpu_types)}" if gpu_types else "") + (
            f" other than {' or '.join(avoid)}" if avoid else "")
        models = "; ".join(f"GPU {g.index}: {g.name}" for g in self._gpus.values())
        return (f"This machine has no GPU{wanted} for the {label!r} slice (it has {models}), "
                f"so it can never be placed here.")

    def _check_ever_fits(self, label: str, size: Slice, eligible: list[Gpu]) -> None:
        """NeverFits when ``size`` would not fit even on idle GPUs."""
        large_enough = [g for g in eligible if size.memory is None or size.memory <= g.memory]
        if not large_enough:
            largest = max(g.memory for g in eligible)
            raise NeverFits(f"The {label!r} slice needs {_mem(size.memory or 0)} of GPU memory, "
                            f"but the largest GPU here that qualifies has {_mem(largest)}, so it "
                            f"can never be placed on this machine.")
        if size.count > len(large_enough):
            raise NeverFits(f"The {label!r} slice needs {size.count} GPUs, but this machine has "
                            f"only {len(large_enough)} that qualify, so it can never be placed here.")

    def _full_message(self, label: str, size: Slice, eligible: list[Gpu], fit: int) -> str:
        memory = "all its memory" if size.memory is None else _mem(size.memory)
        cores = "all its compute" if size.cores is None else f"{size.cores}% compute"
        need = f"{memory} and {cores} free"
        free = "; ".join(f"GPU {g.index}: {_mem(self.free(g.uuid)[0])}, "
                         f"{self.free(g.uuid)[1]}%" for g in eligible)
        if size.count == 1:
            head = f"No GPU on this machine has {need} for the {label!r} slice"
        else:
            head = (f"The {label!r} slice needs {size.count} GPUs that each have {need}, "
                    f"but {'only ' + str(fit) if fit else 'none'} of this machine's GPUs do")
        return f"{head} (free now: {free})."

    def check(self, size: Slice, policy: str = "binpack", gpu_types: Iterable[str] = (),
              avoid: Iterable[str] = (), label: str = "requested") -> None:
        """Raise NoCapacity (with :meth:`place`'s message) if ``size`` cannot be placed now.

        Places nothing: for showing which choices fit before the user picks one.
        """
        probe = "\0check"
        with self._lock:
            self.place(probe, size, policy, gpu_types, avoid, label=label)
            self.release(probe)

    def release(self, key: str) -> Placement | None:
        """Free the key's GPUs; returns the released placement, None if it had none."""
        with self._lock:
            return self._placements.pop(key, None)

    def state(self) -> dict[str, Any]:
        """JSON-serialisable placements, to be saved and handed to :meth:`restore`."""
        with self._lock:
            return {"version": STATE_VERSION, "placements": [
                {"key": p.key, "gpus": list(p.gpus), "memory": p.memory, "cores": p.cores}
                for p in self._placements.values()]}

    def restore(self, state: Mapping[str, Any]) -> list[tuple[Placement, str]]:
        """Re-adopt saved placements after a hub restart.

        Placements are taken back as they were (they belong to running
        servers) even if they no longer fit; those on a GPU that vanished, or
        whose key is already placed, are skipped and returned with the reason.
        """
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(f"unrecognised allocator state (expected version "
                             f"{STATE_VERSION}): {state!r:.200}")
        skipped = []
        with self._lock:
            for item in state.get("placements", []):
                try:
                    placement = Placement(str(item["key"]), tuple(map(str, item["gpus"])),
                                          item["memory"], item["cores"])
                    placement.slice  # validates memory, cores and count
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"malformed placement in allocator state "
                                     f"{item!r:.200}: {exc}") from None
                gone = [u for u in placement.gpus if u not in self._gpus]
                if gone:
                    skipped.append((placement, f"GPU(s) {', '.join(gone)} no longer present"))
                elif placement.key in self._placements:
                    skipped.append((placement, "key already placed"))
                else:
                    self._placements[placement.key] = placement
        return skipped
