"""The server's view of its GPU slice: configuration, region reads, GPU names.

:class:`SliceMonitor` is the one configurable object of the server extension
(``c.SliceMonitor.<trait>`` in ``jupyter_server_config.py``). It reads the
slice's limits from the server's environment (the spawner put them there),
the shared region written by libvgpu in the kernels, and, when NVML is there,
the GPUs' names; the handlers ask it for a report.
"""
from __future__ import annotations

import os
import struct
import time
from typing import Any, Mapping

from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Float, Unicode, default
from traitlets.config import LoggingConfigurable

from ..kernel_slice import REGION_ENV, server_limits
from ..kernel_slice import region_path as default_region_path
from ..region import RegionError, RegionSnapshot, read_region
from ..slice import CORES_ENV, MEMORY_ENV, DeviceLimit
from ..status import POLICY_ENV
from .driver import DriverView
from .usage import KernelInfo, LaunchClock, build_report

__all__ = ["SliceMonitor"]


class SliceMonitor(LoggingConfigurable):  # type: ignore[misc]
    """Reads this server's GPU slice for the REST API and the metrics."""

    region_path = Unicode(help="""The slice's shared region. Default: the one the kernels use,
        CUDA_DEVICE_MEMORY_SHARED_CACHE of the server's environment, else libvgpu's default
        (/tmp/libvgpu.<uid>.region).""").tag(config=True)

    @default("region_path")
    def _default_region_path(self) -> str:
        return default_region_path(os.environ)

    sample_interval = Float(1.0, help="""Seconds between reads of the region in the background,
        which tell when each kernel last launched GPU work even while nobody is looking;
        0 turns them off (then only requests read the region).""").tag(config=True)

    driver_figures = Bool(True, help="""Ask the GPU driver (NVML) for each GPU's name and the memory
        it attributes to each process of the slice (what nvidia-smi shows), beside the slice's own
        figures. Without NVML both are absent.""").tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.launches = LaunchClock()
        self.driver = DriverView()
        self._sampler: PeriodicCallback | None = None
        self._env_facts: tuple[bool, bool, list[DeviceLimit], str | None, str] | None = None

    # ---- the slice's configuration, from the server's environment -------------

    def has_slice(self, env: Mapping[str, str]) -> bool:
        """A server in a slice has its limits or region in its env, or a region already.

        A CPU server (no GPU visible) has none, whatever a region file says.
        """
        if env.get("CUDA_VISIBLE_DEVICES") == "":
            return False
        return self.configured(env) or os.path.lexists(self.region_path)

    @staticmethod
    def configured(env: Mapping[str, str]) -> bool:
        return any(value and (key == REGION_ENV or key.startswith((MEMORY_ENV, CORES_ENV)))
                   for key, value in env.items())

    # ---- reading --------------------------------------------------------------------

    def read(self) -> tuple[RegionSnapshot | None, str | None]:
        """(snapshot, None), or (None, reason); (None, None) when there is no region yet."""
        try:
            snapshot = read_region(self.region_path)
        except RegionError as exc:
            if not os.path.lexists(self.region_path):
                return None, None
            return None, str(exc)
        except (OSError, ValueError, struct.error) as exc:  # never a 500 for a bad file
            return None, f"cannot read the shared region {self.region_path}: {exc}"
        self.launches.observe(snapshot, time.time())
        return snapshot, None

    def report(self, kernels: Mapping[str, KernelInfo], env: Mapping[str, str] | None = None) -> dict[str, Any]:
        if env is None:
            # The server's own env does not change while it runs: read it once.
            if self._env_facts is None:
                self._env_facts = self._facts(os.environ)
            cpu_server, configured, limits, config_error, policy = self._env_facts
        else:
            cpu_server, configured, limits, config_error, policy = self._facts(env)
        has_slice = not cpu_server and (configured or os.path.lexists(self.region_path))
        snapshot, error = self.read() if has_slice else (None, None)
        error = error or config_error
        return build_report(region_path=self.region_path, limits=limits, policy=policy, has_slice=has_slice,
                            snapshot=snapshot, region_error=error, kernels=kernels,
                            device_names=self.driver.names() if snapshot and self.driver_figures else {},
                            driver_memory=self.driver.process_memory() if snapshot and self.driver_figures else {},
                            launches=self.launches)

    @classmethod
    def _facts(cls, env: Mapping[str, str]) -> tuple[bool, bool, list[DeviceLimit], str | None, str]:
        """(CPU server, slice configured, limits, why the limits are unreadable, policy)."""
        try:
            limits, error = server_limits(env), None
        except ValueError as exc:
            limits, error = [], f"this server's slice is misconfigured: {exc}"
        policy = (env.get(POLICY_ENV) or "default").lower()
        return env.get("CUDA_VISIBLE_DEVICES") == "", cls.configured(env), limits, error, policy

    # ---- background sampling ----------------------------------------------------------

    def start(self) -> None:
        if self.sample_interval > 0 and self._sampler is None and self.has_slice(os.environ):
            self._sampler = PeriodicCallback(self._sample, self.sample_interval * 1000)
            self._sampler.start()

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None

    def _sample(self) -> None:
        self.read()
