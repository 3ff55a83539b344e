"""libvgpu (C) and hami_kernel.slice (Python) read the limit variables in
exactly the same language: one table of cases (tests/data/env_language.json),
run against both.

A value one side accepts and the other refuses would be a limit the server
shows but the library does not enforce (or a kernel that will not start
though its settings look fine).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hami_kernel.slice import device_limits, parse_env_cores, parse_env_memory

TABLE = json.loads((Path(__file__).parent / "data" / "env_language.json").read_text())["cases"]
IDS = [f"{c['variable']}={c['value']!r}" for c in TABLE]


def _python(variable: str, value: str) -> Any:
    """What the Python side makes of one setting: a number, None (no cap) or "error"."""
    try:
        if variable.startswith("CUDA_DEVICE_"):
            limit = device_limits({variable: value}, 1)[0]
            return limit.memory if "MEMORY" in variable else limit.cores
        if "MEMORY" in variable:
            return parse_env_memory(value, variable)
        return parse_env_cores(value, variable)
    except ValueError as e:
        assert variable in str(e)  # the message names the variable
        return "error"


def _c(build: tuple[str, Path], variable: str, value: str) -> Any:
    """What libvgpu's config makes of it, through csrc/tests/env_language.c."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), variable: value,
           "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    done = subprocess.run([str(build[1] / "csrc" / "tests" / "env_language"), variable], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    kind, _, rest = done.stdout.rstrip("\n").partition(" ")
    if kind == "error":
        assert rest.startswith(f"{variable}="), rest  # the message names the variable
        return "error"
    assert kind == "ok", done.stdout
    return None if rest == "none" else int(rest)


@pytest.mark.parametrize("case", TABLE, ids=IDS)
def test_python_reads_the_table(case: dict[str, Any]) -> None:
    assert _python(case["variable"], case["value"]) == case["expect"]


@pytest.mark.parametrize("case", TABLE, ids=IDS)
def test_libvgpu_reads_the_table(build: tuple[str, Path], case: dict[str, Any]) -> None:
    assert _c(build, case["variable"], case["value"]) == case["expect"]
