"""``%vgpu watch``: this kernel's slice, live, as ipywidgets bars.

Per GPU of the slice there are three bars, each with its numbers beside it:
the VRAM this kernel holds and the VRAM the whole slice holds (both out of the
slice's limit, so they can be compared at a glance), and the compute share
this kernel used over the last second out of its cap.  Values come from the
shared region, which libvgpu refreshes twice a second, via
:func:`hami_kernel.status.gather`.

Refreshing runs on a background thread rather than as an asyncio task on the
kernel's event loop: the loop is blocked for as long as a cell runs, and a
long cell (a training loop) is exactly when one wants to see the GPU.  Setting
widget values from another thread is fine: traitlets assigns under the GIL,
and ipykernel sends comm messages from any thread through its IOPub thread.

A kernel has at most one watcher: a new ``%vgpu watch`` stops and closes the
previous one, as do ``%vgpu watch stop``, the view's stop button, and closing
the widget.  Without a widget frontend (terminal IPython, or ipywidgets not
installed), :func:`watch_text` prints one status line per refresh instead.
"""
from __future__ import annotations

import html
import threading
import time
from typing import Any, Callable, Mapping

from .status import NOT_APPLIED, DeviceStatus, SliceStatus, describe_configured, gather
from .status_text import cap_text, memory_text, no_devices_reason, share_text, short_identity, short_uuid, \
    idle_suffix, status_line

__all__ = ["Watcher", "start", "stop", "current", "watch_text", "widgets_usable"]

_BAR = {"description_width": "110px"}
_NOT_YET = "nothing yet: this kernel has not used this GPU"


def widgets_usable(shell: Any) -> bool:
    """True when widgets can be shown: ipywidgets is installed and we run inside a kernel."""
    if getattr(shell, "kernel", None) is None:  # terminal IPython and plain InteractiveShell have none
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _close_tree(widget: Any) -> None:
    """Closes a widget with its children, layout and style, which each have a comm of their own."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    for part in (getattr(widget, "style", None), getattr(widget, "layout", None)):
        if part is not None and hasattr(part, "close"):
            part.close()
    widget.close()


def _bar_style(value: float, limit: float | None) -> str:
    if not limit:
        return ""
    return "danger" if value >= limit else "warning" if value >= 0.9 * limit else "success"


def _set_bar(bar: Any, value: float, limit: float | None) -> None:
    # max before value, or a shrinking max would clamp the old value first and send it too.
    with bar.hold_sync():
        bar.max = float(limit) if limit else 1.0
        bar.value = min(float(value), bar.max) if limit else 0.0
        bar.bar_style = _bar_style(value, limit)


class _DeviceView:
    """The three bars of one GPU."""

    def __init__(self, uuid: str):
        import ipywidgets as w

        self.uuid = uuid
        self.title = w.HTML(value=f"<b title='{uuid}'>{short_uuid(uuid)}</b>")
        self.kernel_memory = w.FloatProgress(min=0.0, max=1.0, description="VRAM, kernel", style=_BAR)
        self.slice_memory = w.FloatProgress(min=0.0, max=1.0, description="VRAM, slice", style=_BAR)
        self.compute = w.FloatProgress(min=0.0, max=100.0, description="compute", style=_BAR)
        self.kernel_memory_label, self.slice_memory_label, self.compute_label = w.Label(), w.Label(), w.Label()
        self.box = w.VBox([
            self.title,
            w.HBox([self.kernel_memory, self.kernel_memory_label]),
            w.HBox([self.slice_memory, self.slice_memory_label]),
            w.HBox([self.compute, self.compute_label]),
        ])

    def update(self, dev: DeviceStatus, policy: str) -> None:
        mine = dev.own.memory_used if dev.own else 0
        _set_bar(self.kernel_memory, mine, dev.memory_limit or dev.own_memory_cap)
        if dev.own is None:
            self.kernel_memory_label.value = _NOT_YET
        else:
            self.kernel_memory_label.value = f"{memory_text(mine)} (cap {memory_text(dev.own.memory_limit, 'none')})"
        _set_bar(self.slice_memory, dev.memory_used, dev.memory_limit)
        free = "" if dev.memory_free is None else f", {memory_text(dev.memory_free)} free"
        self.slice_memory_label.value = f"{memory_text(dev.memory_used)} of {memory_text(dev.memory_limit)}{free}"
        share = dev.own.sm_share if dev.own else 0.0
        sm_cap = None if policy == "disable" else dev.own_sm_cap
        # Out of the cap, so a full bar means "at its share"; uncapped, out of the whole GPU.
        _set_bar(self.compute, share * 100, sm_cap or 100)
        if dev.own is None:
            self.compute_label.value = _NOT_YET
        else:
            self.compute_label.value = f"{share_text(share)} of the GPU over the last second, cap {cap_text(sm_cap)}"


class Watcher:
    """One live view and the thread that refreshes it."""

    def __init__(self, interval: float = 1.0, count: int | None = None,
                 read: Callable[[], SliceStatus] = gather):
        import ipywidgets as w

        self.interval = interval
        self.count = count
        self.refreshes = 0
        self._read = read
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # one refresh or close at a time
        self._closed = False
        self._devices: dict[str, _DeviceView] = {}
        self.header = w.HTML()
        self.body = w.VBox()
        self.message = w.HTML()
        self.status = w.Label()
        self.stop_button = w.Button(description="stop", tooltip="stop refreshing and close this view",
                                    layout=w.Layout(width="80px"))
        self.stop_button.on_click(lambda _button: self.stop())
        self.widget = w.VBox([self.header, self.message, self.body, w.HBox([self.stop_button, self.status])])
        # Closing the view from Python (widget.close()) sets comm to None; a
        # frontend closing it calls the comm's close callbacks. Either stops us.
        self.widget.observe(self._comm_changed, names="comm")
        if self.widget.comm is not None:
            self.widget.comm.on_close(lambda _msg: self.stop())
        self._thread = threading.Thread(target=self._run, name="vgpu-watch", daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    def start(self) -> Watcher:
        self.refresh()  # the first values are there when the view appears
        self._thread.start()
        return self

    def _comm_changed(self, change: Mapping[str, Any]) -> None:
        if change["new"] is None:
            self.stop()

    def _run(self) -> None:
        while not (self.count is not None and self.refreshes >= self.count):
            if self._stopped.wait(self.interval):
                return
            self.refresh()
        self.status.value = f"stopped after {self.refreshes} refreshes"

    def refresh(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._show(self._read())
            except Exception as exc:  # noqa: BLE001 -- a bad read must not kill the view; say why instead
                self.status.value = f"refresh failed: {type(exc).__name__}: {exc}"
            self.refreshes += 1

    def _show(self, status: SliceStatus) -> None:
        who = f"kernel {short_identity(status.identity)}" if status.identity else f"pid {status.pid}"
        idle = html.escape(idle_suffix(status).removeprefix("; "))
        self.header.value = f"<b>vgpu watch</b> · {who} · every {self.interval:g} s" + (f" · {idle}" if idle else "")
        notes = [] if status.loaded else [NOT_APPLIED]
        if not status.devices:
            limits = ", ".join(f"{what}: {value}" for what, value, _ in describe_configured(status.configured))
            notes += [no_devices_reason(status), f"configured: {limits}"]
        self.message.value = "<br>".join(html.escape(note) for note in notes)
        uuids = [d.uuid for d in status.devices]
        if uuids != list(self._devices):
            # GPUs appear when the slice first uses them; rebuild only then, so
            # a refresh is normally just value updates.
            old = self._devices
            self._devices = {u: old.pop(u) if u in old else _DeviceView(u) for u in uuids}
            self.body.children = tuple(v.box for v in self._devices.values())
            for view in old.values():
                _close_tree(view.box)
        for dev in status.devices:
            self._devices[dev.uuid].update(dev, status.policy)
        self.status.value = "refreshed " + time.strftime("%H:%M:%S", time.localtime(status.taken_at))

    def stop(self) -> None:
        """Stops refreshing and closes every widget of the view; idempotent."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _close_tree(self.widget)
        with _registry:
            global _current
            if _current is self:
                _current = None


_registry = threading.Lock()
_current: Watcher | None = None


def current() -> Watcher | None:
    return _current


def start(interval: float = 1.0, count: int | None = None) -> Watcher:
    """Starts this kernel's watcher, replacing (stopping and closing) the one before."""
    global _current
    with _registry:
        previous, _current = _current, None
    if previous is not None:
        previous.stop()
    watcher = Watcher(interval, count)
    with _registry:
        _current = watcher
    return watcher.start()


def stop() -> bool:
    """Stops and closes this kernel's watcher; False when there was none."""
    with _registry:
        watcher = _current
    if watcher is None:
        return False
    watcher.stop()
    return True


def watch_text(interval: float = 1.0, count: int | None = None, print_: Callable[[str], None] = print,
               read: Callable[[], SliceStatus] = gather) -> int:
    """Prints a status line every ``interval`` seconds, ``count`` times or until Ctrl-C.

    Blocks, as a terminal has nowhere else to show it; returns the lines printed.
    """
    printed = 0
    try:
        while count is None or printed < count:
            if printed:
                time.sleep(interval)
            print_(status_line(read()))
            printed += 1
    except KeyboardInterrupt:
        pass
    return printed
