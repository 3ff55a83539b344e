"""The JupyterLab extension in headless Chromium, against a real ``jupyter lab`` in a slice.

Debian's chromium (.ci/run installs it) driven by Playwright, no browser
download; JupyterLab loads the prebuilt extension that pip installed. The
kernels start through hami-provisioner from notebook sessions and allocate
through libvgpu over the fake driver, so what the page shows is checked
against the server extension's answer and the region. Each test saves a
screenshot under build/screenshots/.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from cbuild import ROOT, build_tests
from hub_harness import wait_for
from lab_harness import MiB, Server, install_spec, slice_env
from hami_kernel.region import read_region

playwright_api = pytest.importorskip("playwright.sync_api")

GiB = 1 << 30
CHROMIUM = os.environ.get("HAMI_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "build" / "screenshots"
STATUS = ".jp-vgpu-status"
PANEL = "#hami-vgpu-panel"
# The status bar: "GPU 0.3 / 1 GiB · 0% / 50%".
STATUS_RE = re.compile(r"^GPU (\d+(?:\.\d)?) / 1 GiB · (\d+)% / 50%$")


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium for the browser tests")
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium; .ci/run does)")
    return CHROMIUM


def lab_settings(srv: Server, tmp: Path) -> None:
    """Lab's settings and workspaces in tmp, so a user's never leak in; no news pop-up."""
    settings = tmp / "lab-settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True, exist_ok=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false"}')
    srv.env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    srv.env["JUPYTERLAB_WORKSPACES_DIR"] = str(tmp / "lab-workspaces")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    build = build_tests("plain")
    tmp = tmp_path_factory.mktemp("lab")
    # The app on window (as galata has it), to switch themes as the menu does.
    srv = Server(tmp, slice_env(build, tmp), app="jupyterlab", extra_args=["--LabApp.expose_app_in_browser=True"])
    install_spec(srv.data, "gpu-whole", {})
    install_spec(srv.data, "gpu-256m", {"memory": "256MiB"})
    lab_settings(srv, tmp)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def kernels(lab: Server) -> dict[str, str]:
    """Two notebooks' kernels in the slice: 16+200 MiB and 16+100 MiB."""
    for name in ("analysis.ipynb", "training.ipynb"):
        (lab.root / name).write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    ids = {"analysis": lab.open_notebook("analysis.ipynb", "gpu-whole"),
           "training": lab.open_notebook("training.ipynb", "gpu-256m")}
    assert lab.allocate(ids["analysis"], 200) == 0
    assert lab.allocate(ids["training"], 100) == 0
    return ids


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"])
        try:
            yield b
        finally:
            b.close()


def open_lab(browser: Any, server: Server) -> Any:
    """A page of JupyterLab, once the status item is there (no video, no trace)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # No service worker: the page's own requests are then all seen by the tests.
    context = browser.new_context(viewport={"width": 1400, "height": 860}, service_workers="block")
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(f"{server.url}lab?token={server.token}")
    pg.locator(STATUS).wait_for(state="visible", timeout=120_000)
    return pg


@pytest.fixture(scope="module")
def page(browser: Any, lab: Server, kernels: dict[str, str]) -> Iterator[Any]:
    pg = open_lab(browser, lab)
    try:
        yield pg
    finally:
        pg.context.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def status_text(page: Any) -> str:
    return page.locator(STATUS).inner_text().strip()


def shown_gib(page: Any) -> float | None:
    match = STATUS_RE.match(status_text(page))
    return float(match.group(1)) if match else None


def wait_for_status(page: Any, lab: Server, what: str) -> float:
    """Until the status bar shows what the endpoint answers now (to its one decimal)."""
    def agrees() -> float | None:
        used = lab.usage()["devices"][0]["memory_used_bytes"] / GiB
        shown = shown_gib(page)
        return shown if shown is not None and abs(shown - used) <= 0.05 else None
    return wait_for(f"the status bar to show {what} (it shows {status_text(page)!r})", agrees, timeout=30)


def test_status_bar_shows_the_endpoints_numbers_and_follows_an_allocation(page: Any, lab: Server,
                                                                        kernels: dict[str, str]) -> None:
    used = lab.usage()["devices"][0]["memory_used_bytes"]
    assert used == 2 * 16 * MiB + 300 * MiB
    assert wait_for_status(page, lab, "0.3 GiB") == 0.3
    assert "jp-vgpu-warning" not in (page.locator(STATUS).get_attribute("class") or "")
    shot(page, "status-bar")
    assert lab.allocate(kernels["analysis"], 200) == 0  # 532 MiB in all
    assert wait_for_status(page, lab, "0.5 GiB") == 0.5
    shot(page, "status-bar-after-allocation")


def test_panel_opens_and_lists_the_kernels_with_their_notebooks(page: Any, lab: Server,
                                                                kernels: dict[str, str]) -> None:
    page.locator(STATUS).click()
    panel = page.locator(PANEL)
    panel.wait_for(state="visible")
    rows = panel.locator("tr.jp-vgpu-kernel")
    wait_for("two kernel rows", lambda: rows.count() == 2, timeout=30)
    by_id = {rows.nth(i).get_attribute("data-kernel-id"): rows.nth(i).inner_text() for i in range(2)}
    assert set(by_id) == set(kernels.values())
    assert "analysis.ipynb" in by_id[kernels["analysis"]] and "416 MiB" in by_id[kernels["analysis"]]
    assert "training.ipynb" in by_id[kernels["training"]] and "116 / 256 MiB" in by_id[kernels["training"]]
    assert "GPU: never" in by_id[kernels["analysis"]]  # it has launched no GPU work
    # Beside the slice's figure, what the driver attributes to the process (here the fake's NVML).
    assert "driver: 416 MiB" in by_id[kernels["analysis"]] and "driver: 116 MiB" in by_id[kernels["training"]]
    # A chart of VRAM and one of compute per device, drawn by uPlot.
    assert panel.locator(".jp-vgpu-chart-memory canvas").count() == 1
    assert panel.locator(".jp-vgpu-chart-compute canvas").count() == 1
    assert "Fake GPU" in panel.locator(".jp-vgpu-device h3").inner_text()
    page.wait_for_timeout(1500)  # a few samples on the charts
    shot(page, "panel")


def test_redivide_from_the_panel(page: Any, lab: Server, kernels: dict[str, str]) -> None:
    row = page.locator(f'{PANEL} tr[data-kernel-id="{kernels["training"]}"]')
    row.locator(".jp-vgpu-redivide").click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator('input[name="memory"]').fill("384MiB")
    dialog.locator('input[name="cores"]').fill("20")
    shot(page, "redivide-dialog")
    dialog.locator(".jp-mod-accept").click()
    region = Path(lab.env["CUDA_DEVICE_MEMORY_SHARED_CACHE"])

    def applied() -> bool:
        (proc,) = read_region(region).process(kernels["training"])
        return (proc.devices[0].memory_limit, proc.devices[0].sm_limit) == (384 * MiB, 20)
    wait_for("the new caps in the region", applied, timeout=30)
    wait_for("the row to show the new cap", lambda: "116 / 384 MiB" in row.inner_text(), timeout=30)
    # A refusal is shown with the server's reason.
    row.locator(".jp-vgpu-redivide").click()
    page.locator('.jp-Dialog input[name="memory"]').fill("4GiB")
    page.locator(".jp-Dialog .jp-mod-accept").click()
    error = page.locator(".jp-Dialog")
    wait_for("the refusal", lambda: "has only 1 GiB" in error.inner_text(), timeout=30)
    shot(page, "redivide-refused")
    page.keyboard.press("Escape")
    page.locator(".jp-Dialog").wait_for(state="detached")


def test_shut_down_frees_the_kernels_memory(page: Any, lab: Server, kernels: dict[str, str]) -> None:
    region = Path(lab.env["CUDA_DEVICE_MEMORY_SHARED_CACHE"])
    before = read_region(region).devices[0].memory_used
    row = page.locator(f'{PANEL} tr[data-kernel-id="{kernels["training"]}"]')
    row.locator(".jp-vgpu-shutdown").click()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    wait_for("the kernel's memory to return to the slice",
             lambda: not read_region(region).process(kernels["training"]), timeout=60)
    assert read_region(region).devices[0].memory_used == before - 116 * MiB
    wait_for("the row to go", lambda: row.count() == 0, timeout=30)
    assert wait_for_status(page, lab, "0.4 GiB") == 0.4
    shot(page, "after-shutdown")


def test_warning_colour_near_the_limit(page: Any, lab: Server, kernels: dict[str, str]) -> None:
    status = page.locator(STATUS)
    colour = status.evaluate("el => getComputedStyle(el).backgroundColor")
    assert lab.allocate(kernels["analysis"], 520) == 0  # 936 MiB of 1 GiB: 91%
    wait_for("the warning colour", lambda: "jp-vgpu-warning" in (status.get_attribute("class") or ""), timeout=30)
    assert status_text(page) == "GPU 0.9 / 1 GiB · 0% / 50%"
    warn = page.evaluate("getComputedStyle(document.body).getPropertyValue('--jp-warn-color0').trim()")
    shown = status.evaluate("el => getComputedStyle(el).backgroundColor")
    assert shown != colour and shown == page.evaluate(
        "c => { const d = document.createElement('div'); d.style.color = c; document.body.appendChild(d);"
        " const v = getComputedStyle(d).color; d.remove(); return v; }", warn)
    shot(page, "warning")


def test_dark_theme(page: Any, lab: Server) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    wait_for("the dark theme", lambda: page.evaluate(
        "document.body.dataset.jpThemeLight") == "false", timeout=30)
    page.wait_for_timeout(1500)
    background = page.locator(PANEL).evaluate("el => getComputedStyle(el).backgroundColor")
    r, g, b = (int(v) for v in re.findall(r"\d+", background)[:3])
    assert r + g + b < 3 * 100, background  # the panel follows the theme
    assert page.locator(f"{PANEL} .jp-vgpu-chart-memory canvas").count() == 1  # charts remade
    shot(page, "panel-dark")


def wait_in_page(page: Any, what: str, check: Any, timeout: float) -> None:
    """Like wait_for, but waiting inside Playwright, which delivers the page's events meanwhile."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        page.wait_for_timeout(200)


def usage_requests(page: Any) -> list[float]:
    """Times of the page's requests to the usage endpoint, from now on."""
    seen: list[float] = []
    page.on("request", lambda request: seen.append(time.monotonic()) if "/api/vgpu/v1/usage" in request.url else None)
    return seen


def set_visibility(page: Any, state: str) -> None:
    """What the browser does when the tab is hidden or shown again."""
    page.evaluate("""state => {
        Object.defineProperty(document, 'visibilityState', {value: state, configurable: true});
        Object.defineProperty(document, 'hidden', {value: state === 'hidden', configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""", state)


def test_no_polling_while_the_tab_is_hidden(page: Any) -> None:
    seen = usage_requests(page)
    wait_in_page(page, "requests while visible", lambda: len(seen) >= 2, timeout=30)  # it polls
    set_visibility(page, "hidden")
    page.wait_for_timeout(2500)  # one more request may still go (the poll lingers once)
    hidden_since = len(seen)
    page.wait_for_timeout(4000)
    assert len(seen) == hidden_since, "the status bar polled while the tab was hidden"
    set_visibility(page, "visible")
    wait_in_page(page, "requests once visible again", lambda: len(seen) > hidden_since, timeout=30)
    shot(page, "visible-again")


def test_the_refresh_interval_setting(browser: Any, lab: Server) -> None:
    """A slower refresh interval (Settings → GPU slice) means fewer requests."""
    settings = "lab/api/settings/hami-jupyter-vgpu:plugin"
    lab.request("PUT", settings, {"raw": json.dumps({"refreshInterval": 5000})})
    try:
        pg = open_lab(browser, lab)
        seen = usage_requests(pg)
        pg.wait_for_timeout(8000)
        # At 1 s there would be about 8; at 5 s at most 2 (a slower machine only makes fewer).
        assert 1 <= len(seen) <= 3, len(seen)
        shot(pg, "refresh-interval")
        pg.context.close()
    finally:
        lab.request("PUT", settings, {"raw": "{}"})


def test_no_slice(browser: Any, tmp_path: Path) -> None:
    build = build_tests("plain")
    srv = Server(tmp_path, {**slice_env(build, tmp_path, memory="", cores=""), "CUDA_VISIBLE_DEVICES": ""},
                 app="jupyterlab")
    lab_settings(srv, tmp_path)
    srv.start()
    try:
        pg = open_lab(browser, srv)
        status = pg.locator(STATUS)
        wait_for("'no GPU slice'", lambda: status.inner_text().strip() == "no GPU slice", timeout=30)
        assert "no GPU slice for this server" in (status.get_attribute("title") or "")
        shot(pg, "no-slice")
        pg.context.close()
    finally:
        srv.stop()


def test_idle_policy_notifications(browser: Any, tmp_path: Path) -> None:
    """An idle kernel holding memory: warned in JupyterLab beforehand, then told what came back."""
    srv = Server(tmp_path, slice_env(build_tests("plain"), tmp_path), app="jupyterlab", extra_args=[
        "--IdlePolicy.action=shutdown", "--IdlePolicy.idle_after=4", "--IdlePolicy.grace=8",
        "--IdlePolicy.check_interval=0.5", "--IdlePolicy.min_memory=64MiB"])
    install_spec(srv.data, "gpu-whole", {})
    lab_settings(srv, tmp_path)
    srv.start()
    try:
        (srv.root / "lunch.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
        kernel = srv.open_notebook("lunch.ipynb", "gpu-whole")
        # JupyterLab reads the running sessions as it starts, then every 10 s or so: with the
        # notebook's session made first, the file browser marks it running from the start.
        pg = open_lab(browser, srv)
        running = pg.locator(".jp-DirListing-content .jp-mod-running")
        wait_for("the running mark", lambda: running.count() == 1, timeout=30)
        assert srv.allocate(kernel, 200) == 0  # 216 MiB held from here; the idle clock starts now
        pg.locator(STATUS).click()  # the panel, to see the kernel marked idle
        warning = pg.get_by_text(re.compile(r"The kernel of lunch\.ipynb has held 216 MiB .* will be shut down"))
        warning.first.wait_for(state="visible", timeout=90_000)
        row = pg.locator(f'{PANEL} tr[data-kernel-id="{kernel}"]')
        wait_for("the idle mark", lambda: "shut down at" in row.locator(".jp-vgpu-idle-mark").inner_text(), timeout=30)
        assert "jp-vgpu-kernel-idle" in (row.get_attribute("class") or "")
        summary = pg.locator(f"{PANEL} .jp-vgpu-idle-summary")
        wait_for("the idle line", lambda: summary.inner_text().startswith(
            "216 MiB held by kernels idle for 4 s or more; those holding 64 MiB or more are shut down 8 s after"),
            timeout=30)
        pg.wait_for_timeout(1000)  # the toast's slide-in, for the screenshot
        shot(pg, "idle-warning")
        assert running.count() == 1
        assert kernel in {k["id"] for k in srv.get("api/kernels")}  # announced, not yet done
        done = pg.get_by_text(re.compile(r"lunch\.ipynb was shut down after .* 216 MiB of GPU memory came back"))
        done.first.wait_for(state="visible", timeout=90_000)
        assert kernel not in {k["id"] for k in srv.get("api/kernels")}
        assert not read_region(srv.env["CUDA_DEVICE_MEMORY_SHARED_CACHE"]).process(kernel)
        # The warning made way for the outcome.
        wait_for("the warning to close", lambda: warning.count() == 0, timeout=30)
        # And the notebook no longer looks running: JupyterLab was told at once,
        # not at its next poll of the sessions (every 10 s).
        wait_for("the running mark to go", lambda: running.count() == 0, timeout=2)
        shot(pg, "idle-shut-down")
        pg.context.close()
    finally:
        srv.stop()
