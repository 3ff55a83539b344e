"""The jupyter-server extension against a real server with real kernels.

The server runs in a 1 GiB / 50% slice on the fake driver; its kernels start
through hami-provisioner from notebook sessions, as JupyterLab starts them,
and allocate through the real libvgpu, so every figure the API answers is
checked against the region libvgpu wrote.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from cbuild import build_tests
from hub_harness import wait_for
from lab_harness import CONTEXT, HttpError, MiB, Server, install_spec, slice_env
from hami_kernel.region import MAGIC, REGION_SIZE, VERSION, read_region

GiB = 1 << 30
UUID0 = "GPU-face0000-1020-3040-5060-708090a0b0c0"
CUDA_ERROR_OUT_OF_MEMORY = 2


@pytest.fixture(scope="module")
def plain_build() -> Path:
    return build_tests("plain")


@pytest.fixture(scope="module")
def server(plain_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    srv = Server(tmp, slice_env(plain_build, tmp))
    install_spec(srv.data, "gpu-256m", {"memory": "256MiB", "cores": 20})
    install_spec(srv.data, "gpu-whole", {})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def two_notebooks(server: Server) -> tuple[str, str]:
    """Two notebooks' kernels holding memory in the slice: 16+200 MiB and 16+300 MiB."""
    small = server.open_notebook("work/small.ipynb", "gpu-256m")
    whole = server.open_notebook("whole.ipynb", "gpu-whole")
    assert server.allocate(small, 200) == 0
    assert server.allocate(whole, 300) == 0
    return small, whole


def region_of(server: Server) -> Path:
    return Path(server.env["CUDA_DEVICE_MEMORY_SHARED_CACHE"])


def test_extension_is_enabled_by_the_installed_config() -> None:
    """pip install puts the config in the environment: `jupyter server extension list` shows it."""
    config = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / "hami_kernel.json"
    assert json.loads(config.read_text()) == {"ServerApp": {"jpserver_extensions": {"hami_kernel.serverext": True}}}
    listed = subprocess.run([sys.executable, "-m", "jupyter_server", "extension", "list"], capture_output=True,
                            text=True, timeout=120)
    out = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)  # no colours
    assert re.search(r"hami_kernel\.serverext\s+enabled", out), out
    assert "hami_kernel.serverext" in out and "OK" in out.split("hami_kernel.serverext", 1)[1], out


def test_usage_matches_the_region_and_names_the_notebooks(server: Server, two_notebooks: tuple[str, str]) -> None:
    small, whole = two_notebooks
    usage = server.usage()
    region = read_region(region_of(server))
    assert usage["status"] == "ok" and usage["message"] == ""
    assert usage["slice"] == {"region": str(region_of(server)), "policy": "default",
                              "limits": [{"index": 0, "memory_limit_bytes": GiB, "compute_cap_ratio": 0.5}]}
    (device,) = usage["devices"]
    (region_device,) = region.devices
    # Written out from what the kernels hold, and equal to the region's own sum.
    assert device["memory_used_bytes"] == 2 * CONTEXT + 500 * MiB == region_device.memory_used
    assert device["memory_limit_bytes"] == GiB and device["compute_cap_ratio"] == 0.5
    assert device["uuid"] == UUID0 and device["name"] == "Fake GPU"  # NVML's name (the fake's)

    by_id = {k["kernel_id"]: k for k in usage["kernels"]}
    assert set(by_id) == {small, whole}
    assert by_id[small]["path"] == "work/small.ipynb" and by_id[whole]["path"] == "whole.ipynb"
    assert by_id[small]["session_type"] == "notebook" and by_id[small]["kernel_name"] == "gpu-256m"
    for kernel_id, held in ((small, 200), (whole, 300)):
        (proc,) = region.process(kernel_id)
        entry = by_id[kernel_id]
        assert entry["pid"] == proc.pid and entry["identity"] == kernel_id
        (use,) = entry["devices"]
        assert use["memory_used_bytes"] == CONTEXT + held * MiB == proc.devices[0].memory_used
        # What the driver (here the fake's NVML) attributes to the process: the same.
        assert use["driver_memory_used_bytes"] == use["memory_used_bytes"]
        assert use["launches"] == proc.devices[0].launches
        assert entry["execution_state"] in ("idle", "busy")
        assert 0 <= entry["idle_seconds"] < 120
    # The kernelspec's sub-slice, as the region holds it.
    assert by_id[small]["devices"][0]["memory_limit_bytes"] == 256 * MiB
    assert by_id[small]["devices"][0]["compute_cap_ratio"] == 0.2
    assert by_id[whole]["devices"][0]["memory_limit_bytes"] is None


def test_usage_follows_an_allocation(server: Server, two_notebooks: tuple[str, str]) -> None:
    small, _ = two_notebooks
    before = server.usage()["devices"][0]["memory_used_bytes"]
    assert server.allocate(small, 20) == 0
    after = server.usage()["devices"][0]["memory_used_bytes"]
    assert after - before == 20 * MiB == read_region(region_of(server)).devices[0].memory_used - before


def test_prometheus_metrics_carry_the_same_figures(server: Server, two_notebooks: tuple[str, str]) -> None:
    small, whole = two_notebooks
    status, headers, text = server.get("api/vgpu/v1/metrics", raw=True)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    region = read_region(region_of(server))
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    dev = f'device_name="Fake GPU",device_uuid="{UUID0}"'
    assert samples[f"hami_vgpu_memory_used_bytes{{{dev}}}"] == region.devices[0].memory_used
    assert samples[f"hami_vgpu_memory_limit_bytes{{{dev}}}"] == GiB
    assert samples[f"hami_vgpu_compute_cap_ratio{{{dev}}}"] == 0.5
    assert samples['hami_vgpu_status{status="ok"}'] == 1.0
    for kernel_id, path in ((small, "work/small.ipynb"), (whole, "whole.ipynb")):
        (proc,) = region.process(kernel_id)
        labels = f'device_uuid="{UUID0}",kernel_id="{kernel_id}",notebook="{path}",pid="{proc.pid}"'
        assert samples[f"hami_vgpu_kernel_memory_used_bytes{{{labels}}}"] == proc.devices[0].memory_used
        assert samples[f"hami_vgpu_kernel_launches_total{{{labels}}}"] == proc.devices[0].launches
        assert samples[f"hami_vgpu_kernel_driver_memory_used_bytes{{{labels}}}"] == proc.devices[0].memory_used
    assert "hami_vgpu_kernel_memory_limit_bytes{" + f'device_uuid="{UUID0}",kernel_id="{small}"' in text


def test_authentication_is_required(server: Server) -> None:
    for path in ("api/vgpu/v1/usage", "api/vgpu/v1/metrics"):
        with pytest.raises(HttpError) as refused:
            server.get(path, token=None)
        assert refused.value.status == 403
        with pytest.raises(HttpError) as wrong:
            server.get(path, token="not-the-token")
        assert wrong.value.status == 403
    with pytest.raises(HttpError) as refused:
        server.post("api/vgpu/v1/kernels/anything/slice", {"memory": "1MiB"}, token=None)
    assert refused.value.status == 403


def test_a_cookie_session_needs_the_xsrf_token_to_post(server: Server, two_notebooks: tuple[str, str]) -> None:
    small, _ = two_notebooks
    opener, jar = server.cookie_session()
    # Reading with the login cookie alone is allowed, as for the server's own API.
    assert server.get("api/vgpu/v1/usage", token=None, opener=opener)["status"] == "ok"
    with pytest.raises(HttpError) as refused:
        server.post(f"api/vgpu/v1/kernels/{small}/slice", {"cores": 15}, token=None, opener=opener)
    assert refused.value.status == 403 and "_xsrf" in refused.value.body
    xsrf = next(c.value for c in jar if c.name == "_xsrf")
    reply = server.post(f"api/vgpu/v1/kernels/{small}/slice", {"cores": 15}, token=None, opener=opener,
                        headers={"X-XSRFToken": xsrf})
    assert "15%" in reply["message"]
    assert read_region(region_of(server)).process(small)[0].devices[0].sm_limit == 15


def test_redivide_a_kernel(server: Server, two_notebooks: tuple[str, str]) -> None:
    small, _ = two_notebooks
    reply = server.post(f"api/vgpu/v1/kernels/{small}/slice", {"memory": "512MiB", "cores": 30})
    assert reply["kernel_id"] == small and "512 MiB" in reply["message"] and "30%" in reply["message"]
    use = server.usage()
    (entry,) = [k for k in use["kernels"] if k["kernel_id"] == small]
    assert entry["devices"][0]["memory_limit_bytes"] == 512 * MiB and entry["devices"][0]["compute_cap_ratio"] == 0.3
    # Applies at once: the kernel may now hold more than its kernelspec's 256 MiB.
    assert server.allocate(small, 200) == 0
    # Back to the kernelspec's cap: the next allocation past it fails.
    server.post(f"api/vgpu/v1/kernels/{small}/slice", {"memory": "256MiB"})
    assert server.allocate(small, 1) == CUDA_ERROR_OUT_OF_MEMORY


@pytest.mark.parametrize(("body", "status", "reason"), [
    ({"memory": "4GB"}, 400, "ambiguous"),
    ({"memory": "2GiB"}, 400, "has only 1 GiB"),
    ({"cores": 80}, 400, "has only 50%"),
    ({"cores": "lots"}, 400, "invalid compute share"),
    ({"memory": True}, 400, "must be a size"),
    ({}, 400, "nothing to set"),
    ({"memroy": "1GiB"}, 400, "unknown field"),
    (["memory"], 400, "must be an object"),
    (b"{not json", 400, "not JSON"),
])
def test_bad_requests_get_400_with_the_reason(server: Server, two_notebooks: tuple[str, str], body: object,
                                              status: int, reason: str) -> None:
    small, _ = two_notebooks
    with pytest.raises(HttpError) as refused:
        server.post(f"api/vgpu/v1/kernels/{small}/slice", body)
    assert refused.value.status == status
    assert reason in refused.value.json()["message"], refused.value.body
    assert "Traceback" not in refused.value.body


def test_unknown_kernels_get_404(server: Server, two_notebooks: tuple[str, str]) -> None:
    for kernel_id in ("00000000-0000-0000-0000-000000000000", "not-a-kernel", "..%2F..%2Fetc"):
        with pytest.raises(HttpError) as refused:
            server.post(f"api/vgpu/v1/kernels/{kernel_id}/slice", {"memory": "100MiB"})
        assert refused.value.status == 404, refused.value.body


def test_a_kernel_that_has_not_used_the_gpu_cannot_be_redivided(server: Server) -> None:
    idle = server.open_notebook("idle.ipynb", "gpu-whole")
    try:
        with pytest.raises(HttpError) as refused:
            server.post(f"api/vgpu/v1/kernels/{idle}/slice", {"memory": "100MiB"})
        assert refused.value.status == 400 and "has no process in the GPU slice yet" in refused.value.json()["message"]
        assert idle not in {k["kernel_id"] for k in server.usage()["kernels"]}
    finally:
        server.request("DELETE", f"api/kernels/{idle}")


def test_gpu_idle_time_follows_launches(server: Server) -> None:
    kernel = server.open_notebook("launcher.ipynb", "gpu-whole")
    try:
        server.allocate(kernel, 1)
        launch = ("import ctypes\n_buf = ctypes.create_string_buffer(8)\n_f = ctypes.c_void_p(ctypes.addressof(_buf))\n"
                  "_cu.cuLaunchKernel(_f, 1, 1, 1, 1, 1, 1, 0, None, None, None)")
        server.execute(kernel, launch)

        def entry() -> dict:
            return next(k for k in server.usage()["kernels"] if k["kernel_id"] == kernel)
        # Seen to launch by the monitor (the count reaches the region every 0.5 s).
        moved = wait_for("the launch to be seen", lambda: entry()["gpu_idle_seconds"] is not None, timeout=10)
        assert moved
        first = entry()
        assert first["launches"] >= 1 and first["gpu_idle_seconds"] < 10
        time.sleep(1.0)
        assert entry()["gpu_idle_seconds"] >= first["gpu_idle_seconds"] + 0.9
    finally:
        server.request("DELETE", f"api/kernels/{kernel}")


def test_shutting_a_kernel_down_returns_its_memory(server: Server) -> None:
    kernel = server.open_notebook("temporary.ipynb", "gpu-whole")
    assert server.allocate(kernel, 100) == 0
    used = server.usage()["devices"][0]["memory_used_bytes"]
    server.request("DELETE", f"api/kernels/{kernel}")
    wait_for("the kernel's slot to be free", lambda: not read_region(region_of(server)).process(kernel), timeout=30)
    usage = server.usage()
    assert usage["devices"][0]["memory_used_bytes"] == used - CONTEXT - 100 * MiB
    assert kernel not in {k["kernel_id"] for k in usage["kernels"]}


# ---- servers in other states -------------------------------------------------------------


def start(tmp: Path, env: dict[str, str]) -> Server:
    return Server(tmp, env, base_url="/").start()


def test_a_server_without_a_slice(plain_build: Path, tmp_path: Path) -> None:
    env = {**slice_env(plain_build, tmp_path, memory="", cores=""), "CUDA_VISIBLE_DEVICES": ""}
    srv = start(tmp_path, env)
    try:
        usage = srv.usage()
        assert usage["status"] == "no_slice" and usage["message"] == "no GPU slice for this server"
        assert usage["slice"] is None and usage["devices"] == [] and usage["kernels"] == []
        status, _, text = srv.get("api/vgpu/v1/metrics", raw=True)
        assert status == 200 and 'hami_vgpu_status{status="no_slice"} 1.0' in text
        # Polling (the status bar asks every second) is not the user being active,
        # so it never keeps an idle server from being culled.
        active = srv.get("api/status")["last_activity"]
        time.sleep(0.05)
        srv.usage()
        srv.get("api/vgpu/v1/metrics", raw=True)
        assert srv.get("api/status")["last_activity"] == active
    finally:
        srv.stop()


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes()) if path.exists() else bytearray(REGION_SIZE)
    if how == "garbage":
        data[:256] = b"\xa5" * 256
    elif how == "version":
        data[0:8] = MAGIC.to_bytes(4, "little") + (99).to_bytes(4, "little")
    elif how == "checksum":
        data[0:4] = MAGIC.to_bytes(4, "little")
        data[4:8] = VERSION.to_bytes(4, "little")  # this release's layout, so the size is what is wrong
        data[8:12] = (REGION_SIZE + 1).to_bytes(4, "little")
    elif how == "truncated":
        data = data[:100]
    # Made as libvgpu makes a region (owner only), so that only its content is wrong.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(bytes(data))


@pytest.mark.parametrize(("how", "reason"), [
    ("garbage", "is not a libvgpu shared region"),
    ("version", "has layout version 99"),
    ("checksum", "corrupted"),
    ("truncated", "too short"),
])
def test_a_bad_region_is_a_readable_reason(plain_build: Path, tmp_path: Path, how: str, reason: str) -> None:
    env = slice_env(plain_build, tmp_path)
    srv = start(tmp_path, env)
    try:
        assert srv.usage()["status"] == "no_usage_yet"  # configured, nothing used yet
        corrupt(Path(env["CUDA_DEVICE_MEMORY_SHARED_CACHE"]), how)
        usage = srv.usage()
        assert usage["status"] == "region_error" and reason in usage["message"], usage
        assert usage["slice"]["limits"][0]["memory_limit_bytes"] == GiB  # the limits still show
        status, _, text = srv.get("api/vgpu/v1/metrics", raw=True)
        assert status == 200 and 'hami_vgpu_status{status="region_error"} 1.0' in text
        assert "Traceback" not in srv.log()
    finally:
        srv.stop()
