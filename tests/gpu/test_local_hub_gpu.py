"""A real JupyterHub with LocalGpuSpawner on this machine's first GPU (real NVML).

user1 gets a quarter of the GPU (1/4 of its memory, 25% compute), user2 a half;
in a kernel that each user's server starts (so the hami provisioner applies),
PyTorch sees exactly the slice's memory and cannot allocate past it.  user3's
three quarters do not fit any more and are refused with the allocator's message.
Run on the GPU machine: pytest -m gpu tests/gpu/test_local_hub_gpu.py -v -s
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hub_harness import Hub  # noqa: E402

pytestmark = pytest.mark.gpu
pytest.importorskip("jupyterhub")
pytest.importorskip("pynvml")

MiB = 1 << 20

CONFIG = """
from hami_spawner import Allocator, discover_gpus
from hami_spawner import local
# One GPU only, so that "does not fit" means the same on a machine with several.
local.set_shared_allocator(Allocator(discover_gpus()[:1]))
c.JupyterHub.spawner_class = "hami_spawner.local.SimpleLocalGpuSpawner"
c.SimpleLocalGpuSpawner.home_dir_template = {home!r}
c.LocalGpuSpawner.region_root = {regions!r}
c.Spawner.environment.update({server_env!r})
c.GpuProfiles.profiles = [
    {{"name": "quarter", "display_name": "Quarter GPU", "memory": "{quarter}MiB", "cores": 25}},
    {{"name": "half", "display_name": "Half GPU", "memory": "{half}MiB", "cores": 50}},
    {{"name": "three-quarters", "display_name": "Three quarters", "memory": "{three}MiB", "cores": 75}},
]
"""

# In the kernel: what PyTorch sees, and whether it can go past the slice.
PROBE = """
import json, os, torch
free, total = torch.cuda.mem_get_info()
try:
    torch.empty(total + (1 << 30), dtype=torch.uint8, device="cuda")
    oom = False
except torch.OutOfMemoryError:
    oom = True
print(json.dumps({"total": total, "oom": oom, "devices": torch.cuda.device_count(),
                  "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "preload": os.environ.get("LD_PRELOAD", "")}))
"""


@pytest.fixture(scope="module")
def gpu_memory() -> int:
    from hami_spawner import discover_gpus
    gpus = discover_gpus()
    if not gpus:
        pytest.skip("NVML reports no GPU")
    return gpus[0].memory


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, gpu_memory: int) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("gpuhub")
    # The servers use the installed hami-jupyter (its libvgpu.so is built into the wheel);
    # LIBVGPU_LIBRARY (a hand-built library) and LD_LIBRARY_PATH (the driver) pass through.
    server_env = {"LIBVGPU_ARBITER_DIR": str(work / "arbiter"),
                  **{k: os.environ[k] for k in ("LIBVGPU_LIBRARY", "LD_LIBRARY_PATH") if k in os.environ}}
    quarter, half, three = (gpu_memory * k // 4 // MiB for k in (1, 2, 3))
    config = CONFIG.format(home=str(work / "home" / "{username}"), regions=str(work / "regions"),
                           server_env=server_env, quarter=quarter, half=half, three=three)
    hub = Hub(work, config)
    hub.start()
    try:
        yield hub
    finally:
        for user in ("user1", "user2", "user3"):
            try:
                if hub.server(user) is not None:
                    hub.stop_server(user)
            except Exception:
                pass
        hub.stop()
        hub.kill_servers()


def test_kernels_see_their_slice_and_a_full_gpu_refuses(hub: Hub, gpu_memory: int) -> None:
    uuids = set()
    for user, profile, quarters in (("user1", "quarter", 1), ("user2", "half", 2)):
        hub.create_user(user)
        status, body = hub.spawn(user, {"profile": profile}, timeout=120)
        assert status in (201, 202), body
        seen = json.loads(hub.run_in_kernel(user, PROBE, timeout=120).strip().splitlines()[-1])
        print(user, profile, seen)
        assert seen["total"] == gpu_memory * quarters // 4 // MiB * MiB, seen
        assert seen["oom"] is True, "allocated past the slice"
        assert seen["devices"] == 1 and seen["preload"].split(":")[0].endswith("libvgpu.so")
        uuids.add(seen["visible"])
    assert len(uuids) == 1 and next(iter(uuids)).startswith("GPU-")  # both on the one GPU

    hub.create_user("user3")
    status, body = hub.request("POST", "/hub/api/users/user3/server", {"profile": "three-quarters"})
    assert status == 409, body
    assert body["message"].startswith("No GPU on this machine has ") and \
        "for the 'Three quarters' slice (free now: GPU 0: " in body["message"], body
    assert hub.server("user3") is None and hub.server_processes("user3") == []
