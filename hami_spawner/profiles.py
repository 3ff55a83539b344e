"""GPU profiles an admin offers, and the one path from a spawn request to a profile.

Admins write plain dicts in ``jupyterhub_config.py``; they are validated once
into :class:`GpuProfile`.  A spawn request (form data or REST body) becomes a
profile only through :meth:`GpuProfiles.resolve`, which refuses anything the
user was not offered, so a forged request cannot widen a slice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from traitlets import Dict, Int, List, Unicode, observe, validate
from traitlets.config import Configurable

from hami_kernel.slice import GIB, Slice, format_memory, parse_memory

POLICIES = ("binpack", "spread")
CUSTOM = "custom"
_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_PROFILE_KEYS = {"name", "display_name", "description", "memory", "cores", "count",
                 "gpu_types", "avoid_gpu_types", "policy", "groups", "default"}
_CUSTOM_KEYS = {"memory_min", "memory_max", "memory_step", "cores_min", "cores_max",
                "cores_step", "count_max", "groups", "policy"}


# Parsed configurations: key = the profile traits as JSON (see GpuProfiles.parsed).
_PARSED: dict[str, tuple[list["GpuProfile"], "CustomRange | None"]] = {}


class ProfileError(ValueError):
    """An admin's profile configuration is invalid."""


class ChoiceError(ValueError):
    """A spawn request names no profile this user may have; fit for an HTTP 400."""


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, set, frozenset)) or not all(
            isinstance(s, str) and s.strip() for s in items):
        raise ProfileError(f"{where}: {key!r} must be a string or a list of non-empty "
                           f"strings, not {value!r}")
    return tuple(s.strip() for s in items)


def _policy(where: str, value: Any) -> str:
    if value not in POLICIES:
        raise ProfileError(f"{where}: 'policy' must be one of {POLICIES}, not {value!r}")
    return value


@dataclass(frozen=True)
class GpuProfile:
    """One offered slice size; ``slice.memory`` None means the whole GPU's memory."""

    name: str
    display_name: str
    description: str
    slice: Slice
    gpu_types: tuple[str, ...] = ()
    avoid_gpu_types: tuple[str, ...] = ()
    policy: str = "binpack"
    groups: frozenset[str] = frozenset()
    default: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> GpuProfile:
        """Build from an admin's dict; raises ProfileError naming profile and key."""
        if not isinstance(config, Mapping):
            raise ProfileError(f"a GPU profile must be a dict, not {config!r}")
        name = config.get("name")
        where = f"GPU profile {name!r}"
        if not isinstance(name, str) or not _SLUG_RE.fullmatch(name):
            raise ProfileError(f"{where}: 'name' must be a slug of lowercase letters, "
                               f"digits, '-' and '_' (at most 63 characters)")
        if name == CUSTOM:
            raise ProfileError(f"{where}: the name {CUSTOM!r} is reserved for custom sizes")
        unknown = sorted(set(config) - _PROFILE_KEYS)
        if unknown:
            raise ProfileError(f"{where}: unknown key(s) {unknown}; allowed: "
                               f"{sorted(_PROFILE_KEYS)}")
        try:
            size = Slice.parse(config.get("memory"), config.get("cores"),
                               config.get("count", 1))
        except ValueError as exc:
            raise ProfileError(f"{where}: {exc}") from None
        texts = {}
        for key, fallback in (("display_name", name), ("description", size.describe())):
            texts[key] = config.get(key, fallback)
            if not isinstance(texts[key], str):
                raise ProfileError(f"{where}: {key!r} must be a string, not {texts[key]!r}")
        default = config.get("default", False)
        if not isinstance(default, bool):
            raise ProfileError(f"{where}: 'default' must be True or False, not {default!r}")
        return cls(name=name, display_name=texts["display_name"],
                   description=texts["description"], slice=size,
                   gpu_types=_strings(where, "gpu_types", config.get("gpu_types", ())),
                   avoid_gpu_types=_strings(where, "avoid_gpu_types",
                                            config.get("avoid_gpu_types", ())),
                   policy=_policy(where, config.get("policy", "binpack")),
                   groups=frozenset(_strings(where, "groups", config.get("groups", ()))),
                   default=default)

    def offered_to(self, groups: set[str] | frozenset[str], is_admin: bool = False) -> bool:
        return is_admin or not self.groups or bool(self.groups & set(groups))


@dataclass(frozen=True)
class CustomRange:
    """Admin bounds on a user-chosen size; sizes must sit on min + k * step."""

    memory_min: int
    memory_max: int
    memory_step: int = GIB
    cores_min: int = 1
    cores_max: int = 100
    cores_step: int = 1
    count_max: int = 1
    groups: frozenset[str] = frozenset()
    policy: str = "binpack"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CustomRange:
        where = "custom GPU profile"
        if not isinstance(config, Mapping):
            raise ProfileError(f"{where} must be a dict, not {config!r}")
        unknown = sorted(set(config) - _CUSTOM_KEYS)
        if unknown:
            raise ProfileError(f"{where}: unknown key(s) {unknown}; allowed: "
                               f"{sorted(_CUSTOM_KEYS)}")
        values: dict[str, Any] = {}
        for key in ("memory_min", "memory_max", "memory_step"):
            if key in config:
                try:
                    values[key] = parse_memory(config[key])
                except ValueError as exc:
                    raise ProfileError(f"{where}: {key!r}: {exc}") from None
            elif key != "memory_step":
                raise ProfileError(f"{where}: {key!r} is required")
        for key in ("cores_min", "cores_max", "cores_step", "count_max"):
            if key in config:
                value = config[key]
                if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (
                        key.startswith("cores") and value > 100):
                    limit = " from 1 to 100" if key.startswith("cores") else " >= 1"
                    raise ProfileError(f"{where}: {key!r} must be an integer{limit}, "
                                       f"not {value!r}")
                values[key] = value
        values["groups"] = frozenset(_strings(where, "groups", config.get("groups", ())))
        values["policy"] = _policy(where, config.get("policy", "binpack"))
        bounds = cls(**values)
        for kind in ("memory", "cores"):
            if getattr(bounds, f"{kind}_min") > getattr(bounds, f"{kind}_max"):
                raise ProfileError(f"{where}: {kind}_min is larger than {kind}_max")
        return bounds

    def validate(self, memory: str | int, cores: str | int, count: str | int = 1) -> Slice:
        """Return the slice for user-typed values, or raise ChoiceError."""
        try:
            size = Slice.parse(memory, cores, count)
        except ValueError as exc:
            raise ChoiceError(f"custom size: {exc}") from None
        fmt = format_memory
        if not self.memory_min <= size.memory <= self.memory_max:
            raise ChoiceError(f"custom memory {fmt(size.memory)} is outside the allowed "
                              f"range {fmt(self.memory_min)} to {fmt(self.memory_max)}")
        if (size.memory - self.memory_min) % self.memory_step:
            raise ChoiceError(f"custom memory {fmt(size.memory)} must be "
                              f"{fmt(self.memory_min)} plus a multiple of "
                              f"{fmt(self.memory_step)}")
        share = 100 if size.cores is None else size.cores
        if not self.cores_min <= share <= self.cores_max:
            raise ChoiceError(f"custom compute share {share}% is outside the allowed "
                              f"range {self.cores_min}% to {self.cores_max}%")
        if (share - self.cores_min) % self.cores_step:
            raise ChoiceError(f"custom compute share {share}% must be {self.cores_min}% "
                              f"plus a multiple of {self.cores_step}%")
        if size.count > self.count_max:
            raise ChoiceError(f"custom GPU count {size.count} exceeds the maximum of "
                              f"{self.count_max}")
        return size


class GpuProfiles(Configurable):
    """The GPU slice sizes offered to users, and validation of their choices."""

    profiles = List(Dict(), help="""
        GPU profiles offered to users.  Each is a dict with keys: name (slug,
        unique), display_name, description, memory (per GPU, e.g. "8GiB";
        omit for the whole GPU's memory), cores (percent per GPU; omit for
        100), count (GPUs, default 1), gpu_types / avoid_gpu_types (substrings
        of the GPU model name), policy ("binpack" or "spread"), groups (empty
        = everyone), default (at most one True).  Example::

            c.GpuProfiles.profiles = [
                {"name": "small", "display_name": "Small", "memory": "8GiB",
                 "cores": 25, "default": True},
                {"name": "big", "memory": "40GiB", "cores": 100,
                 "gpu_types": ["H100"], "groups": ["research"]},
            ]
        """).tag(config=True)
    custom = Dict(default_value=None, allow_none=True, help="""
        Optional bounds for a user-chosen size; None (or {}) offers none.  Keys:
        memory_min, memory_max (required), memory_step (default "1GiB"),
        cores_min, cores_max, cores_step (percent), count_max (default 1),
        groups (empty = everyone), policy.  Example:
        {"memory_min": "2GiB", "memory_max": "40GiB", "cores_step": 5}
        """).tag(config=True)
    max_gpu_servers_per_user = Int(0, help="""
        How many GPU servers one user may run at once; 0 means unlimited.
        """).tag(config=True)
    cpu_profile_name = Unicode("cpu", help="""
        Name of the choice without a GPU; empty to offer no such choice.
        """).tag(config=True)
    cpu_profile_display_name = Unicode("CPU only (no GPU)", help="""
        Display name of the choice without a GPU.
        """).tag(config=True)

    _parsed: list[GpuProfile] | None = None
    _custom_range: CustomRange | None = None

    @validate("max_gpu_servers_per_user")
    def _check_max(self, proposal: Any) -> int:
        if proposal["value"] < 0:
            raise ProfileError("max_gpu_servers_per_user must be >= 0 (0 = unlimited)")
        return proposal["value"]

    @observe("profiles", "custom", "cpu_profile_name")
    def _invalidate(self, change: Any) -> None:
        self._parsed = None

    def parsed(self) -> list[GpuProfile]:
        """The profiles, validated once (again after a config change)."""
        if self._parsed is None:
            # JupyterHub makes a spawner (and so one of these) per server, all
            # from one config: parse a config once per process, not per spawner.
            key = json.dumps([self.profiles, self.custom, self.cpu_profile_name], sort_keys=True, default=repr)
            cached = _PARSED.get(key)
            if cached is None:
                cached = self._parse()
                if len(_PARSED) >= 8:
                    _PARSED.pop(next(iter(_PARSED)))
                _PARSED[key] = cached
            self._parsed, self._custom_range = cached
        return self._parsed

    def _parse(self) -> tuple[list[GpuProfile], CustomRange | None]:
        result = [GpuProfile.from_config(d) for d in self.profiles]
        names = [p.name for p in result]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ProfileError(f"GPU profile names must be unique; repeated: {duplicates}")
        if self.cpu_profile_name and self.cpu_profile_name in names:
            raise ProfileError(f"GPU profile {self.cpu_profile_name!r}: that name is "
                               f"the CPU-only choice (cpu_profile_name)")
        defaults = [p.name for p in result if p.default]
        if len(defaults) > 1:
            raise ProfileError(f"at most one GPU profile may be the default; "
                               f"marked: {defaults}")
        return result, CustomRange.from_config(self.custom) if self.custom else None

    def custom_range(self) -> CustomRange | None:
        self.parsed()
        return self._custom_range

    def offered_to(self, groups: set[str], is_admin: bool = False) -> list[GpuProfile]:
        return [p for p in self.parsed() if p.offered_to(groups, is_admin)]

    def custom_offered_to(self, groups: set[str], is_admin: bool = False) -> bool:
        bounds = self.custom_range()
        return bounds is not None and (is_admin or not bounds.groups
                                       or bool(bounds.groups & set(groups)))

    def resolve(self, choice: Mapping[str, str], groups: set[str],
                is_admin: bool = False) -> GpuProfile | None:
        """Turn a spawn request into a profile; None is the CPU-only choice.

        Accepted: ``{"profile": name}`` for an offered profile (or the CPU
        choice), or ``{"profile": "custom", "memory", "cores"[, "count"]}``.
        """
        if not isinstance(choice, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in choice.items()):
            raise ChoiceError("the GPU choice must map field names to strings")
        name = choice.get("profile")
        if not name:
            raise ChoiceError("no GPU profile chosen: send a 'profile' field")
        if name == CUSTOM:
            if not self.custom_offered_to(groups, is_admin):
                raise ChoiceError("a custom GPU size is not offered to you")
            extra = sorted(set(choice) - {"profile", "memory", "cores", "count"})
            if extra or "memory" not in choice or "cores" not in choice:
                raise ChoiceError(f"a custom GPU size takes exactly 'memory', 'cores' and "
                                  f"optionally 'count'{f'; unexpected: {extra}' if extra else ''}")
            bounds = self.custom_range()
            size = bounds.validate(choice["memory"], choice["cores"], choice.get("count", "1"))
            return GpuProfile(name=CUSTOM, display_name=f"Custom: {size.describe()}",
                              description=size.describe(), slice=size,
                              policy=bounds.policy, groups=bounds.groups)
        extra = sorted(set(choice) - {"profile"})
        if extra:
            raise ChoiceError(f"profile {name!r} has a fixed size; unexpected field(s) "
                              f"{extra}")
        if self.cpu_profile_name and name == self.cpu_profile_name:
            return None
        offered = {p.name: p for p in self.offered_to(groups, is_admin)}
        if name not in offered:
            names = sorted(offered) + ([self.cpu_profile_name] if self.cpu_profile_name else [])
            raise ChoiceError(f"unknown GPU profile {name!r}; you may choose one of {names}")
        return offered[name]
