"""The ``%vgpu`` line magic: ``%load_ext hami_kernel`` (or ``hami_kernel.ipython``).

Only argument handling and output live here; what is shown comes from
:mod:`hami_kernel.status` and :mod:`hami_kernel.status_text`, the live view from :mod:`hami_kernel.watch`, and
re-dividing from :mod:`hami_kernel.redivide`.
"""
from __future__ import annotations

import os
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from . import backstop_events, check, status, status_text, watch

__all__ = ["load_ipython_extension", "unload_ipython_extension", "VgpuMagics", "USAGE"]

USAGE = """\
%vgpu                          this kernel's GPU slice: limits, usage, the slice's kernels
%vgpu check                    is libvgpu active in this kernel, with which limits?
%vgpu events                   what the node's backstop found and did about this slice (last 20)
%vgpu set memory=2GiB cores=20 change this kernel's VRAM cap and/or compute share
                               (or --memory 2GiB --cores 20; 0 lifts this kernel's own cap)
%vgpu watch [--interval 1.0]   live bars of VRAM and compute, refreshed every interval seconds
                               (terminal IPython prints a line per refresh: add --count 5 to stop
                               after 5, else Ctrl-C ends it)
%vgpu watch stop               stop the live view and close it"""

_SET_NAMES = ("memory", "cores")
_MIN_INTERVAL = 0.1  # libvgpu refreshes usage twice a second: faster shows nothing new


def _options(command: str, tokens: list[str], names: tuple[str, ...]) -> dict[str, str]:
    """name=value and --name value / --name=value, each name at most once."""
    values: dict[str, str] = {}
    rest = iter(tokens)
    for token in rest:
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            if not eq:
                following = next(rest, None)
                if following is None:
                    raise UsageError(f"vgpu {command}: --{name} needs a value")
                value = following
        elif "=" in token:
            name, _, value = token.partition("=")
        else:
            raise UsageError(f"vgpu {command}: unexpected {token!r}; usage:\n{USAGE}")
        if name not in names:
            raise UsageError(f"vgpu {command}: unknown option {name!r} (expected {', '.join(names)})")
        if name in values:
            raise UsageError(f"vgpu {command}: {name} is given twice")
        values[name] = value
    return values


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _show() -> None:
    from IPython.display import display

    snapshot = status.gather()
    # The backstop's latest events, if it ever acted on this slice: a process killed matters more than the bars.
    events = backstop_events.read_events(limit=3)
    text = "\n".join(t for t in (status_text.format_text(snapshot), backstop_events.format_text(events)) if t)
    # Both forms always: a notebook renders the HTML, a terminal prints the text.
    display({"text/plain": text, "text/html": status_text.format_html(snapshot) + backstop_events.format_html(events)},
            raw=True)


def _events() -> None:
    events = backstop_events.read_events(limit=20)
    print(backstop_events.format_text(events) or "vgpu: the node's backstop has reported nothing about this slice")


def _check() -> None:
    print(check.format_check(check.check()))


def _set(tokens: list[str]) -> None:
    values = _options("set", tokens, _SET_NAMES)
    if not values:
        raise UsageError("vgpu set: nothing to set: give memory=SIZE and/or cores=PERCENT")
    # Magic arguments are strings; set_kernel_slice lifts a cap with "" or 0.
    args: dict[str, Any] = {k: (0 if v.strip() == "0" else v) for k, v in values.items()}
    try:
        from .redivide import set_kernel_slice  # lazily: %vgpu works without it
    except ImportError as exc:
        raise UsageError(f"vgpu set: re-dividing is not available in this installation ({exc})") from None
    try:
        line = set_kernel_slice(os.environ.get(status.IDENTITY_ENV, ""), **args)
    except ValueError as exc:
        raise UsageError(f"vgpu set: {_one_line(exc)}") from None
    print(line)


def _watch(shell: Any, tokens: list[str]) -> None:
    if tokens == ["stop"]:
        print("vgpu watch: stopped" if watch.stop() else "vgpu watch: no live view to stop")
        return
    values = _options("watch", tokens, ("interval", "count"))
    try:
        interval = float(values.get("interval", "1.0"))
        count = int(values["count"]) if "count" in values else None
    except ValueError:
        raise UsageError("vgpu watch: --interval takes seconds (such as 0.5) and --count a whole number") from None
    if not _MIN_INTERVAL <= interval <= 3600:
        raise UsageError(f"vgpu watch: --interval must be from {_MIN_INTERVAL} to 3600 seconds")
    if count is not None and count < 1:
        raise UsageError("vgpu watch: --count must be at least 1")
    if watch.widgets_usable(shell):
        from IPython.display import display

        display(watch.start(interval, count).widget)
    else:
        watch.watch_text(interval, count)


@magics_class
class VgpuMagics(Magics):
    @line_magic
    def vgpu(self, line: str) -> None:
        """This kernel's GPU slice. Usage:

        %vgpu | %vgpu check | %vgpu events | %vgpu set memory=2GiB cores=20
        %vgpu watch [--interval 1.0] | %vgpu watch stop
        """
        try:
            tokens = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"vgpu: {exc}") from None
        command, rest = (tokens[0], tokens[1:]) if tokens else ("", [])
        if command == "":
            _show()
        elif command in ("-h", "--help", "help"):
            print(USAGE)
        elif command == "check" and not rest:
            _check()
        elif command == "events" and not rest:
            _events()
        elif command == "set":
            _set(rest)
        elif command == "watch":
            _watch(self.shell, rest)
        else:
            raise UsageError(f"vgpu: unknown subcommand {line.strip()!r}; usage:\n{USAGE}")


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(VgpuMagics)


def unload_ipython_extension(ipython: Any) -> None:
    watch.stop()
    ipython.magics_manager.magics["line"].pop("vgpu", None)
