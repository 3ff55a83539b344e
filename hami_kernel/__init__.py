"""hami-jupyter's side of the user's server: GPU slices for kernels.

The interception library, libvgpu, ships inside this package; everything that
starts a process under a slice finds it through :func:`library_path`.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["library_path", "preload_first", "LibraryNotFound", "load_ipython_extension",
           "unload_ipython_extension"]

_LIBRARY_NAME = "libvgpu.so"


class LibraryNotFound(RuntimeError):
    """libvgpu is not where this installation says it should be."""


def library_path() -> Path:
    """The absolute path of the installed libvgpu.so.

    ``LIBVGPU_LIBRARY`` overrides the packaged copy (for a library built by
    hand); it must name an existing file, since a wrong path would start
    kernels with no limits at all.
    """
    override = os.environ.get("LIBVGPU_LIBRARY")
    if override:
        path = Path(override)
        if not path.is_file():
            raise LibraryNotFound(f"LIBVGPU_LIBRARY={override!r} is not a file")
        return path.resolve()
    path = Path(__file__).resolve().parent / "lib" / _LIBRARY_NAME
    if not path.is_file():
        raise LibraryNotFound(
            f"{_LIBRARY_NAME} is missing from {path.parent}; "
            "reinstall hami-jupyter with 'pip install .' so the C library is built"
        )
    return path


def preload_first(library: str, current: str | None) -> str:
    """An LD_PRELOAD value with ``library`` first and what ``current`` named after it,
    once each (ld.so splits the variable on spaces and colons)."""
    rest = [p for p in (current or "").replace(" ", ":").split(":") if p and p != library]
    return ":".join([library, *rest])


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """``%load_ext hami_kernel``: the %vgpu magic (imported here lazily, so
    importing hami_kernel needs no IPython)."""
    from .ipython import load_ipython_extension as load
    load(ipython)


def unload_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    from .ipython import unload_ipython_extension as unload
    unload(ipython)
