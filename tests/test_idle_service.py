"""hami-idle-service in a real JupyterHub: who holds GPU memory idle, for admins only.

The hub runs LocalGpuSpawner over two fake GPUs; alice's server holds an
idle kernel with 300 MiB, bob's a kernel that launches GPU work all along.
The service (managed by the hub, as examples/local/jupyterhub_config.py
starts it) reads both servers with its own token and applies a hub-wide
"shutdown" policy with a long grace: alice's kernel is announced to her, by
her own server, and bob's is left alone.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Iterator

import pytest

pytest.importorskip("jupyterhub")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from cbuild import ROOT, build_tests  # noqa: E402
from hub_harness import Browser, Hub, become_subreaper, fake_driver_dir, free_port, wait_for  # noqa: E402
from kernel_code import ALLOCATOR  # noqa: E402
from test_idle_reclaim import LAUNCHING  # noqa: E402

MiB = 1 << 20
GPU0 = "GPU-face0000-1020-3040-5060-708090a0b0c0"
GPU1 = "GPU-face0001-1020-3040-5060-708090a0b0c0"
SERVICE = "/services/vgpu-idle/"

CONFIG = """
from hami_idle import service_config
c.JupyterHub.spawner_class = "hami_spawner.local.SimpleLocalGpuSpawner"
c.SimpleLocalGpuSpawner.home_dir_template = {home!r}
c.LocalGpuSpawner.region_root = {regions!r}
c.Spawner.environment.update({server_env!r})
c.Spawner.args = c.Spawner.args + ["--IdlePolicy.action=off", "--IdlePolicy.idle_after=3",
                                   "--IdlePolicy.check_interval=0.5", "--SliceMonitor.sample_interval=0.25"]
c.GpuProfiles.profiles = [
    {{"name": "quarter", "display_name": "Quarter GPU", "memory": "20GiB", "cores": 25}},
    {{"name": "quarter-spread", "display_name": "Quarter GPU (spread)", "memory": "20GiB", "cores": 25,
      "policy": "spread"}},
]
c.Authenticator.admin_users = {{"ada"}}
_service, _role = service_config(port={port}, args=["--proxy-url={proxy}", "--action=shutdown", "--idle-after=3",
                                                    "--min-memory=128MiB", "--grace=600", "--check-interval=1"])
c.JupyterHub.services.append(_service)
c.JupyterHub.load_roles.append(_role)
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    become_subreaper()
    build = build_tests("plain")
    work = tmp_path_factory.mktemp("idlehub")
    fake = {"LD_LIBRARY_PATH": str(fake_driver_dir(build)), "FAKE_CUDA_DEVICE_COUNT": "2",
            "FAKE_CUDA_DEVICE_MEMORY": "80g", "LIBVGPU_LIBRARY": str(build / "csrc" / "libvgpu.so")}
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    server_env = {**fake, "LIBVGPU_ARBITER_DIR": str(work / "arbiter"), "PYTHONPATH": pythonpath}
    hub = Hub(work, "", env={**fake, "PYTHONPATH": pythonpath})
    hub.config_file.write_text(hub.base_config() + CONFIG.format(
        home=str(work / "home" / "{username}"), regions=str(work / "regions"), server_env=server_env,
        port=free_port(), proxy=hub.url))
    try:
        with hub.running("ada", "alice", "bob"):
            yield hub
    finally:
        become_subreaper(False)


def start_kernel(hub: Hub, user: str, code: str) -> str:
    """A kernel in the user's server that runs ``code`` and stays."""
    status, kernel = hub.request("POST", f"/user/{user}/api/kernels", {"name": "python3"})
    assert status == 201, (status, kernel)
    asyncio.run(hub._execute(f"/user/{user}/api/kernels/{kernel['id']}/channels", code, 60, hub.token))
    return kernel["id"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def kernels(hub: Hub) -> dict[str, str]:
    assert hub.spawn("alice", {"profile": "quarter"})[0] in (201, 202)
    assert hub.spawn("bob", {"profile": "quarter-spread"})[0] in (201, 202)
    return {"alice": start_kernel(hub, "alice", ALLOCATOR + "\nassert alloc(300) == 0\n"),
            "bob": start_kernel(hub, "bob", LAUNCHING)}


def admin_view(hub: Hub, token: str) -> dict[str, Any]:
    status, doc = hub.get(SERVICE + "api/idle", token=token)
    assert status == 200, (status, doc)
    return doc  # type: ignore[no-any-return]


def test_admins_see_who_holds_idle_memory_and_the_hub_policy_applies(hub: Hub, kernels: dict[str, str]) -> None:
    token = hub.user_token("ada")

    def alice_idle() -> dict[str, Any] | None:
        doc = admin_view(hub, token)
        servers = {s["user"]: s for s in doc["servers"]}
        ok = servers.get("alice", {}).get("idle_memory_bytes") and servers["alice"]["kernels"][0]["reclaim_at"]
        return doc if ok else None

    doc = wait_for("alice's kernel to be idle and announced", alice_idle, timeout=90)
    servers = {s["user"]: s for s in doc["servers"]}
    assert set(servers) == {"alice", "bob"}
    (held,) = servers["alice"]["kernels"]
    assert held["kernel_id"] == kernels["alice"] and held["memory_bytes"] >= 300 * MiB
    assert held["idle"] and held["reclaimable"] and servers["alice"]["idle_memory_bytes"] == held["memory_bytes"]
    (busy,) = servers["bob"]["kernels"]
    assert busy["memory_bytes"] >= 120 * MiB and not busy["idle"] and servers["bob"]["idle_memory_bytes"] == 0
    assert doc["idle_memory_bytes"] == held["memory_bytes"]
    # Each GPU with its slices: alice's on GPU 0 (binpack), bob's on GPU 1 (spread).
    gpus = {g["uuid"]: g for g in doc["gpus"]}
    assert [(s["user"], s["memory_limit_bytes"]) for s in gpus[GPU0]["slices"]] == [("alice", 20 << 30)]
    assert [s["user"] for s in gpus[GPU1]["slices"]] == ["bob"]
    assert gpus[GPU0]["idle_memory_bytes"] == held["memory_bytes"] and gpus[GPU1]["idle_memory_bytes"] == 0

    # The hub policy went through alice's own server, which told her; bob got nothing.
    assert any(a["kernel_id"] == kernels["alice"] and a["state"] in ("warned", "pending") for a in doc["actions"])
    assert all(a["kernel_id"] != kernels["bob"] for a in doc["actions"])
    status, usage = hub.get("/user/alice/api/vgpu/v1/usage", token=hub.user_token("alice"))
    assert status == 200
    (notice,) = [n for n in usage["idle"]["notices"] if n["kind"] == "warning"]
    assert notice["source"] == "hub" and notice["kernel_id"] == kernels["alice"]
    assert "will be shut down in 10 min" in notice["message"]
    status, usage = hub.get("/user/bob/api/vgpu/v1/usage", token=hub.user_token("bob"))
    assert usage["idle"]["notices"] == []

    # Prometheus: idle memory per GPU and per slice, hub-wide.
    status, text = hub.get(SERVICE + "metrics", token=token)
    assert status == 200
    samples = {(m.name, tuple(sorted(m.labels.items()))): m.value
               for family in text_string_to_metric_families(text) for m in family.samples}
    assert samples[("hami_vgpu_hub_gpu_idle_memory_bytes", (("device_name", "Fake GPU"), ("device_uuid", GPU0)))] \
        == held["memory_bytes"]
    assert samples[("hami_vgpu_hub_slice_idle_memory_bytes",
                    (("device_uuid", GPU1), ("server", ""), ("user", "bob")))] == 0


def test_the_page_is_for_admins_only(hub: Hub, kernels: dict[str, str]) -> None:
    admin = Browser(hub.url)
    admin.login("ada")
    status, page = admin.open(SERVICE)
    assert status == 200 and "Idle GPU memory" in page and GPU0 in page and GPU1 in page
    assert "alice" in page and "bob" in page

    user = Browser(hub.url)
    user.login("alice")
    status, page = user.open(SERVICE)
    # Refused: by the hub already (she may not log in to the service), with no figures shown.
    assert status == 403
    assert GPU0 not in page and "Idle GPU memory" not in page
    # Her token gets the same answer from the API, and no token gets none.
    status, body = hub.get(SERVICE + "api/idle", token=hub.user_token("alice"))
    assert status == 403 and "not an admin" in body["message"]
    status, body = hub.get(SERVICE + "metrics", token=hub.user_token("bob"))
    assert status == 403
    status, body = hub.get(SERVICE + "api/idle", token="not-a-token")
    assert status == 401


def test_the_hubs_steps_through_a_servers_reclaim_endpoint(hub: Hub, kernels: dict[str, str]) -> None:
    """What the service sends, sent by a test with a service token: announced, then shut down, memory back."""
    small = start_kernel(hub, "alice", ALLOCATOR + "\nassert alloc(50) == 0\n")  # under the service's 128 MiB
    body = {"action": "shutdown", "idle_after": 1, "min_memory": "32MiB", "grace": 0, "source": "test"}
    path = f"/user/alice/api/vgpu/v1/kernels/{small}/reclaim"

    def step() -> dict[str, Any]:
        status, reply = hub.request("POST", path, body)
        assert status == 200, (status, reply)
        return reply  # type: ignore[no-any-return]
    warned = wait_for("the kernel to be idle for 1 s", lambda: (r := step())["state"] == "warned" and r, timeout=60)
    assert warned["deadline"] > 0
    done = step()
    assert done["state"] == "shut_down" and done["freed_bytes"] >= 50 * MiB and done["remaining_bytes"] == 0
    status, alive = hub.get("/user/alice/api/kernels")
    assert small not in {k["id"] for k in alive} and kernels["alice"] in {k["id"] for k in alive}
    # Alice was told both, by her server, in order.
    status, usage = hub.get("/user/alice/api/vgpu/v1/usage")
    kinds = [n["kind"] for n in usage["idle"]["notices"] if n["kernel_id"] == small]
    assert kinds == ["warning", "shutdown"]
