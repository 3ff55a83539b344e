"""Shared fixtures: the C library and its tests built against the fake driver.

`build` is parametrized over the plain and the sanitized (ASan + UBSan) build;
`runner` runs a case of csrc/tests/test_libvgpu.c under libvgpu in a fresh
temporary directory (fresh shared region, fresh fake-driver state).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from cbuild import VARIANTS, Runner, build_tests


@pytest.fixture(scope="session", params=VARIANTS)
def build(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, build_tests(request.param)


@pytest.fixture
def runner(build: tuple[str, Path], tmp_path: Path) -> Runner:
    return Runner(build[0], build[1], tmp_path)


