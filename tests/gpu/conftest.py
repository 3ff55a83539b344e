"""GPU-only tests: they run on a machine with an NVIDIA GPU and skip elsewhere."""
from __future__ import annotations

import shutil
import subprocess

import pytest


def _have_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    return subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _have_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (nvidia-smi -L failed or is missing)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
