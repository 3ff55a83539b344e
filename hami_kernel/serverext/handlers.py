"""REST handlers of the server extension, under ``{base_url}api/vgpu/v1/``.

Every handler is a jupyter-server ``APIHandler``: the server's own
authentication, authorization (as the ``kernels`` resource) and XSRF checks
apply, and errors are JSON with a ``message``.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from ..kernel_slice import SubSliceError
from ..redivide import set_kernel_slice
from . import metrics
from .monitor import SliceMonitor
from .usage import KernelInfo

__all__ = ["handlers"]

AUTH_RESOURCE = "kernels"


def _epoch(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


class _SliceHandler(APIHandler):  # type: ignore[misc]
    auth_resource = AUTH_RESOURCE

    @property
    def monitor(self) -> SliceMonitor:
        return self.settings["hami_slice_monitor"]  # type: ignore[no-any-return]

    async def kernel_infos(self) -> dict[str, KernelInfo]:
        """This server's kernels, each with the notebook or console its session gives it."""
        infos = {}
        paths = self.session_paths()
        for kernel_id in self.kernel_manager.list_kernel_ids():
            try:
                kernel = self.kernel_manager.get_kernel(kernel_id)
            except KeyError:  # shut down meanwhile
                continue
            path, kind = paths.get(kernel_id, (None, None))
            infos[kernel_id] = KernelInfo(
                kernel_id=kernel_id, name=getattr(kernel, "kernel_name", ""),
                execution_state=getattr(kernel, "execution_state", None),
                last_activity=_epoch(getattr(kernel, "last_activity", None)), path=path, session_type=kind)
        return infos

    def session_paths(self) -> dict[str, tuple[str | None, str | None]]:
        """{kernel id: (path, type)} from the session manager's table.

        One query rather than list_sessions(), which builds a full model of
        every kernel for every session: this runs every second per open tab.
        Kernels are taken from the kernel manager, so a stale row names none.
        """
        rows = self.session_manager.cursor.execute("SELECT kernel_id, path, type FROM session")
        return {row[0]: (row[1], row[2]) for row in rows.fetchall() if row[0]}

    async def report(self) -> dict[str, Any]:
        return self.monitor.report(await self.kernel_infos())


class UsageHandler(_SliceHandler):
    """``GET usage``: the slice, its devices and every process in it."""

    # The status bar polls this every second: that is not the user being active,
    # and must not keep an idle server from being culled.
    _track_activity = False

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(await self.report()))


class MetricsHandler(_SliceHandler):
    """``GET metrics``: the same figures for Prometheus."""

    _track_activity = False  # a scrape is not the user being active

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(metrics.render(await self.report()), set_content_type=metrics.CONTENT_TYPE)


class KernelSliceHandler(_SliceHandler):
    """``POST kernels/{kernel_id}/slice``: re-divide one kernel's share of the slice.

    The body is ``{"memory": "2GiB", "cores": 20}`` (either may be left out;
    0 or "" lifts the kernel's own cap), checked as ``%vgpu set`` checks it.
    """

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        if kernel_id not in self.kernel_manager:
            raise web.HTTPError(404, f"no kernel {kernel_id} in this server")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'the request body must be an object such as {"memory": "2GiB", "cores": 20}')
        unknown = sorted(set(body) - {"memory", "cores"})
        if unknown:
            raise web.HTTPError(400, f"unknown field(s) {', '.join(map(repr, unknown))}: give memory and/or cores")
        for key in ("memory", "cores"):
            if key in body and (isinstance(body[key], bool) or not isinstance(body[key], (int, str, type(None)))):
                raise web.HTTPError(400, f"{key} must be a size or a number, not {body[key]!r}")
        try:
            message = set_kernel_slice(kernel_id, body.get("memory"), body.get("cores"),
                                       region_path=self.monitor.region_path)
        except SubSliceError as exc:
            raise web.HTTPError(400, str(exc)) from None
        self.finish(json.dumps({"kernel_id": kernel_id, "message": message}))


def handlers(base_url: str) -> list[tuple[str, type[APIHandler]]]:
    prefix = base_url.rstrip("/") + "/api/vgpu/v1"
    return [
        (prefix + "/usage", UsageHandler),
        (prefix + "/metrics", MetricsHandler),
        (prefix + r"/kernels/(?P<kernel_id>[^/]+)/slice", KernelSliceHandler),
    ]
