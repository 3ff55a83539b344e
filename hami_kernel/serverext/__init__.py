"""The jupyter-server extension: this server's GPU slice over REST and for Prometheus.

Enabled on install (``etc/jupyter/jupyter_server_config.d/hami_kernel.json``
in the wheel). It serves, under the server's base URL:

- ``GET api/vgpu/v1/usage``: the slice, its devices and every kernel in it (JSON);
- ``POST api/vgpu/v1/kernels/{kernel_id}/slice``: re-divide a kernel's share;
- ``GET api/vgpu/v1/metrics``: the same figures in Prometheus's text format.

The JupyterLab status bar and panel (``labextension/``) read the first.
"""
from __future__ import annotations

from typing import Any

from .monitor import SliceMonitor

__all__ = ["SliceMonitor"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "hami_kernel.serverext"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .handlers import handlers

    monitor = SliceMonitor(parent=serverapp, log=serverapp.log)
    serverapp.web_app.settings["hami_slice_monitor"] = monitor
    serverapp.web_app.add_handlers(".*$", handlers(serverapp.web_app.settings["base_url"]))
    monitor.start()
    serverapp.log.info("hami_kernel.serverext: GPU slice usage at %sapi/vgpu/v1/usage (region %s)",
                       serverapp.web_app.settings["base_url"], monitor.region_path)
