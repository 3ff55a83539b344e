"""The C library and its tests, built against the fake driver, and a runner for them.

Shared by the test modules (fixtures in conftest.py); a plain module so that
it can be imported by name, unlike the conftest files.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ACCESS = ["direct", "dlsym", "procaddr", "ptsz"]
VARIANTS = ["plain", "sanitized"]
GiB = 1 << 30


def build_tests(variant: str) -> Path:
    """Configures and builds csrc with its tests (once per session, incrementally)."""
    build = ROOT / "build" / f"csrc-tests-{variant}"
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake is needed to build the C tests: pip install '.[test]' installs it")
    args = [
        cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Debug",
        "-DVGPU_BUILD_TESTS=ON", f"-DVGPU_SANITIZE={'ON' if variant == 'sanitized' else 'OFF'}",
    ]
    for cmd in (args, [cmake, "--build", str(build), "-j", str(os.cpu_count() or 2)]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return build


class Runner:
    """Runs test_libvgpu cases with libvgpu preloaded over the fake driver."""

    def __init__(self, variant: str, build: Path, tmp: Path):
        self.variant = variant
        self.build = build
        self.tmp = tmp
        self.library = build / "csrc" / "libvgpu.so"
        self.region = tmp / "slice.region"

    def env(self, env: dict[str, str] | None = None, access: str = "direct",
            shim: bool = False) -> dict[str, str]:
        preload = [str(self.library)]
        if shim:
            preload.insert(0, str(self.build / "csrc" / "tests" / "libprofiler_shim.so"))
        if self.variant == "sanitized":
            # The sanitizer runtime has to come first in the process.
            asan = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True,
                                  text=True).stdout.strip()
            preload.insert(0, asan)
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LD_LIBRARY_PATH": str(self.build / "fakedrv"),
            "LD_PRELOAD": " ".join(preload),
            "FAKE_CUDA_STATE": str(self.tmp / "fake.state"),
            "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(self.region),
            "VGPU_TEST_LIBRARY": str(self.library),
            "VGPU_TEST_ACCESS": access,
            "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=99",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=98",
        }
        full_env.update(env or {})
        return full_env

    @property
    def binary(self) -> str:
        return str(self.build / "csrc" / "tests" / "test_libvgpu")

    def start(self, case: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Starts a long-lived case (such as "hold"); the caller ends it by closing stdin."""
        return subprocess.Popen([self.binary, case], env=self.env(env), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, case: str, env: dict[str, str] | None = None, access: str = "direct",
            shim: bool = False, expect_ok: bool = True) -> subprocess.CompletedProcess[str]:
        full_env = self.env(env, access, shim)
        done = subprocess.run([self.binary, case],
                              env=full_env, capture_output=True, text=True, timeout=300)
        if expect_ok:
            assert done.returncode == 0 and f"PASS {case}" in done.stdout, (
                f"{case} [{access}, {self.variant}] exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
        return done
