"""What the service asks JupyterHub and the servers, over HTTP with its token."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

__all__ = ["RunningServer", "HubClient"]


@dataclass(frozen=True)
class RunningServer:
    user: str
    name: str  # "" for the default server
    url: str  # its path under the proxy, such as /user/alice/


class HubClient:
    """The hub's REST API, and the running servers' ``api/vgpu/v1`` through the proxy."""

    def __init__(self, api_url: str, proxy_url: str, token: str, timeout: float = 10.0):
        self.api_url = api_url.rstrip("/")
        self.proxy_url = proxy_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.http = AsyncHTTPClient()

    async def _json(self, url: str, method: str = "GET", body: Any = None,
                    headers: dict[str, str] | None = None) -> Any:
        request = HTTPRequest(url, method=method, body=None if body is None else json.dumps(body),
                              headers={"Authorization": f"token {self.token}", **(headers or {})},
                              request_timeout=self.timeout, connect_timeout=self.timeout, follow_redirects=False)
        reply = await self.http.fetch(request)
        return json.loads(reply.body) if reply.body else None

    async def running_servers(self) -> list[RunningServer]:
        """Every ready server of every user, page by page."""
        servers, offset = [], 0
        while True:
            query = urlencode({"state": "ready", "offset": offset, "limit": 200})
            page = await self._json(f"{self.api_url}/users?{query}",
                                    headers={"Accept": "application/jupyterhub-pagination+json"})
            items = page["items"] if isinstance(page, dict) else page
            for user in items:
                for name, server in (user.get("servers") or {}).items():
                    if server.get("ready") and server.get("url"):
                        servers.append(RunningServer(user["name"], name, server["url"]))
            following = (page.get("_pagination") or {}).get("next") if isinstance(page, dict) else None
            if not following:
                return servers
            offset = following["offset"]

    async def usage(self, server: RunningServer) -> dict[str, Any]:
        return await self._json(f"{self.proxy_url}{server.url}api/vgpu/v1/usage")  # type: ignore[no-any-return]

    async def reclaim(self, server: RunningServer, kernel_id: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.proxy_url}{server.url}api/vgpu/v1/kernels/{quote(kernel_id, safe='')}/reclaim"
        return await self._json(url, "POST", body)  # type: ignore[no-any-return]


def describe_error(exc: Exception) -> str:
    """One sentence for a server that could not be read."""
    if isinstance(exc, HTTPClientError):
        if exc.code == 404:
            return "the server has no GPU usage endpoint (hami-jupyter is not installed there)"
        if exc.code in (401, 403):
            return f"the server refused the service's token ({exc.code})"
        return f"the server answered {exc.code}"
    if isinstance(exc, (ValueError, KeyError, TypeError)):
        return "the server's answer is not a usage report"
    return f"the server cannot be reached: {exc}"
