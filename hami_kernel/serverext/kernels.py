"""This server's kernels as the usage report needs them: state, last activity, notebook."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from .usage import KernelInfo

__all__ = ["kernel_infos"]


def _epoch(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def session_paths(session_manager: Any) -> dict[str, tuple[str | None, str | None]]:
    """{kernel id: (path, type)} from the session manager's table.

    One query rather than list_sessions(), which builds a full model of
    every kernel for every session: this runs every second per open tab.
    Kernels are taken from the kernel manager, so a stale row names none.
    """
    rows = session_manager.cursor.execute("SELECT kernel_id, path, type FROM session")
    return {row[0]: (row[1], row[2]) for row in rows.fetchall() if row[0]}


def kernel_infos(kernel_manager: Any, session_manager: Any) -> dict[str, KernelInfo]:
    """This server's kernels, each with the notebook or console its session gives it."""
    infos = {}
    paths = session_paths(session_manager)
    for kernel_id in kernel_manager.list_kernel_ids():
        try:
            kernel = kernel_manager.get_kernel(kernel_id)
        except KeyError:  # shut down meanwhile
            continue
        path, kind = paths.get(kernel_id, (None, None))
        infos[kernel_id] = KernelInfo(
            kernel_id=kernel_id, name=getattr(kernel, "kernel_name", ""),
            execution_state=getattr(kernel, "execution_state", None),
            last_activity=_epoch(getattr(kernel, "last_activity", None)), path=path, session_type=kind)
    return infos
