"""The idle-memory policy of one server: warn about, or shut down, kernels that hold VRAM idle.

:class:`IdlePolicy` (``c.IdlePolicy.<trait>`` in ``jupyter_server_config.py``)
looks at the server's kernels every ``check_interval`` seconds. A kernel that
holds at least ``min_memory`` and has been idle (not executing, no cell run,
no GPU launch) for ``idle_after`` seconds is, by ``action``:

- ``warn``: announced once per idle spell (a notification in JupyterLab);
- ``shutdown``: announced with the time it will be shut down, ``grace``
  seconds later; if by then it is still idle and not executing it is shut
  down, and once its memory has left the slice the user is told how much
  came back. Any execution or GPU launch meanwhile calls it off.

A kernel that is executing is never touched: the state is read again from the
kernel manager just before the shutdown, with nothing awaited in between.
The hub's service (``hami_idle``) drives the same steps with its own rule
through ``POST api/vgpu/v1/kernels/{id}/reclaim``.

What happened is kept as *notices* in the usage report, which the
JupyterLab extension polls and shows as notifications; the policy and each
kernel's idleness are also written next to the region for ``%vgpu``.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import secrets
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from tornado.ioloop import PeriodicCallback
from traitlets import Enum, Float, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from ..idle_view import format_bytes, format_seconds, idle_file_path
from .idle import KernelIdle, Rule, idle_memory_by_device, kernel_idleness, min_memory_bytes

__all__ = ["ACTIONS", "IdlePolicy", "idle_file_path", "format_bytes", "format_seconds"]

ACTIONS = ("off", "warn", "shutdown")
MAX_NOTICES = 50


@dataclass
class _Pending:
    """A shutdown announced for ``deadline``, by ``source`` (this server's policy, or the hub's), under ``rule``."""

    deadline: float
    source: str
    rule: Rule
    grace: float


class IdlePolicy(LoggingConfigurable):  # type: ignore[misc]
    """Warns about, or shuts down, this server's kernels that hold GPU memory while idle."""

    action = Enum(ACTIONS, default_value="warn", help="""What to do about a kernel that holds at least
        min_memory of VRAM and has been idle for idle_after seconds: "off" (only show it as idle),
        "warn" (tell the user once per idle spell), or "shutdown" (tell the user, then shut it down
        grace seconds later unless it ran something meanwhile). A kernel that is executing is
        never shut down.""").tag(config=True)

    idle_after = Float(3600.0, help="""Seconds without executing anything and without launching GPU
        work after which a kernel counts as idle (it is marked idle in the panel and %vgpu, and its
        memory counts as idle in the metrics).""").tag(config=True)

    min_memory = Unicode("1GiB", help="""The VRAM a kernel must hold (all its processes and GPUs) for
        the action to apply, such as "1GiB" or "512MiB"; "0" for any amount.""").tag(config=True)

    grace = Float(300.0, help="""Seconds between the notification that an idle kernel will be shut
        down and the shutdown ("shutdown" action).""").tag(config=True)

    check_interval = Float(10.0, help="""Seconds between looks at the kernels; 0 turns the policy
        off altogether (no marks, no idle file, no notices).""").tag(config=True)

    shutdown_wait = Float(30.0, help="""Seconds to wait, after shutting a kernel down, for its
        memory to leave the slice before telling the user how much came back.""").tag(config=True)

    notice_seconds = Float(3600.0, help="""How long a notice (a warning, a shutdown and the memory it
        returned) stays in the usage report for JupyterLab to show.""").tag(config=True)

    @validate("min_memory")
    def _check_min_memory(self, proposal: Any) -> str:
        try:
            min_memory_bytes(proposal["value"])
        except ValueError as exc:
            raise TraitError(f"IdlePolicy.min_memory: {exc}") from None
        return str(proposal["value"]).strip()

    @validate("idle_after", "grace", "check_interval", "shutdown_wait", "notice_seconds")
    def _check_seconds(self, proposal: Any) -> float:
        if not proposal["value"] >= 0:
            raise TraitError(f"IdlePolicy.{proposal['trait'].name} must be 0 or more seconds")
        return float(proposal["value"])

    def __init__(self, *, report: Callable[[], Awaitable[dict[str, Any]]], kernel_manager: Any,
                 read_region: Callable[[], Any] | None = None, region_path: str | None = None,
                 clock: Callable[[], float] = time.time, **kwargs: Any):
        """``report``: a fresh usage report; ``read_region``: a region snapshot (or None)."""
        super().__init__(**kwargs)
        self._report = report
        self.kernel_manager = kernel_manager
        self._read_region = read_region
        self.region_path = region_path
        self.clock = clock
        self.notices: deque[dict[str, Any]] = deque(maxlen=MAX_NOTICES)
        self._nonce = secrets.token_hex(4)  # notice ids stay unique across restarts of the server
        self._count = 0
        self._pending: dict[str, _Pending] = {}  # kernel id -> announced shutdown
        self._warned: set[tuple[str, str]] = set()  # (source, kernel id) warned this idle spell
        self._lock = asyncio.Lock()
        self._loop: PeriodicCallback | None = None

    @property
    def rule(self) -> Rule:
        return Rule(self.idle_after, min_memory_bytes(self.min_memory))

    def policy_json(self) -> dict[str, Any]:
        return {"action": self.action, **self.rule.as_json(), "grace_seconds": self.grace}

    # ---- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        if self.check_interval > 0 and self._loop is None:
            self._loop = PeriodicCallback(self._tick, self.check_interval * 1000)
            self._loop.start()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None

    async def _tick(self) -> None:
        try:
            await self.check()
        except Exception:  # one bad look must not end the policy
            self.log.exception("hami_kernel idle policy: the check failed")

    async def check(self) -> list[dict[str, Any]]:
        """One look at every kernel; applies this server's action. Returns what was done."""
        report = await self._report()
        kernels = kernel_idleness(report)
        outcomes = []
        if self.action != "off":
            for kernel in list(kernels.values()):
                outcome = await self.consider(kernel, self.rule, self.action, self.grace, "server")
                outcomes.append(outcome)
                if outcome["state"] == "shut_down":
                    del kernels[kernel.kernel_id]
        # Shutdowns the hub announced are carried out (or called off) here, on time,
        # whether or not the hub's service asks again.
        for kid, pending in list(self._pending.items()):
            if pending.source != "server" and kid in kernels:
                outcome = await self.consider(kernels[kid], pending.rule, "shutdown", pending.grace, pending.source)
                outcomes.append(outcome)
                if outcome["state"] == "shut_down":
                    del kernels[kid]
        for kernel_id in [k for k, p in self._pending.items() if k not in kernels]:
            del self._pending[kernel_id]  # gone by other means (the user shut it down)
        self._warned = {(s, k) for s, k in self._warned if k in kernels}
        self.write_idle_file(kernels)
        return outcomes

    # ---- one kernel ------------------------------------------------------------------------------

    async def consider(self, kernel: KernelIdle, rule: Rule, action: str, grace: float,
                       source: str) -> dict[str, Any]:
        """One step of ``action`` for ``kernel`` under ``rule``: {"state": ..., ...}.

        States: ``not_idle`` (nothing to do; an announced shutdown is called
        off), ``warned`` (announced now, or already), ``pending`` (shutdown
        announced, not due yet, with ``deadline``), ``shut_down`` (with
        ``freed_bytes``), ``kept`` (due, but found executing at the last look),
        ``failed`` (the kernel manager could not shut it down).
        """
        async with self._lock:
            return await self._consider(kernel, rule, action, grace, source)

    async def _consider(self, kernel: KernelIdle, rule: Rule, action: str, grace: float,
                        source: str) -> dict[str, Any]:
        now = self.clock()
        kid = kernel.kernel_id
        pending = self._pending.get(kid)
        if not kernel.reclaimable(rule):
            self._warned.discard((source, kid))
            if pending is not None and pending.source == source:
                del self._pending[kid]
                self.notice("kept", kernel, source, f"{_name(kernel)} is active again: it will not be shut down.")
            return {"state": "not_idle"}
        idle = format_seconds(kernel.idle_seconds or 0)
        if action == "warn":
            if (source, kid) not in self._warned:
                self._warned.add((source, kid))
                self.notice("idle", kernel, source,
                            f"{_name(kernel)} has held {format_bytes(kernel.memory)} of GPU memory idle for {idle}. "
                            "Shut it down (or free the memory) if you no longer need it.")
            return {"state": "warned"}
        if pending is None:
            deadline = now + grace
            self._pending[kid] = _Pending(deadline, source, rule, grace)
            self.notice("warning", kernel, source,
                        f"{_name(kernel)} has held {format_bytes(kernel.memory)} of GPU memory idle for {idle}: "
                        f"it will be shut down in {format_seconds(grace)} unless it runs something.",
                        deadline=deadline, at=now)
            return {"state": "warned", "deadline": deadline}
        if now < pending.deadline:
            return {"state": "pending", "deadline": pending.deadline}
        return await self._shut_down(kernel, source)

    async def _shut_down(self, kernel: KernelIdle, source: str) -> dict[str, Any]:
        kid = kernel.kernel_id
        try:
            live = self.kernel_manager.get_kernel(kid)
        except KeyError:
            self._pending.pop(kid, None)
            return {"state": "not_idle"}
        # The last look, with nothing awaited between it and the shutdown call.
        if getattr(live, "execution_state", None) != "idle":
            del self._pending[kid]
            self.notice("kept", kernel, source, f"{_name(kernel)} is executing: it is not shut down.")
            return {"state": "kept"}
        self.log.info("hami_kernel idle policy (%s): shutting down kernel %s (%s), %s idle, holding %s",
                      source, kid, kernel.path or "no notebook", format_seconds(kernel.idle_seconds or 0),
                      format_bytes(kernel.memory))
        del self._pending[kid]
        try:
            result = self.kernel_manager.shutdown_kernel(kid)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # the kernel manager's trouble: said once, never a crash of the policy
            self.log.warning("hami_kernel idle policy: shutting down kernel %s failed: %s", kid, exc)
            self.notice("failed", kernel, source, f"{_name(kernel)} could not be shut down: {exc}")
            return {"state": "failed", "message": str(exc)}
        remaining = await self._wait_for_memory(kid)
        freed = max(kernel.memory - remaining, 0)
        message = (f"{_name(kernel)} was shut down after {format_seconds(kernel.idle_seconds or 0)} idle: "
                   f"{format_bytes(freed)} of GPU memory came back to the slice.")
        if remaining:
            message += f" {format_bytes(remaining)} is not back yet."
        self.notice("shutdown", kernel, source, message, freed=freed)
        return {"state": "shut_down", "freed_bytes": freed, "remaining_bytes": remaining}

    async def _wait_for_memory(self, kernel_id: str) -> int:
        """Bytes the kernel's processes still hold in the region once they left it, or at the timeout."""
        if self._read_region is None:
            return 0
        deadline = time.monotonic() + self.shutdown_wait
        while True:
            snapshot = self._read_region()
            held = 0 if snapshot is None else sum(
                use.memory_used for proc in snapshot.process(kernel_id) for use in proc.devices)
            if held == 0 or time.monotonic() >= deadline:
                return held
            await asyncio.sleep(0.2)

    # ---- what the user sees ------------------------------------------------------------------------

    def notice(self, kind: str, kernel: KernelIdle, source: str, message: str, *, deadline: float | None = None,
               freed: int | None = None, at: float | None = None) -> dict[str, Any]:
        self._count += 1
        entry = {"id": f"{self._nonce}-{self._count}", "time": self.clock() if at is None else at, "kind": kind,
                 "kernel_id": kernel.kernel_id, "path": kernel.path, "memory_bytes": kernel.memory,
                 "freed_bytes": freed, "deadline": deadline, "source": source, "message": message}
        self.notices.append(entry)
        self.log.info("hami_kernel idle policy: %s", message)
        return entry

    def annotate(self, report: dict[str, Any]) -> dict[str, Any]:
        """Adds the policy, the idle marks, the idle memory and the recent notices to a usage report."""
        now = self.clock()
        kernels = kernel_idleness(report)
        for entry in report.get("kernels") or []:
            idle = kernels.get(entry.get("kernel_id") or "")
            pending = self._pending.get(entry.get("kernel_id") or "")
            entry["idle"] = bool(idle and idle.is_idle(self.idle_after))
            entry["reclaim_at"] = pending.deadline if pending else None
        by_device = idle_memory_by_device(kernels.values(), self.idle_after)
        report["idle"] = {
            "policy": self.policy_json(),
            "memory_bytes": sum(by_device.values()),
            "devices": by_device,
            "notices": [n for n in self.notices if now - n["time"] <= self.notice_seconds],
        }
        return report

    def write_idle_file(self, kernels: dict[str, KernelIdle]) -> None:
        """The kernels' idleness beside the region, for ``%vgpu`` in the kernels (best effort)."""
        if not self.region_path or not os.path.isdir(os.path.dirname(self.region_path) or "."):
            return
        path = idle_file_path(self.region_path)
        doc = {"time": self.clock(), "policy": self.policy_json(), "kernels": {
            kid: {**k.as_json(), "idle": k.is_idle(self.idle_after),
                  "reclaim_at": self._pending[kid].deadline if kid in self._pending else None}
            for kid, k in kernels.items()}}
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".idle-")
            with os.fdopen(fd, "w") as out:
                json.dump(doc, out)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            self.log.debug("hami_kernel idle policy: cannot write %s: %s", path, exc)
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


def _name(kernel: KernelIdle) -> str:
    return f"The kernel of {kernel.path}" if kernel.path else f"Kernel {kernel.kernel_id[:8]}"
