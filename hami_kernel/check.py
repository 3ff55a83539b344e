"""``%vgpu check``: is this kernel's GPU use really limited, and if not, why?

One ``ok:`` / ``problem:`` line per finding, the most fundamental first, so
the first problem is the one to fix:

1. is there a GPU at all (a CPU-only server, no NVIDIA driver)?  Without one
   nothing else matters, and nothing else is listed;
2. is libvgpu loaded into this process, through LD_PRELOAD?
3. which limits the environment asks for, and whether each is well formed;
4. this process's identity in the slice, and the slice's shared region.

Like :mod:`hami_kernel.status`, it only looks: no CUDA call, nothing written.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

from .kernel_slice import IDENTITY_ENV, region_path
from .region import RegionError, read_region
from .status import configured_limits, describe_configured, libvgpu_mappings, mapped_files, no_gpu_reason

__all__ = ["Finding", "check", "verdict", "format_check", "NOT_LOADED"]

NOT_LOADED = ("libvgpu is not loaded in this kernel: start it from a GPU kernelspec "
              "(hami-kernel install --name gpu-4g --memory 4GiB makes one; hami-kernel list shows them)")


@dataclass(frozen=True)
class Finding:
    ok: bool
    message: str

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'problem'}: {self.message}"


def _gpu_finding(env: Mapping[str, str]) -> Finding:
    reason = no_gpu_reason(env)
    if reason:
        return Finding(False, reason)
    where = [p for p in mapped_files() if os.path.basename(p).startswith("libcuda.so")]
    return Finding(True, f"NVIDIA driver library found ({where[0] if where else 'libcuda.so.1'})")


def _preloaded(env: Mapping[str, str]) -> list[str]:
    # ld.so splits LD_PRELOAD on spaces and colons.
    return [p for p in re.split(r"[ :]+", env.get("LD_PRELOAD", "")) if os.path.basename(p).startswith("libvgpu")]


def _library_findings(env: Mapping[str, str], maps_path: str) -> list[Finding]:
    mapped, preloaded = libvgpu_mappings(maps_path), _preloaded(env)
    findings = [Finding(True, f"libvgpu is loaded in this process ({', '.join(mapped)})") if mapped
                else Finding(False, NOT_LOADED)]
    if preloaded and mapped:
        findings.append(Finding(True, f"LD_PRELOAD names it ({' '.join(preloaded)})"))
    elif preloaded:
        findings.append(Finding(False, f"LD_PRELOAD names {' '.join(preloaded)} but it was not loaded "
                                       "(a missing file or another architecture: the loader skips it)"))
    elif mapped:
        findings.append(Finding(False, "libvgpu was loaded without LD_PRELOAD, after the program started: "
                                       "CUDA libraries loaded before it bypass it"))
    else:
        findings.append(Finding(False, "LD_PRELOAD does not name libvgpu.so"))
    return findings


def _limit_findings(env: Mapping[str, str]) -> list[Finding]:
    limits = configured_limits(env)
    # A malformed family gets its problem line instead of an ok line.
    findings = [Finding(True, f"{what}: {value}") for what, value, well_formed in describe_configured(limits)
                if well_formed]
    return findings + [Finding(False, p) for p in limits.problems]


def _region_findings(env: Mapping[str, str]) -> list[Finding]:
    path = region_path(env)
    try:
        snap = read_region(path)
    except RegionError as exc:
        if not os.path.lexists(path):
            return [Finding(True, f"no region yet at {path}: libvgpu creates it at the first CUDA call")]
        return [Finding(False, f"region unreadable: {exc}")]
    findings = [Finding(True, f"region {path} readable (layout version {snap.version}, "
                              f"{len(snap.devices)} GPU(s), {len(snap.processes)} live process(es))")]
    identity = env.get(IDENTITY_ENV)
    mine = snap.process(identity) if identity else [p for p in snap.processes if p.pid == os.getpid()]
    if mine:
        findings.append(Finding(True, f"this kernel is accounted in the region (slot "
                                      f"{', '.join(str(p.slot) for p in mine)})"))
    else:
        findings.append(Finding(True, "this kernel is not in the region yet: it joins at its first CUDA call"))
    return findings


def check(env: Mapping[str, str] | None = None, *, maps_path: str = "/proc/self/maps") -> list[Finding]:
    """The findings, most fundamental first (see the module's docstring)."""
    env = os.environ if env is None else env
    gpu = _gpu_finding(env)
    if not gpu.ok:
        return [gpu]
    findings = [gpu, *_library_findings(env, maps_path), *_limit_findings(env)]
    identity = env.get(IDENTITY_ENV)
    findings.append(Finding(True, f"identity in the slice: {identity}" if identity else
                            "no LIBVGPU_IDENTITY: this process is found in the region by its pid, "
                            "and %vgpu set cannot address it"))
    return findings + _region_findings(env)


def verdict(findings: list[Finding]) -> str:
    problems = [f for f in findings if not f.ok]
    if len(findings) == 1 and problems:
        return "verdict: no GPU here, so there is nothing to limit and no slice to show"
    if any(f.message == NOT_LOADED for f in problems):
        return "verdict: NOT limited: libvgpu is not active in this kernel, so nothing limits its GPU use"
    if problems:
        return (f"verdict: libvgpu is loaded but {len(problems)} problem(s) need fixing; "
                f"start with: {problems[0].message}")
    return "verdict: libvgpu is active: this kernel's GPU use is limited as listed above"


def format_check(findings: list[Finding]) -> str:
    return "\n".join([str(f) for f in findings] + [verdict(findings)])
