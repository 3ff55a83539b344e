"""The usage report in Prometheus's text format.

Made from the same document as ``GET api/vgpu/v1/usage``, so the two never
disagree; base units (``_bytes``, ``_ratio``) and one series per device and
per kernel, labelled with the device's UUID, the kernel id and its notebook.
"""
from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "hami_vgpu_"
_KERNEL_LABELS = ["device_uuid", "kernel_id", "notebook", "pid"]

_STATUS = ("ok", "no_usage_yet", "region_error", "no_slice")


class _ReportCollector(Collector):
    def __init__(self, report: dict[str, Any]):
        self.report = report

    def collect(self) -> Iterable[Metric]:
        report = self.report
        status = GaugeMetricFamily(_PREFIX + "status", "1 for the state the slice's region is in",
                                   labels=["status"])
        for name in _STATUS:
            status.add_metric([name], 1.0 if report["status"] == name else 0.0)
        yield status

        gauges = {
            "memory_used_bytes": "VRAM held by the slice's processes on the device",
            "memory_limit_bytes": "the slice's VRAM limit on the device (absent: no limit)",
            "compute_used_ratio": "compute used by the slice on the device over the last second (1 = the whole GPU)",
            "compute_cap_ratio": "the slice's compute cap on the device (absent: no cap)",
        }
        for key, doc in gauges.items():
            family = GaugeMetricFamily(_PREFIX + key, doc, labels=["device_uuid", "device_name"])
            for dev in report["devices"]:
                if dev[key] is not None:
                    family.add_metric([dev["uuid"], dev["name"] or ""], float(dev[key]))
            yield family

        per_kernel = {
            "kernel_memory_used_bytes": ("memory_used_bytes", "VRAM the kernel's process holds on the device"),
            "kernel_memory_limit_bytes": ("memory_limit_bytes", "the kernel's own VRAM cap (absent: the slice's)"),
            "kernel_driver_memory_used_bytes": ("driver_memory_used_bytes",
                                                "VRAM the GPU driver attributes to the kernel's process (nvidia-smi)"),
            "kernel_compute_used_ratio": ("compute_used_ratio", "compute the kernel's process used over the last second"),
            "kernel_compute_cap_ratio": ("compute_cap_ratio", "the kernel's own compute cap (absent: the slice's)"),
        }
        for name, (key, doc) in per_kernel.items():
            family = GaugeMetricFamily(_PREFIX + name, doc, labels=_KERNEL_LABELS)
            for kernel, use in _kernel_devices(report):
                if use[key] is not None:
                    family.add_metric(_kernel_labels(kernel, use), float(use[key]))
            yield family
        launches = CounterMetricFamily(_PREFIX + "kernel_launches", "GPU kernel launches of the kernel's process",
                                       labels=_KERNEL_LABELS)
        for kernel, use in _kernel_devices(report):
            launches.add_metric(_kernel_labels(kernel, use), float(use["launches"]))
        yield launches
        idle = GaugeMetricFamily(_PREFIX + "kernel_idle_seconds", "seconds since the kernel last executed something",
                                 labels=["kernel_id", "notebook", "pid"])
        for kernel in report["kernels"]:
            if kernel["idle_seconds"] is not None:
                idle.add_metric([kernel["kernel_id"] or kernel["identity"], kernel["path"] or "", str(kernel["pid"])],
                                kernel["idle_seconds"])
        yield idle
        yield from _idle_memory(report)


def _idle_memory(report: dict[str, Any]) -> Iterable[Metric]:
    """VRAM held by kernels idle past the policy's threshold: per GPU, per kernel, and the slice's."""
    idle = report.get("idle")
    if not idle:
        return
    names = {dev["uuid"]: dev["name"] or "" for dev in report["devices"]}
    per_device = GaugeMetricFamily(_PREFIX + "idle_memory_bytes",
                                   "VRAM held on the device by the slice's kernels idle past the idle threshold",
                                   labels=["device_uuid", "device_name"])
    for dev in report["devices"]:
        per_device.add_metric([dev["uuid"], names[dev["uuid"]]], float(idle["devices"].get(dev["uuid"], 0)))
    yield per_device
    whole = GaugeMetricFamily(_PREFIX + "slice_idle_memory_bytes",
                              "VRAM held by the slice's kernels idle past the idle threshold, all devices")
    whole.add_metric([], float(idle["memory_bytes"]))
    yield whole
    threshold = GaugeMetricFamily(_PREFIX + "idle_threshold_seconds",
                                  "seconds without execution or GPU launch after which a kernel counts as idle")
    threshold.add_metric([], float(idle["policy"]["idle_after_seconds"]))
    yield threshold
    marked = GaugeMetricFamily(_PREFIX + "kernel_idle", "1 for a kernel idle past the idle threshold",
                               labels=["kernel_id", "notebook", "pid"])
    for kernel in report["kernels"]:
        if kernel.get("kernel_id"):
            marked.add_metric([kernel["kernel_id"], kernel["path"] or "", str(kernel["pid"])],
                              1.0 if kernel.get("idle") else 0.0)
    yield marked


def _kernel_devices(report: dict[str, Any]) -> Iterable[tuple[dict[str, Any], dict[str, Any]]]:
    for kernel in report["kernels"]:
        for use in kernel["devices"]:
            yield kernel, use


def _kernel_labels(kernel: dict[str, Any], use: dict[str, Any]) -> list[str]:
    # A process of no kernel of this server still counts: named by its identity in the region.
    return [use["uuid"], kernel["kernel_id"] or kernel["identity"], kernel["path"] or "", str(kernel["pid"])]


def render(report: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ReportCollector(report))
    return generate_latest(registry)
