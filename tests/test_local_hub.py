"""A real JupyterHub process with LocalGpuSpawner, over a fake GPU inventory.

The hub discovers two fake 80 GiB GPUs through pynvml and the fake
libnvidia-ml.so.1 of the C test build (LD_LIBRARY_PATH); the single-user
servers are real jupyter servers, and their kernels run under libvgpu over the
fake libcuda.so.1, so a kernel sees its slice through the real hooks.  Also:
the README's first command, examples/local/jupyterhub_config.py, comes up and
serves its login page and spawn form.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("jupyterhub", reason="needs JupyterHub: .venv/bin/pip install '.[test]' (the README's test command)")
pytest.importorskip("jupyter_server", reason="needs jupyter_server: .venv/bin/pip install '.[test]'")

from cbuild import ROOT, build_tests  # noqa: E402
from hub_harness import Browser, Hub, become_subreaper, fake_driver_dir, free_port, process_env, \
    reap, wait_for  # noqa: E402

GiB = 1 << 30
GPU0 = "GPU-face0000-1020-3040-5060-708090a0b0c0"
GPU1 = "GPU-face0001-1020-3040-5060-708090a0b0c0"

CONFIG = """
c.JupyterHub.spawner_class = "hami_spawner.local.SimpleLocalGpuSpawner"
c.JupyterHub.allow_named_servers = True
c.JupyterHub.load_groups = {{"research": {{"users": ["rita"]}}}}
c.SimpleLocalGpuSpawner.home_dir_template = {home!r}
c.LocalGpuSpawner.region_root = {regions!r}
c.Spawner.environment.update({server_env!r})
c.GpuProfiles.profiles = [
    {{"name": "quarter", "display_name": "Quarter GPU", "memory": "20GiB", "cores": 25}},
    {{"name": "quarter-spread", "display_name": "Quarter GPU (spread)", "memory": "20GiB",
      "cores": 25, "policy": "spread"}},
    {{"name": "whole", "display_name": "Whole GPU"}},
    {{"name": "research", "display_name": "Research", "memory": "60GiB", "groups": ["research"]}},
]
c.GpuProfiles.custom = {{"memory_min": "2GiB", "memory_max": "40GiB", "cores_step": 5}}
c.GpuProfiles.max_gpu_servers_per_user = 1
"""

# Runs in a kernel of a user's server: what CUDA (the fake, under libvgpu) shows it.
KERNEL_PROBE = """
import ctypes, os
cu = ctypes.CDLL("libcuda.so.1")
assert cu.cuInit(0) == 0
count, total = ctypes.c_int(), ctypes.c_size_t()
assert cu.cuDeviceGetCount(ctypes.byref(count)) == 0
assert cu.cuDeviceTotalMem_v2(ctypes.byref(total), 0) == 0
print(count.value, total.value, os.environ["LD_PRELOAD"].split(":")[0],
      os.environ["CUDA_DEVICE_MEMORY_SHARED_CACHE"])
"""


@pytest.fixture(scope="module")
def fake_env() -> dict[str, str]:
    """What makes a process see two fake 80 GiB GPUs (NVML and CUDA)."""
    build = build_tests("plain")
    return {"LD_LIBRARY_PATH": str(fake_driver_dir(build)), "FAKE_CUDA_DEVICE_COUNT": "2",
            "FAKE_CUDA_DEVICE_MEMORY": "80g", "LIBVGPU_LIBRARY": str(build / "csrc" / "libvgpu.so")}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, fake_env: dict[str, str]) -> Iterator[Hub]:
    become_subreaper()  # servers orphaned by the restart test are reaped here
    work = tmp_path_factory.mktemp("hub")
    server_env = {**fake_env, "LIBVGPU_ARBITER_DIR": str(work / "arbiter"),
                  "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    config = CONFIG.format(home=str(work / "home" / "{username}"), regions=str(work / "regions"),
                           server_env=server_env)
    hub = Hub(work, config, env={**fake_env, "PYTHONPATH": server_env["PYTHONPATH"]})
    try:
        with hub.running("alice", "bob", "carol", "dave", "rita", "erin", "frank"):
            yield hub
    finally:
        become_subreaper(False)


def stop_all(hub: Hub, *users: str) -> None:
    for user in users:
        if hub.server(user) is not None:
            hub.stop_server(user)


def form_page(hub: Hub, user: str, fields: dict[str, str] | None = None) -> tuple[int, str]:
    """The spawn page as ``user`` (GET), or the form posted with ``fields``."""
    browser = Browser(hub.url)
    browser.login(user)
    path = f"/hub/spawn/{user}"
    return browser.open(path) if fields is None else browser.post_form(path, fields)


def radio(html: str, value: str) -> str:
    match = re.search(rf'<input[^>]*value="{re.escape(value)}"[^>]*>', html)
    return match.group(0) if match else ""


def test_spawn_form_lists_this_users_choices(hub: Hub) -> None:
    status, html = form_page(hub, "erin")
    assert status == 200, html
    for name in ("quarter", "quarter-spread", "whole", "cpu", "custom"):
        assert radio(html, name), name
    assert not radio(html, "research")
    assert "20 GiB of GPU memory · 25% of compute · on Fake GPU" in html
    assert radio(form_page(hub, "rita")[1], "research")


def test_form_post_of_a_forged_choice_shows_the_reason(hub: Hub) -> None:
    status, html = form_page(hub, "erin", {"profile": "research"})
    assert status == 400
    assert "unknown GPU profile &#39;research&#39;" in html or "unknown GPU profile 'research'" in html
    assert "HTTP 400" not in html
    assert hub.server("erin") is None and hub.server_processes("erin") == []


@pytest.mark.parametrize("options, message", [
    ({"profile": "nope"}, "unknown GPU profile 'nope'; you may choose one of"),
    ({"profile": "research"}, "unknown GPU profile 'research'"),  # rita's group only
    ({"profile": "custom", "memory": "64GiB", "cores": "25"}, "outside the allowed range 2 GiB to 40 GiB"),
    ({"profile": "custom", "memory": "8GiB", "cores": "33"}, "must be 1% plus a multiple of 5%"),
    ({"profile": "custom", "memory": "9" * 30 + "TiB", "cores": "25"}, "is too large"),
    ({"profile": "quarter", "memory": "80GiB"}, "has a fixed size; unexpected field(s) ['memory']"),
    ({"profile": "cpu", "cores": "100"}, "unexpected field(s) ['cores']"),
    ({"profile": 5}, "must be one string"),
    ({"profile": ["quarter", "whole"]}, "must be one string"),
    ({"profile": {"name": "whole"}}, "must be one string"),
])
def test_tampered_requests_get_400_and_start_nothing(hub: Hub, options: dict[str, Any], message: str) -> None:
    status, body = hub.request("POST", "/hub/api/users/frank/server", options)
    assert status == 400, body
    assert message in body["message"]
    assert hub.server("frank") is None and hub.server_processes("frank") == []


def test_slices_policy_refusal_and_release(hub: Hub) -> None:
    try:
        # alice: a quarter, binpacked on GPU 0, with the slice in her server's env
        assert hub.spawn("alice", {"profile": "quarter"})[0] in (201, 202)
        state = hub.server("alice")["state"]["hami_gpu"]
        assert state["gpus"] == [GPU0] and state["memory"] == 20 * GiB and state["cores"] == 25
        env = process_env(hub.server_pid("alice"))
        region = Path(env["CUDA_DEVICE_MEMORY_SHARED_CACHE"])
        assert env["CUDA_VISIBLE_DEVICES"] == GPU0
        assert env["CUDA_DEVICE_MEMORY_LIMIT"] == "20g" and env["CUDA_DEVICE_SM_LIMIT"] == "25"
        assert env["JUPYTER_DEFAULT_PROVISIONER_NAME"] == "hami-provisioner"
        assert region == hub.dir / "regions" / "alice" / "server.region"
        assert stat.S_IMODE(region.parent.stat().st_mode) == 0o700
        assert region.parent.stat().st_uid == os.geteuid()

        # her kernel runs under libvgpu and sees one GPU of 20 GiB
        count, total, preload, kernel_region = hub.run_in_kernel("alice", KERNEL_PROBE).split()
        assert (int(count), int(total)) == (1, 20 * GiB)
        assert preload.endswith("libvgpu.so") and kernel_region == str(region)
        assert region.exists()  # libvgpu created the slice's region there

        # bob: a quarter with the spread policy goes to the idle GPU 1
        assert hub.spawn("bob", {"profile": "quarter-spread"})[0] in (201, 202)
        assert process_env(hub.server_pid("bob"))["CUDA_VISIBLE_DEVICES"] == GPU1

        # carol: a whole GPU does not fit; the allocator's message, and no process
        status, body = hub.request("POST", "/hub/api/users/carol/server", {"profile": "whole"})
        assert status == 409, body
        assert body["message"] == (
            "No GPU on this machine has all its memory and all its compute free for the "
            "'Whole GPU' slice (free now: GPU 0: 60 GiB, 75%; GPU 1: 60 GiB, 75%).")
        assert hub.server("carol") is None and hub.server_processes("carol") == []
        assert "disabled" in radio(form_page(hub, "carol")[1], "whole")

        # alice may not run a second GPU server
        status, body = hub.request("POST", "/hub/api/users/alice/servers/two", {"profile": "quarter"})
        assert status == 400 and "at most 1 are allowed per user" in body["message"], body
        assert hub.server("alice", "two") is None
        assert [p for p in hub.server_processes("alice")
                if process_env(p).get("JUPYTERHUB_SERVER_NAME") == "two"] == []

        # alice stops: GPU 0 is free again, her region is gone, and carol's whole GPU fits there
        hub.stop_server("alice")
        assert not region.exists()
        assert hub.spawn("carol", {"profile": "whole"})[0] in (201, 202)
        env = process_env(hub.server_pid("carol"))
        assert env["CUDA_VISIBLE_DEVICES"] == GPU0
        assert "CUDA_DEVICE_MEMORY_LIMIT" not in env and "CUDA_DEVICE_SM_LIMIT" not in env
    finally:
        stop_all(hub, "alice", "bob", "carol")


def test_placements_survive_a_hub_restart(hub: Hub) -> None:
    try:
        assert hub.spawn("dave", {"profile": "whole"})[0] in (201, 202)      # GPU 0
        assert hub.spawn("erin", {"profile": "quarter"})[0] in (201, 202)    # GPU 1
        pids = {u: hub.server_pid(u) for u in ("dave", "erin")}

        hub.stop()  # the servers keep running (cleanup_servers = False)
        for pid in pids.values():
            reap(pid)  # orphaned now: collect them when they are stopped below
        hub.start()

        for user, pid in pids.items():
            server = hub.server(user)
            assert server is not None and server["ready"] and server["state"]["pid"] == pid
        # a whole GPU would fit on GPU 1 if erin's quarter had been forgotten
        status, body = hub.request("POST", "/hub/api/users/frank/server", {"profile": "whole"})
        assert status == 409 and "GPU 0: 0 GiB, 0%; GPU 1: 60 GiB, 75%" in body["message"], body
        assert hub.server_processes("frank") == []

        # stopping a server of the previous hub frees its GPU in this one
        hub.stop_server("dave")
        wait_for("dave's server to exit", lambda: hub.server_processes("dave") == [], 30)
        assert "disabled" not in radio(form_page(hub, "frank")[1], "whole")
    finally:
        stop_all(hub, "dave", "erin", "frank")


def test_example_config_serves_login_and_the_spawn_form(tmp_path: Path) -> None:
    """The README's first command, on a machine without a GPU (as in CI)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH",)}
    env.update({"HAMI_HUB_PASSWORD": "first-run-pw", "HAMI_HUB_SYSTEM_USERS": "0",
                "HAMI_HUB_DATA_DIR": str(tmp_path / "data")})
    hub = Hub(tmp_path, "", env=env, config_file=ROOT / "examples" / "local" / "jupyterhub_config.py",
              args=[f"--JupyterHub.bind_url=http://127.0.0.1:{port}",
                    f"--JupyterHub.hub_port={free_port()}",
                    f"--ConfigurableHTTPProxy.api_url=http://127.0.0.1:{free_port()}"])
    hub.port, hub.url = port, f"http://127.0.0.1:{port}"
    try:
        hub.start()
        browser = Browser(hub.url)
        status, login = browser.open("/hub/login")
        assert status == 200 and "Sign in" in login
        browser.login("ada", "first-run-pw")
        status, page = browser.open("/hub/spawn")
        assert status == 200
        assert "This machine has no NVIDIA GPU; only CPU servers are offered." in page
        assert 'value="cpu"' in page and 'value="quarter"' not in page
        assert "any user name and the password 'first-run-pw'" in hub.log_path.read_text()
    finally:
        hub.stop()
        hub.kill_servers()
