"""The service's page and its Prometheus output, both made from the ``api/idle`` document."""
from __future__ import annotations

import html
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hami_kernel.idle_view import format_bytes, format_seconds

__all__ = ["render_page", "render_metrics"]

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
td.n{text-align:right}tr.idle td{background:#fff3e0}.muted{color:#777}"""


def _h(value: object) -> str:
    return html.escape(str(value))


def _server(entry: dict[str, Any]) -> str:
    return entry["user"] + (f"/{entry['server']}" if entry["server"] else "")


def render_page(doc: dict[str, Any], policy: dict[str, Any], actions: list[dict[str, Any]]) -> str:
    rule = doc["rule"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='30'>"
             f"<title>Idle GPU memory</title><style>{_STYLE}</style></head><body>",
             "<h1>Idle GPU memory</h1>",
             f"<p>{_h(format_bytes(doc['idle_memory_bytes']))} of the {_h(format_bytes(doc['memory_bytes']))} "
             f"held on the hub's GPUs is held by kernels idle for {_h(format_seconds(rule['idle_after_seconds']))} "
             f"or more (no cell run, no GPU launch). Hub policy: {_h(_policy_text(policy))}.</p>",
             "<h2>Who holds it</h2><table id='servers'><thead><tr><th>user / server</th><th>GPU memory</th>"
             "<th>idle</th><th>kernels holding memory</th></tr></thead><tbody>"]
    for entry in doc["servers"]:
        kernels = "".join(
            f"<li>{_h(k['path'] or k['kernel_id'][:8])}: {_h(format_bytes(k['memory_bytes']))}, "
            f"{_h(k['execution_state'] or '?')}, idle {_h(format_seconds(k['idle_seconds'] or 0))}"
            f"{' <b>idle</b>' if k['idle'] else ''}</li>" for k in entry["kernels"])
        detail = f"<ul>{kernels}</ul>" if kernels else f"<span class='muted'>{_h(entry['message'] or 'none')}</span>"
        parts.append(f"<tr class='{'idle' if entry['idle_memory_bytes'] else ''}' data-user='{_h(entry['user'])}'>"
                     f"<td>{_h(_server(entry))}</td><td class='n'>{_h(format_bytes(entry['memory_bytes']))}</td>"
                     f"<td class='n'>{_h(format_bytes(entry['idle_memory_bytes']))}</td><td>{detail}</td></tr>")
    parts.append("</tbody></table><h2>GPUs and their slices</h2>")
    for gpu in doc["gpus"]:
        parts.append(f"<h3>{_h(gpu['name'] or 'GPU')} <span class='muted'>{_h(gpu['uuid'])}</span></h3>"
                     f"<p>{_h(format_bytes(gpu['memory_used_bytes']))} held, "
                     f"{_h(format_bytes(gpu['idle_memory_bytes']))} of it idle</p>"
                     "<table><thead><tr><th>slice (user / server)</th><th>limit</th><th>held</th><th>idle</th>"
                     "</tr></thead><tbody>")
        for s in gpu["slices"]:
            limit = "whole GPU" if s["memory_limit_bytes"] is None else format_bytes(s["memory_limit_bytes"])
            parts.append(f"<tr><td>{_h(_server(s))}</td><td class='n'>{_h(limit)}</td>"
                         f"<td class='n'>{_h(format_bytes(s['memory_used_bytes']))}</td>"
                         f"<td class='n'>{_h(format_bytes(s['idle_memory_bytes']))}</td></tr>")
        parts.append("</tbody></table>")
    if not doc["gpus"]:
        parts.append("<p class='muted'>No server holds GPU memory.</p>")
    if actions:
        parts.append("<h2>What the hub policy did</h2><ul>" + "".join(
            f"<li>{_h(_server(a))}, kernel {_h(a['kernel_id'][:8])}: {_h(a['state'])}</li>"
            for a in reversed(actions)) + "</ul>")
    parts.append("</body></html>")
    return "".join(parts)


def _policy_text(policy: dict[str, Any]) -> str:
    if policy["action"] == "off":
        return "off (only shown here)"
    what = "warn the user" if policy["action"] == "warn" else \
        f"shut the kernel down {format_seconds(policy['grace_seconds'])} after warning the user"
    return f"{what} when a kernel holds {format_bytes(policy['min_memory_bytes'])} or more idle"


class _FleetCollector(Collector):
    def __init__(self, doc: dict[str, Any]):
        self.doc = doc

    def collect(self) -> list[Metric]:
        per_gpu = GaugeMetricFamily("hami_vgpu_hub_gpu_idle_memory_bytes",
                                    "VRAM held on the GPU by idle kernels, all slices", labels=["device_uuid", "device_name"])
        held = GaugeMetricFamily("hami_vgpu_hub_gpu_memory_used_bytes", "VRAM held on the GPU by all slices",
                                 labels=["device_uuid", "device_name"])
        per_slice = GaugeMetricFamily("hami_vgpu_hub_slice_idle_memory_bytes",
                                      "VRAM held on the GPU by the slice's idle kernels",
                                      labels=["user", "server", "device_uuid"])
        for gpu in self.doc["gpus"]:
            labels = [gpu["uuid"], gpu["name"] or ""]
            per_gpu.add_metric(labels, float(gpu["idle_memory_bytes"]))
            held.add_metric(labels, float(gpu["memory_used_bytes"]))
            for s in gpu["slices"]:
                per_slice.add_metric([s["user"], s["server"], gpu["uuid"]], float(s["idle_memory_bytes"]))
        return [per_gpu, held, per_slice]


def render_metrics(doc: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FleetCollector(doc))
    return generate_latest(registry)
