"""Slice sizes: parsing, display, and conversion to env vars and pod resources.

A *slice* is a fraction of one or more GPUs: a VRAM cap per GPU, a compute
share per GPU and a GPU count.  The spawner, the kernel provisioner, the
``%vgpu`` magic and the server extension all go through this module so that a
size typed by a user means exactly the same thing everywhere.

Two rules run through the whole module, because limits that are silently
wrong are worse than an error:

* nothing is ever rounded: a value that cannot be represented exactly in the
  target form raises ``ValueError``;
* zero is never a way of saying "unlimited"; "no limit" is spelled ``None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Mapping

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

# Every unit spelling parse_memory accepts.  Single letters follow HAMi-core's
# env syntax ("20480m") and JupyterHub's "8G"; both are 1024-based.
_MEMORY_UNITS: dict[str, int] = {"": 1, "b": 1}
for _letter, _size in (("k", KIB), ("m", MIB), ("g", GIB), ("t", TIB)):
    _MEMORY_UNITS.update({_letter: _size, _letter + "i": _size, _letter + "ib": _size})
# Decimal-SI spellings: users mean 10**9 as often as 2**30, so refuse to guess.
_AMBIGUOUS_UNITS = {"kb", "mb", "gb", "tb"}

# At most 30 digits either side of the point: anything longer is refused with
# the usual help, and every size that fits libvgpu's 64 bits is far shorter.
_MEMORY_RE = re.compile(r"([0-9]{1,30}(?:\.[0-9]{1,30})?)\s*([A-Za-z]*)")
_SHARE_RE = re.compile(r"([0-9]+)\s*%?")
# The env languages, exactly as libvgpu's config.c parses them (one table of
# cases, tests/data/env_language.json, is run against both): sizes are 1 to 20
# ASCII digits with an optional k/m/g/t; percents are 1 to 3 ASCII digits.
_ENV_MEMORY_RE = re.compile(r"([0-9]{1,20})([kKmMgGtT]?)")
_ENV_PERCENT_RE = re.compile(r"[0-9]{1,3}")
_UINT_RE = re.compile(r"[0-9]+")
_PER_DEVICE_RE = re.compile(r"CUDA_DEVICE_(?:MEMORY|SM)_LIMIT_([0-9]+)")

_MEMORY_HELP = ("expected a positive size such as 1073741824 (bytes), '8GiB', "
                "'8Gi', '512MiB', '1.5GiB' or '8g' (k/m/g/t are 1024-based)")
_SHARE_HELP = "expected a whole percentage from 1 to 100, such as 30 or '30%'"

# The largest size anything accepts: libvgpu counts bytes in 64 bits, and
# 2**64 - 1 is its "unlimited".
MAX_BYTES = (1 << 64) - 2

MEMORY_ENV = "CUDA_DEVICE_MEMORY_LIMIT"
CORES_ENV = "CUDA_DEVICE_SM_LIMIT"


def _is_int(value: object) -> bool:
    """True for real ints; bool is an int subclass but never a size or count."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_memory(value: int | str) -> int:
    """Return a user-supplied memory size in bytes (always > 0)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"memory size {value!r} must be positive; {_MEMORY_HELP}")
        if value > MAX_BYTES:
            raise ValueError(f"memory size {value!r} is too large: at most {MAX_BYTES} bytes (16 EiB)")
        return value
    if not isinstance(value, str):
        raise ValueError(f"invalid memory size {value!r}: {_MEMORY_HELP}")
    match = _MEMORY_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"invalid memory size {value!r}: {_MEMORY_HELP}")
    number, unit = match.group(1), match.group(2).lower()
    if unit in _AMBIGUOUS_UNITS:
        raise ValueError(
            f"{value!r} is ambiguous: write {number}{unit[0].upper()}iB (binary, "
            f"1024-based) or give the exact number of bytes")
    multiplier = _MEMORY_UNITS.get(unit)
    if multiplier is None:
        raise ValueError(f"unknown unit in memory size {value!r}: {_MEMORY_HELP}")
    if "." in number and multiplier == 1:
        raise ValueError(f"memory size {value!r}: a decimal needs a unit; {_MEMORY_HELP}")
    nbytes = Fraction(number) * multiplier
    if nbytes.denominator != 1:
        raise ValueError(f"memory size {value!r} is not a whole number of bytes")
    if nbytes <= 0:
        raise ValueError(f"memory size {value!r} must be positive; {_MEMORY_HELP}")
    if nbytes > MAX_BYTES:
        raise ValueError(f"memory size {value!r} is too large: at most {MAX_BYTES} bytes (16 EiB)")
    return int(nbytes)


def _check_nbytes(nbytes: int) -> None:
    if not _is_int(nbytes) or nbytes <= 0:
        raise ValueError(f"memory size {nbytes!r} must be a positive integer of bytes")


def format_memory(nbytes: int) -> str:
    """Human form for UIs ("4 GiB", "1.5 GiB", "512 MiB"); at most 2 decimals.

    Exact whenever two decimals suffice, so such output parses back unchanged.
    """
    _check_nbytes(nbytes)
    units = [("B", 1), ("KiB", KIB), ("MiB", MIB), ("GiB", GIB), ("TiB", TIB)]
    index = max(i for i, (_, size) in enumerate(units) if nbytes >= size)
    amount = (Decimal(nbytes) / units[index][1]).quantize(Decimal("0.01"), ROUND_HALF_UP)
    if amount >= 1024 and index + 1 < len(units):  # e.g. 1023.999 MiB -> 1 GiB
        index += 1
        amount = (Decimal(nbytes) / units[index][1]).quantize(Decimal("0.01"), ROUND_HALF_UP)
    text = f"{amount:f}".rstrip("0").rstrip(".")
    return f"{text} {units[index][0]}"


def format_memory_env(nbytes: int) -> str:
    """HAMi env form ("4g", "4608m", "1536"): the largest exact suffix, never rounded."""
    _check_nbytes(nbytes)
    for suffix, size in (("g", GIB), ("m", MIB), ("k", KIB)):
        if nbytes % size == 0:
            return f"{nbytes // size}{suffix}"
    return str(nbytes)


def parse_env_memory(value: str, variable: str = MEMORY_ENV) -> int:
    """Parse a memory limit in the strict env syntax the C library reads.

    Only ``digits[k|m|g|t]`` is allowed (1 to 20 digits, case-insensitive
    unit, 1024-based, at most ``MAX_BYTES``) so that Python never accepts a
    value the interception library would refuse, or the other way round.
    """
    match = _ENV_MEMORY_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{variable}={value!r} is malformed: expected digits with an "
                         f"optional k, m, g or t suffix, such as '4g' or '20480m'")
    nbytes = int(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()]
    if nbytes == 0:
        raise ValueError(f"{variable}={value!r}: a zero memory limit is invalid; "
                         f"leave the variable unset for no limit")
    if nbytes > MAX_BYTES:
        raise ValueError(f"{variable}={value!r} is too large: at most {MAX_BYTES} bytes")
    return nbytes


def parse_share(value: int | str) -> int:
    """Return a compute share in percent of one GPU (1..100)."""
    share: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        share = value
    elif isinstance(value, str):
        match = _SHARE_RE.fullmatch(value.strip())
        share = int(match.group(1)) if match else None
    if share is None or not 1 <= share <= 100:
        raise ValueError(f"invalid compute share {value!r}: {_SHARE_HELP}")
    return share


def parse_env_cores(value: str, variable: str) -> int | None:
    """SM limit env: 0..100 in 1 to 3 ASCII digits (no sign, space or "%"),
    where HAMi-core treats both 0 and 100 as no cap."""
    if not isinstance(value, str) or not _ENV_PERCENT_RE.fullmatch(value) or int(value) > 100:
        raise ValueError(f"{variable}={value!r} is malformed: expected an integer "
                         f"from 0 to 100, digits only (0 and 100 mean no compute cap)")
    return None if int(value) in (0, 100) else int(value)


@dataclass(frozen=True)
class DeviceLimit:
    """Limits for one device; ``None`` means uncapped."""

    memory: int | None
    cores: int | None


def device_limits(env: Mapping[str, str], count: int) -> list[DeviceLimit]:
    """Effective limits of devices ``0..count-1``: per-device var, else global, else None.

    A variable that is set but empty is malformed (ValueError), as libvgpu
    refuses it: a template that lost its value must not mean "no limit".
    """
    if not _is_int(count) or count < 0:
        raise ValueError(f"device count {count!r} must be a non-negative integer")
    limits = []
    for i in range(count):
        mem_var = f"{MEMORY_ENV}_{i}" if f"{MEMORY_ENV}_{i}" in env else MEMORY_ENV
        sm_var = f"{CORES_ENV}_{i}" if f"{CORES_ENV}_{i}" in env else CORES_ENV
        mem, sm = env.get(mem_var), env.get(sm_var)
        limits.append(DeviceLimit(
            memory=None if mem is None else parse_env_memory(mem, mem_var),
            cores=None if sm is None else parse_env_cores(sm, sm_var)))
    return limits


def _resource_int(resources: Mapping[str, str | int], key: str, high: int | None) -> int:
    """Read a HAMi extended resource: a plain integer from 1 to ``high``.

    Zero is refused rather than read as "no limit": the key should be absent.
    """
    value = resources[key]
    number = value if _is_int(value) else None
    if isinstance(value, str) and _UINT_RE.fullmatch(value.strip()):
        number = int(value.strip())
    if not isinstance(number, int) or number < 1 or (high is not None and number > high):
        limit = "" if high is None else f" and at most {high}"
        raise ValueError(f"resource {key}={value!r} must be an integer of at least 1{limit}")
    return number


@dataclass(frozen=True)
class Slice:
    """A uniform slice: the same caps on each of ``count`` GPUs.

    ``memory`` is bytes per GPU and ``cores`` percent of compute per GPU;
    ``None`` means uncapped.  ``cores=100`` is normalised to ``None`` so two
    slices that behave the same also compare equal.
    """

    memory: int | None
    cores: int | None
    count: int = 1

    def __post_init__(self) -> None:
        if self.memory is not None and (not _is_int(self.memory) or self.memory <= 0):
            raise ValueError(f"slice memory {self.memory!r} must be a positive number "
                             f"of bytes, or None for no memory cap")
        if self.cores is not None and (not _is_int(self.cores) or not 1 <= self.cores <= 100):
            raise ValueError(f"slice cores {self.cores!r} must be an integer from 1 to "
                             f"100, or None for no compute cap")
        if not _is_int(self.count) or self.count < 1:
            raise ValueError(f"slice count {self.count!r} must be an integer >= 1")
        if self.cores == 100:
            object.__setattr__(self, "cores", None)

    @classmethod
    def parse(cls, memory: int | str | None = None, cores: int | str | None = None,
              count: int | str = 1) -> Slice:
        """Build a slice from user input (form fields, magic arguments, config)."""
        if isinstance(count, str):
            if not _UINT_RE.fullmatch(count.strip()):
                raise ValueError(f"slice count {count!r} must be an integer >= 1")
            count = int(count.strip())
        return cls(memory=None if memory is None else parse_memory(memory),
                   cores=None if cores is None else parse_share(cores), count=count)

    def describe(self) -> str:
        """Short display name, e.g. "4 GiB · 25%" or "2 × whole GPU"."""
        if self.memory is None and self.cores is None:
            body = "whole GPU"
        else:
            mem = "full VRAM" if self.memory is None else format_memory(self.memory)
            body = mem if self.cores is None else f"{mem} · {self.cores}%"
        return body if self.count == 1 else f"{self.count} × {body}"

    def to_env(self) -> dict[str, str]:
        """Env for the interception library; a variable is absent when uncapped."""
        env: dict[str, str] = {}
        if self.memory is not None:
            env[MEMORY_ENV] = format_memory_env(self.memory)
        if self.cores is not None:
            env[CORES_ENV] = str(self.cores)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str], count: int | None = None) -> Slice:
        """Read a uniform slice back from env.

        When ``count`` is None it is inferred from the highest per-device index
        (HAMi writes one ``_<i>`` variable per allocated GPU), else it is 1.
        Per-device variables at or beyond ``count`` are ignored.
        """
        if count is None:
            indices = [int(m.group(1)) for key in env if (m := _PER_DEVICE_RE.fullmatch(key))]
            count = max(indices, default=0) + 1
        limits = set(device_limits(env, count)) or {DeviceLimit(None, None)}
        if len(limits) > 1:
            raise ValueError("per-device GPU limits differ, so they are not one uniform "
                             "slice; use device_limits() to read them per device")
        limit = limits.pop()
        return cls(memory=limit.memory, cores=limit.cores, count=count)

    def to_pod_resources(self, vendor: str = "nvidia.com") -> dict[str, str]:
        """HAMi pod resource limits; gpumem is MiB and must be exact."""
        resources = {f"{vendor}/gpu": str(self.count)}
        if self.memory is not None:
            if self.memory % MIB:
                raise ValueError(f"slice memory {self.memory!r} bytes is not a whole number "
                                 f"of MiB, which {vendor}/gpumem requires")
            resources[f"{vendor}/gpumem"] = str(self.memory // MIB)
        if self.cores is not None:
            resources[f"{vendor}/gpucores"] = str(self.cores)
        return resources

    @classmethod
    def from_pod_resources(cls, resources: Mapping[str, str | int],
                           vendor: str = "nvidia.com") -> Slice:
        """Inverse of :meth:`to_pod_resources`; other resources are ignored.

        ``gpumem-percentage`` is refused: turning it into bytes needs the card
        size, which a pod spec does not carry.
        """
        if f"{vendor}/gpumem-percentage" in resources:
            raise ValueError(f"{vendor}/gpumem-percentage cannot be turned into a slice "
                             f"without knowing the GPU's memory; use {vendor}/gpumem")
        gpu_key, mem_key, cores_key = (f"{vendor}/{k}" for k in ("gpu", "gpumem", "gpucores"))
        if gpu_key not in resources:
            raise ValueError(f"resources {dict(resources)!r} request no {gpu_key}")
        memory = _resource_int(resources, mem_key, None) * MIB if mem_key in resources else None
        cores = _resource_int(resources, cores_key, 100) if cores_key in resources else None
        return cls(memory=memory, cores=cores, count=_resource_int(resources, gpu_key, None))
