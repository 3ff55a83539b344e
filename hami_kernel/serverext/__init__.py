"""The jupyter-server extension: this server's GPU slice over REST and for Prometheus.

Enabled on install (``etc/jupyter/jupyter_server_config.d/hami_kernel.json``
in the wheel). It serves, under the server's base URL:

- ``GET api/vgpu/v1/usage``: the slice, its devices and every kernel in it (JSON);
- ``POST api/vgpu/v1/kernels/{kernel_id}/slice``: re-divide a kernel's share;
- ``POST api/vgpu/v1/kernels/{kernel_id}/reclaim``: one step of the idle-memory
  policy for a kernel, by the caller's rule (the hub's service uses it);
- ``GET api/vgpu/v1/metrics``: the same figures in Prometheus's text format.

The idle-memory policy (``c.IdlePolicy``, :mod:`.reclaim`) runs in the server
and warns about, or shuts down, kernels that hold VRAM while idle.

The JupyterLab status bar and panel (``labextension/``) read the first.
"""
from __future__ import annotations

import os
from typing import Any

from .monitor import SliceMonitor

__all__ = ["SliceMonitor"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "hami_kernel.serverext"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .handlers import handlers
    from .kernels import kernel_infos
    from .reclaim import IdlePolicy

    monitor = SliceMonitor(parent=serverapp, log=serverapp.log)

    async def report() -> dict[str, Any]:
        return monitor.report(kernel_infos(serverapp.kernel_manager, serverapp.session_manager))

    policy = IdlePolicy(parent=serverapp, log=serverapp.log, report=report, kernel_manager=serverapp.kernel_manager,
                        read_region=lambda: monitor.read()[0], region_path=monitor.region_path)
    serverapp.web_app.settings["hami_slice_monitor"] = monitor
    serverapp.web_app.settings["hami_idle_policy"] = policy
    serverapp.web_app.add_handlers(".*$", handlers(serverapp.web_app.settings["base_url"]))
    monitor.start()
    if monitor.has_slice(os.environ):
        policy.start()  # a CPU server has no GPU memory to look after
    serverapp.log.info("hami_kernel.serverext: GPU slice usage at %sapi/vgpu/v1/usage (region %s)",
                       serverapp.web_app.settings["base_url"], monitor.region_path)
