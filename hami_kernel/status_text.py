"""How a slice's status reads: the text and HTML of ``%vgpu``, and the one line
of its live view. Everything here is a pure function of :mod:`hami_kernel.status`'s
dataclasses, so it is shown the same wherever it is gathered.
"""
from __future__ import annotations

import html
import time
from typing import Any, Mapping

from .idle_view import idle_cell, policy_line
from .slice import format_memory
from .status import _UUID_RE, NO_REGION, NOT_APPLIED, DeviceStatus, KernelUsage, SliceStatus, describe_configured

__all__ = ["format_text", "format_html", "status_line", "idle_suffix", "memory_text", "share_text", "cap_text",
           "no_devices_reason", "short_identity", "short_uuid"]


def short_identity(identity: str) -> str:
    """A kernel id as Jupyter shows it (first 8 hex digits); other names up to 16 characters."""
    if not identity:
        return "(none)"
    if _UUID_RE.fullmatch(identity):
        return identity[:8]
    return identity if len(identity) <= 16 else identity[:15] + "…"


def short_uuid(uuid: str) -> str:
    """'GPU-face0000' for 'GPU-face0000-1020-...': enough to tell a machine's GPUs apart."""
    return "-".join(uuid.split("-")[:2])


def memory_text(nbytes: int | None, none: str = "no limit") -> str:
    if nbytes is None:
        return none
    return "0 B" if nbytes == 0 else format_memory(nbytes)


def share_text(share: float) -> str:
    return f"{share * 100:.1f}%"


def cap_text(percent: int | None, none: str = "none") -> str:
    return none if percent is None else f"{percent}%"


def _who(status: SliceStatus) -> str:
    name = f"kernel {short_identity(status.identity)}" if status.identity else "this process"
    return f"{name} (pid {status.pid})"


def _policy_note(policy: str) -> str:
    return {"disable": " (compute caps are off)", "force": " (compute caps are strict)"}.get(policy, "")


def no_devices_reason(status: SliceStatus) -> str:
    if status.no_gpu:
        return f"no GPU slice: {status.no_gpu}"
    if status.region_missing:
        return NO_REGION
    if status.region_error:
        return f"region unreadable: {status.region_error}"
    return "no GPU registered in the slice yet: libvgpu registers them at the first CUDA call"


def _device_lines(dev: DeviceStatus, policy: str, idle: Mapping[str, Any] | None = None) -> list[str]:
    lines = [f"{short_uuid(dev.uuid)}  ({dev.uuid})"]
    if dev.memory_limit is None:
        lines.append(f"  VRAM     slice: no limit, {memory_text(dev.memory_used)} used")
    else:
        over = " (over the limit, which was lowered: allocations fail until memory is freed)" \
            if dev.memory_used > dev.memory_limit else ""
        lines.append(f"  VRAM     slice {memory_text(dev.memory_limit)}: {memory_text(dev.memory_used)} used, "
                     f"{memory_text(dev.memory_free)} free{over}")
    own = dev.own
    if own is None:
        lines.append("           this kernel: nothing yet (it has not used this GPU)")
    else:
        procs = f" in {own.processes} processes" if own.processes > 1 else ""
        # A cap is per process, so only a single process can be said to be over it.
        over = " (over its cap: its allocations fail until it frees memory)" \
            if own.processes == 1 and own.memory_limit is not None and own.memory_used > own.memory_limit else ""
        lines.append(f"           this kernel: {memory_text(own.memory_used)} used{procs}, "
                     f"cap {memory_text(own.memory_limit, 'none (the slice)')}{over}")
    lines.append(f"  compute  slice cap {cap_text(dev.sm_limit)}, this kernel's cap "
                 f"{cap_text(own.sm_limit if own else None, 'none')}, policy {policy}{_policy_note(policy)}")
    if own is not None:
        lines.append(f"           this kernel used {share_text(own.sm_share)} of the GPU over the last second")
    lines.append(_kernel_table(dev.kernels, idle))
    return lines


def _kernel_table(kernels: tuple[KernelUsage, ...], idle: Mapping[str, Any] | None = None) -> str:
    head: tuple[str, ...] = ("kernel", "pid", "VRAM", "compute", "launches")
    rows = [(short_identity(k.identity) + ("*" if k.mine else ""), str(k.pid), memory_text(k.memory_used),
             share_text(k.sm_share), str(k.launches)) for k in kernels]
    if idle is not None:  # the server tells how long each kernel has done nothing
        head += ("idle",)
        rows = [(*r, idle_cell(idle, k.identity)) for r, k in zip(rows, kernels)]
    if not rows:
        return "  kernels  none running on this GPU"
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    body = [fmt.format(*head)] + [fmt.format(*r) for r in rows]
    return "\n".join(("  kernels  " if i == 0 else "           ") + line for i, line in enumerate(body))


def format_text(status: SliceStatus) -> str:
    """The full status as plain text (terminal IPython, and the notebook's text/plain)."""
    if status.no_gpu:
        return f"vgpu: {no_devices_reason(status)}"
    lines = [f"vgpu: {_who(status)}; region {status.region_path}"]
    if not status.loaded:
        lines.append("warning: " + NOT_APPLIED)
    if not status.devices:
        lines.append(no_devices_reason(status))
        lines.append("configured limits (from the environment):")
        lines += [f"  {what}: {value}" for what, value, _ in describe_configured(status.configured)]
        lines += [f"  problem: {p}" for p in status.configured.problems]
        return "\n".join(lines)
    for dev in status.devices:
        lines += _device_lines(dev, status.policy, status.idle)
    notes = []
    if any(k.mine for d in status.devices for k in d.kernels):
        notes.append("* = this kernel")
    notes.append("compute = share of the GPU over the last second")
    lines.append("; ".join(notes))
    if policy_line(status.idle):
        lines.append(str(policy_line(status.idle)))
    return "\n".join(lines)


def _h(text: object) -> str:
    return html.escape(str(text))


def _html_kernels(kernels: tuple[KernelUsage, ...], idle: Mapping[str, Any] | None = None) -> str:
    names = ("kernel", "pid", "VRAM", "compute (last s)", "launches") + (("idle",) if idle is not None else ())
    head = "".join(f"<th>{h}</th>" for h in names)
    bold, mark = ' style="font-weight:bold"', " (this kernel)"
    rows = "".join(
        f"<tr{bold if k.mine else ''}>"
        f"<td title='{_h(k.identity)}'>{_h(short_identity(k.identity))}{mark if k.mine else ''}</td>"
        f"<td>{k.pid}</td><td>{_h(memory_text(k.memory_used))}</td><td>{_h(share_text(k.sm_share))}</td>"
        f"<td>{k.launches}</td>" + (f"<td>{_h(idle_cell(idle, k.identity))}</td>" if idle is not None else "")
        + "</tr>" for k in kernels)
    line = policy_line(idle)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>" + (f"<p>{_h(line)}</p>" if line else "")


def _html_rows(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th style='text-align:left'>{_h(what)}</th><td>{_h(value)}</td></tr>" for what, value in rows)
    return f"<table>{body}</table>"


def format_html(status: SliceStatus) -> str:
    """The same content as :func:`format_text`, as tables for a notebook."""
    if status.no_gpu:
        return f"<div class='hami-vgpu'><p><b>vgpu</b>: {_h(no_devices_reason(status))}</p></div>"
    parts = [f"<div class='hami-vgpu'><p><b>vgpu</b>: {_h(_who(status))}; "
             f"region <code>{_h(status.region_path)}</code></p>"]
    if not status.loaded:
        parts.append(f"<p style='color:#b00'><b>warning</b>: {_h(NOT_APPLIED)}</p>")
    if not status.devices:
        limits = _html_rows([(what, value) for what, value, _ in describe_configured(status.configured)])
        problems = "".join(f"<li>{_h(p)}</li>" for p in status.configured.problems)
        parts.append(f"<p>{_h(no_devices_reason(status))}</p><p>configured limits (from the environment):</p>"
                     f"{limits}" + (f"<ul>{problems}</ul>" if problems else ""))
    for dev in status.devices:
        own = dev.own
        rows: list[tuple[str, str]] = [
            ("VRAM, slice", f"{memory_text(dev.memory_used)} used of {memory_text(dev.memory_limit)}"
             + ("" if dev.memory_free is None else f", {memory_text(dev.memory_free)} free")),
            ("VRAM, this kernel", "nothing yet" if own is None else
             f"{memory_text(own.memory_used)} used, cap {memory_text(own.memory_limit, 'none (the slice)')}"),
            ("compute, slice cap", f"{cap_text(dev.sm_limit)}; policy {status.policy}{_policy_note(status.policy)}"),
            ("compute, this kernel", "nothing yet" if own is None else
             f"{share_text(own.sm_share)} of the GPU in the last second"
             + f"; cap {cap_text(own.sm_limit)}"),
        ]
        parts.append(f"<h4 title='{_h(dev.uuid)}'>{_h(short_uuid(dev.uuid))}</h4>{_html_rows(rows)}"
                     + _html_kernels(dev.kernels, status.idle))
    parts.append("</div>")
    return "".join(parts)


def status_line(status: SliceStatus) -> str:
    """One line per refresh, for ``%vgpu watch`` where no widgets can be shown."""
    stamp = time.strftime("%H:%M:%S", time.localtime(status.taken_at))
    if not status.devices:
        return f"{stamp} {no_devices_reason(status)}"
    parts = []
    for dev in status.devices:
        mine = dev.own.memory_used if dev.own else 0
        share = dev.own.sm_share if dev.own else None
        parts.append(f"{short_uuid(dev.uuid)} VRAM kernel {memory_text(mine)} (cap {memory_text(dev.own_memory_cap)}), "
                     f"slice {memory_text(dev.memory_used)} of {memory_text(dev.memory_limit)}; "
                     f"compute {share_text(share)} (cap {cap_text(dev.own_sm_cap)})")
    return f"{stamp} " + " | ".join(parts) + idle_suffix(status)


def idle_suffix(status: SliceStatus) -> str:
    """"; idle 40 s IDLE" where the server tells this kernel's idleness (its idle policy runs), else ""."""
    if status.idle is None or not status.identity:
        return ""
    return f"; idle {idle_cell(status.idle, status.identity)}"
