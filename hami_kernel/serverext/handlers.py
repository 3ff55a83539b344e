"""REST handlers of the server extension, under ``{base_url}api/vgpu/v1/``.

Every handler is a jupyter-server ``APIHandler``: the server's own
authentication, authorization (as the ``kernels`` resource) and XSRF checks
apply, and errors are JSON with a ``message``.
"""
from __future__ import annotations

import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from ..kernel_slice import SubSliceError
from ..redivide import set_kernel_slice
from ..slice import parse_memory
from . import metrics
from .idle import Rule, kernel_idleness
from .kernels import kernel_infos
from .monitor import SliceMonitor
from .reclaim import ACTIONS, IdlePolicy

__all__ = ["handlers"]

AUTH_RESOURCE = "kernels"


class _SliceHandler(APIHandler):  # type: ignore[misc]
    auth_resource = AUTH_RESOURCE

    @property
    def monitor(self) -> SliceMonitor:
        return self.settings["hami_slice_monitor"]  # type: ignore[no-any-return]

    @property
    def idle_policy(self) -> IdlePolicy:
        return self.settings["hami_idle_policy"]  # type: ignore[no-any-return]

    async def report(self) -> dict[str, Any]:
        """The usage report, with the idle policy's marks and notices."""
        report = self.monitor.report(kernel_infos(self.kernel_manager, self.session_manager))
        return self.idle_policy.annotate(report)

    def kernel_request(self, kernel_id: str, example: str) -> dict[str, Any]:
        """The JSON object a POST about one of this server's kernels carries (404, 400 otherwise)."""
        if kernel_id not in self.kernel_manager:
            raise web.HTTPError(404, f"no kernel {kernel_id} in this server")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, f"the request body must be an object such as {example}")
        return body


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
        body = self.kernel_request(kernel_id, '{"memory": "2GiB", "cores": 20}')
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


class ReclaimHandler(_SliceHandler):
    """``POST kernels/{kernel_id}/reclaim``: one step of the idle policy for one kernel, by a rule of the caller's.

    The hub's service (``hami_idle``) applies its policy through this: the
    body is ``{"action": "warn" | "shutdown", "idle_after": seconds,
    "min_memory": "1GiB" or bytes, "grace": seconds}``. The server decides on
    its own, fresh view of the kernel (never one that is executing) and tells
    the user as its own policy does; the answer is ``{"state": ...}`` (see
    :meth:`IdlePolicy.consider`).
    """

    # The hub's service asking is not the user being active: it must not keep the server from culling.
    _track_activity = False

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        body = self.kernel_request(kernel_id, '{"action": "shutdown", "idle_after": 3600, "min_memory": "1GiB", '
                                              '"grace": 300}')
        unknown = sorted(set(body) - {"action", "idle_after", "min_memory", "grace", "source"})
        if unknown:
            raise web.HTTPError(400, f"unknown field(s) {', '.join(map(repr, unknown))}")
        action = body.get("action")
        if action not in ACTIONS[1:]:
            raise web.HTTPError(400, f"action must be 'warn' or 'shutdown', not {action!r}")
        seconds = {}
        for key in ("idle_after", "grace"):
            value = body.get(key, 0 if key == "grace" else None)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise web.HTTPError(400, f"{key} must be a number of seconds (0 or more), not {value!r}")
            seconds[key] = float(value)
        try:
            min_memory = 0 if body.get("min_memory") in (0, "0") else parse_memory(body.get("min_memory"))
        except ValueError as exc:
            raise web.HTTPError(400, f"min_memory: {exc}") from None
        source = body.get("source") or "hub"
        if not isinstance(source, str) or len(source) > 64:
            raise web.HTTPError(400, "source must be a short name")
        kernels = kernel_idleness(await self.report())
        if kernel_id not in kernels:
            self.finish(json.dumps({"kernel_id": kernel_id, "state": "not_idle",
                                    "message": "this kernel holds no GPU memory"}))
            return
        outcome = await self.idle_policy.consider(kernels[kernel_id], Rule(seconds["idle_after"], min_memory),
                                                  action, seconds["grace"], source)
        self.finish(json.dumps({"kernel_id": kernel_id, **outcome}))


def handlers(base_url: str) -> list[tuple[str, type[APIHandler]]]:
    prefix = base_url.rstrip("/") + "/api/vgpu/v1"
    return [
        (prefix + "/usage", UsageHandler),
        (prefix + "/metrics", MetricsHandler),
        (prefix + r"/kernels/(?P<kernel_id>[^/]+)/slice", KernelSliceHandler),
        (prefix + r"/kernels/(?P<kernel_id>[^/]+)/reclaim", ReclaimHandler),
    ]
