"""hami-idle-service: a JupyterHub service that shows who holds GPU memory idle, hub-wide.

Admins open it at ``/services/<name>/`` (a page) or ask ``/services/<name>/api/idle``
(JSON); everyone else is refused. It reads every running server's
``api/vgpu/v1/usage`` with its own service token, lists the kernels that hold
VRAM while idle, by user and by GPU (each GPU's slices, on a single machine),
exports the idle memory for Prometheus, and can apply an idle policy
hub-wide: each server then warns its user or shuts the kernel down, exactly
as its own ``c.IdlePolicy`` would. :func:`service_config` gives the lines
for ``jupyterhub_config.py``.
"""
from __future__ import annotations

from typing import Any

__all__ = ["service_config"]

SCOPES = ["list:users", "read:servers", "access:servers"]


def service_config(name: str = "vgpu-idle", port: int = 10101, args: list[str] | None = None,
                   command: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(service, role) for ``c.JupyterHub.services`` and ``c.JupyterHub.load_roles``.

    The role lets the service list the running servers and read their usage
    (and, with a policy, ask them to warn or shut down); who may open the
    service's page is decided by the service itself: admins only.
    """
    import sys

    service = {"name": name, "url": f"http://127.0.0.1:{port}", "oauth_no_confirm": True,
               "command": command or [sys.executable, "-m", "hami_idle", *(args or [])]}
    role = {"name": f"{name}-service", "services": [name], "scopes": list(SCOPES)}
    return service, role
