#!/usr/bin/env python3
"""A screenshot of JupyterLab showing usage reports recorded elsewhere (bench/gpu_lab.py).

The GPU machine has no browser. So a real ``jupyter lab`` runs here with the
installed extension, in headless Chromium (Debian's, driven by Playwright),
and the extension's requests to ``api/vgpu/v1/usage`` are answered, one per
request and in order, with the reports the GPU machine's server gave: what
the status bar and panel draw is exactly what they would have drawn there.
Nothing else is replaced.

    python3 bench/gpu_lab_screenshot.py gpu_lab.json docs/lab-h200.png
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", type=Path, help="the --out file of bench/gpu_lab.py")
    parser.add_argument("png", type=Path)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    recording = json.loads(args.recording.read_text())
    reports = [sample["usage"] for sample in recording["samples"]]

    from playwright.sync_api import Route, sync_playwright

    from lab_harness import Server

    with tempfile.TemporaryDirectory(prefix="lab-shot-") as tmp_name:
        tmp = Path(tmp_name)
        server = Server(tmp, {"CUDA_VISIBLE_DEVICES": ""}, app="jupyterlab", base_url="/user/alice/")
        settings = tmp / "lab-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
        server.env.update(JUPYTERLAB_SETTINGS_DIR=str(tmp / "lab-settings"),
                          JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"))
        for kernel in reports[-1]["kernels"]:  # the notebooks, so the file browser shows them
            if kernel["path"]:
                (server.root / kernel["path"]).parent.mkdir(parents=True, exist_ok=True)
                (server.root / kernel["path"]).write_text(NOTEBOOK)
        server.start()
        served = {"n": 0}

        def replay(route: Route) -> None:
            report = reports[min(served["n"], len(reports) - 1)]
            served["n"] += 1
            route.fulfill(status=200, content_type="application/json", body=json.dumps(report))

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=[
                    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run"])
                # Service workers off, so every request passes the route.
                page = browser.new_page(viewport={"width": 1400, "height": 820}, service_workers="block")
                page.route(lambda url: "/api/vgpu/v1/usage" in url, replay)
                folder = str(Path(reports[-1]["kernels"][0]["path"] or "x").parent) if reports[-1]["kernels"] else "."
                page.goto(f"{server.url}lab/tree/{'' if folder == '.' else folder}?token={server.token}")
                page.locator(".jp-vgpu-status").wait_for(state="visible", timeout=120_000)
                page.locator(".jp-vgpu-status").click()
                page.locator("#hami-vgpu-panel").wait_for(state="visible")
                # Until every recorded report has been shown, one a second, as they were taken.
                deadline = len(reports) * 1500 + 10_000
                waited = 0
                while served["n"] < len(reports) and waited < deadline:
                    page.wait_for_timeout(500)
                    waited += 500
                page.wait_for_timeout(1200)
                args.png.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.png))
                print(f"{args.png}: status bar {page.locator('.jp-vgpu-status').inner_text()!r}, "
                      f"{served['n']} reports served of {len(reports)} recorded")
                browser.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
