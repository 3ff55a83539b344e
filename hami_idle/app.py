"""The service process: a small Tornado app behind JupyterHub's proxy, and the hub-wide policy loop.

Started by JupyterHub as a managed service (``hami-idle-service``; see
:func:`hami_idle.service_config`), it takes its token, the hub's API URL,
its own URL and prefix from the ``JUPYTERHUB_*`` variables the hub sets.
Pages and API are admin-only: a logged-in user who is not an admin gets 403.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import deque
from typing import Any
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web
from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import Enum, Float, Integer, TraitError, Unicode, default, validate
from traitlets.config import Application

from hami_kernel.serverext.idle import Rule, min_memory_bytes

from .fleet import ServerUsage, fleet_view
from .hub import HubClient, RunningServer, describe_error
from .page import render_metrics, render_page

__all__ = ["IdleService", "main"]


class IdleService(Application):  # type: ignore[misc]
    """Shows admins who holds GPU memory idle across the hub, and can apply an idle policy hub-wide."""

    name = "hami-idle-service"
    description = __doc__
    aliases = {
        "idle-after": "IdleService.idle_after", "min-memory": "IdleService.min_memory",
        "action": "IdleService.action", "grace": "IdleService.grace",
        "check-interval": "IdleService.check_interval", "proxy-url": "IdleService.proxy_url",
        "config": "IdleService.config_file",
    }

    config_file = Unicode("", help="A Python config file (c.IdleService.<trait> = ...).").tag(config=True)

    idle_after = Float(3600.0, help="""Seconds without execution and without GPU launches after which a
        kernel counts as idle, hub-wide.""").tag(config=True)
    min_memory = Unicode("1GiB", help="""The VRAM a kernel must hold for the hub policy to act on it
        ("0" for any amount).""").tag(config=True)
    action = Enum(("off", "warn", "shutdown"), default_value="off", help="""The hub-wide policy: "off" (only
        list), "warn" (each such kernel's user is notified), or "shutdown" (notified, then the kernel is
        shut down grace seconds later unless it ran something). Each server decides on its own fresh view
        and never shuts down a kernel that is executing.""").tag(config=True)
    grace = Float(300.0, help="Seconds between the warning and the shutdown (\"shutdown\").").tag(config=True)
    check_interval = Float(60.0, help="""Seconds between two reads of every server (the policy runs at
        each); the page and API show the latest read, at most this old.""").tag(config=True)
    proxy_url = Unicode(help="""Where the servers are reached: the proxy's URL (the servers' paths,
        /user/<name>/, are appended). Default: JUPYTERHUB_PUBLIC_URL, else http://127.0.0.1:8000.""").tag(config=True)
    request_timeout = Float(10.0, help="Seconds to wait for one server's answer.").tag(config=True)
    max_actions = Integer(100, help="How many of the hub policy's last steps the page lists.").tag(config=True)

    @default("proxy_url")
    def _default_proxy_url(self) -> str:
        return os.environ.get("JUPYTERHUB_PUBLIC_URL") or "http://127.0.0.1:8000"

    @validate("min_memory")
    def _check_min_memory(self, proposal: Any) -> str:
        try:
            min_memory_bytes(proposal["value"])
        except ValueError as exc:
            raise TraitError(f"--min-memory: {exc}") from None
        return str(proposal["value"]).strip()

    @validate("idle_after", "grace", "check_interval", "request_timeout")
    def _check_seconds(self, proposal: Any) -> float:
        if not proposal["value"] >= 0:
            raise TraitError(f"--{proposal['trait'].name.replace('_', '-')} must be 0 or more seconds")
        return float(proposal["value"])

    @property
    def rule(self) -> Rule:
        return Rule(self.idle_after, min_memory_bytes(self.min_memory))

    def policy_json(self) -> dict[str, Any]:
        return {"action": self.action, **self.rule.as_json(), "grace_seconds": self.grace}

    # ---- reading the servers -----------------------------------------------------------------------

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
        missing = [v for v in ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL") if not os.environ.get(v)]
        if missing:
            print(f"hami-idle-service: {', '.join(missing)} not set: run it as a JupyterHub service", file=sys.stderr)
            raise SystemExit(2)
        self.hub = HubClient(os.environ["JUPYTERHUB_API_URL"], self.proxy_url, os.environ["JUPYTERHUB_API_TOKEN"],
                             self.request_timeout)
        self.latest: dict[str, Any] | None = None
        self.actions: deque[dict[str, Any]] = deque(maxlen=self.max_actions)
        self._lock = asyncio.Lock()

    async def read_all(self) -> dict[str, Any]:
        """Every running server's usage, now, as the ``api/idle`` document."""
        servers = await self.hub.running_servers()

        async def one(server: RunningServer) -> ServerUsage:
            try:
                return ServerUsage(server, await self.hub.usage(server))
            except Exception as exc:  # one server's trouble is shown on its row, never fails the page
                return ServerUsage(server, None, describe_error(exc))

        results = list(await asyncio.gather(*(one(s) for s in servers)))
        self.servers = {(s.user, s.name): s for s in servers}
        return fleet_view(results, self.rule, time.time())

    async def refresh(self) -> dict[str, Any]:
        async with self._lock:
            self.latest = await self.read_all()
            if self.action != "off":
                await self.apply_policy(self.latest)
            return self.latest

    async def view(self) -> dict[str, Any]:
        """The latest read, or a new one when there is none or it is older than check_interval."""
        if self.latest is None or time.time() - self.latest["time"] > max(self.check_interval, 1.0):
            return await self.refresh()
        return self.latest

    async def apply_policy(self, doc: dict[str, Any]) -> None:
        body = {"action": self.action, "idle_after": self.idle_after, "min_memory": self.rule.min_memory,
                "grace": self.grace, "source": "hub"}
        for entry in doc["servers"]:
            server = self.servers.get((entry["user"], entry["server"]))
            for kernel in entry["kernels"]:
                if not kernel["reclaimable"] or server is None:
                    continue
                try:
                    outcome = await self.hub.reclaim(server, kernel["kernel_id"], body)
                except Exception as exc:
                    outcome = {"state": "failed", "message": describe_error(exc)}
                self.log.info("hub policy: %s/%s kernel %s: %s", entry["user"], entry["server"],
                              kernel["kernel_id"], outcome.get("state"))
                self.actions.append({"time": time.time(), "user": entry["user"], "server": entry["server"],
                                     "kernel_id": kernel["kernel_id"], **outcome})

    async def _tick(self) -> None:
        try:
            await self.refresh()
        except Exception:
            self.log.exception("hami-idle-service: reading the servers failed")

    # ---- serving ------------------------------------------------------------------------------------

    def start(self) -> None:
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/vgpu-idle/")
        url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
        app = web.Application([
            (prefix, PageHandler), (prefix + "api/idle", ApiHandler), (prefix + "metrics", MetricsHandler),
            (prefix + "oauth_callback", HubOAuthCallbackHandler),
        ], service=self, cookie_secret=os.urandom(32), login_url=prefix + "oauth_callback")
        app.listen(url.port or 80, url.hostname or "127.0.0.1")
        self.log.info("hami-idle-service at %s%s, policy: %s", url.geturl().rstrip("/"), prefix, self.policy_json())
        if self.check_interval > 0:
            PeriodicCallback(self._tick, self.check_interval * 1000).start()
        IOLoop.current().add_callback(self._tick)
        IOLoop.current().start()


class _AdminHandler(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    # Any user the hub identifies gets this far; require_admin then refuses all but admins
    # with a clear 403 (the hub's own access check would leave them at a login loop).
    hub_scopes = None

    @property
    def service(self) -> IdleService:
        return self.settings["service"]  # type: ignore[no-any-return]

    def require_admin(self) -> None:
        user = self.current_user
        if not user:
            raise web.HTTPError(401, "log in to JupyterHub first")
        if not user.get("admin"):
            raise web.HTTPError(403, f"{user.get('name')} is not an admin: only admins see the hub's GPU memory")


class PageHandler(_AdminHandler):
    @web.authenticated
    async def get(self) -> None:
        self.require_admin()
        doc = await self.service.view()
        self.finish(render_page(doc, self.service.policy_json(), list(self.service.actions)))


class ApiHandler(_AdminHandler):
    """``GET api/idle``: the hub-wide document (see :func:`hami_idle.fleet.fleet_view`)."""

    async def get(self) -> None:
        self.require_admin()
        doc = await self.service.view()
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({**doc, "policy": self.service.policy_json(), "actions": list(self.service.actions)}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))


class MetricsHandler(ApiHandler):
    async def get(self) -> None:
        self.require_admin()
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(render_metrics(await self.service.view()))


def main(argv: list[str] | None = None) -> None:
    app = IdleService.instance()
    try:
        app.initialize(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise SystemExit(2) from None  # bad options: the reason is printed already
        raise
    app.start()
