"""LocalGpuSpawner and its hub's ``hami-arbiter``: started on the first GPU server,
restarted when it dies, told each server's slice (a grant), and named to servers."""
from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("jupyterhub", reason="needs JupyterHub: .venv/bin/pip install '.[test]'")
from jupyterhub.objects import Hub  # noqa: E402
from jupyterhub.spawner import LocalProcessSpawner  # noqa: E402
from traitlets.config import Config  # noqa: E402

from hami_arbiter.slices import Resolver  # noqa: E402
from hami_kernel.slice import GIB  # noqa: E402
from hami_spawner import arbiter as arbiter_mod  # noqa: E402
from hami_spawner import local  # noqa: E402
from hami_spawner.allocator import Allocator, Gpu  # noqa: E402
from hami_spawner.local import SimpleLocalGpuSpawner  # noqa: E402


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    local.set_shared_allocator(Allocator([Gpu(0, "GPU-0", "NVIDIA H100 80GB HBM3", 80 * GIB)]))
    servers: list[subprocess.Popen[bytes]] = []

    async def start(self: LocalProcessSpawner) -> tuple[str, int]:
        self.env_seen = self.get_env()
        servers.append(subprocess.Popen(["sleep", "60"]))  # the "server": a real process to grant
        self.pid = servers[-1].pid
        return "127.0.0.1", 12345

    async def stop(self: LocalProcessSpawner, now: bool = False) -> None:
        pass

    monkeypatch.setattr(LocalProcessSpawner, "start", start)
    monkeypatch.setattr(LocalProcessSpawner, "stop", stop)
    c = Config()
    c.GpuProfiles.profiles = [{"name": "quarter", "display_name": "Quarter", "memory": "20GiB", "cores": 25}]
    c.LocalGpuSpawner.region_root = str(tmp_path / "regions")
    yield c
    for sup in list(arbiter_mod._supervisors.values()):
        sup.stop()
    arbiter_mod._supervisors.clear()
    for p in servers:
        p.kill()
        p.wait()
    local.set_shared_allocator(None)


def _spawner(config: Config) -> Any:
    user = SimpleNamespace(name="alice", groups=[], admin=False, spawners={}, url="/user/alice/")
    s = SimpleLocalGpuSpawner(user=user, config=config, hub=Hub(ip="127.0.0.1", port=8081, base_url="/hub/"),
                              orm_spawner=SimpleNamespace(name="", display_name="", server=None))
    user.spawners[""] = s
    return s


def test_the_hub_runs_the_arbiter_grants_the_slice_and_restarts_it(hub: Config, tmp_path: Path) -> None:
    async def run() -> None:
        s = _spawner(hub)
        s.user_options = {"profile": "quarter"}
        s.clear_state()
        await s.run_pre_spawn_hook()
        await s.start()
        socket_path = tmp_path / "regions" / "arbiter" / "arbiter.sock"
        assert s.env_seen["LIBVGPU_ARBITER_SOCKET"] == str(socket_path)
        assert s.env_seen["HAMI_JUPYTER_EVENTS_DIR"] == str(socket_path.parent / "events")  # where %vgpu looks
        assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o666
        grants = tmp_path / "regions" / "arbiter-grants"
        assert stat.S_IMODE(os.stat(grants).st_mode) == 0o700
        # The daemon's resolver finds the server's slice from the grant.
        found = Resolver(grants_dir=str(grants)).slice_of(s.pid)
        assert found is not None and found.compute_share == 25 and found.memory_limit == 20 * GIB
        # Killed, it is started again within a few seconds.
        sup = s._arbiter
        first = sup.proc.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (sup.proc.pid == first or not socket_path.exists()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert sup.proc.pid != first and sup.proc.poll() is None and socket_path.exists()
        assert sup.restarts == 1
        # A server that stops takes its grant with it.
        await s.stop()
        assert list(grants.iterdir()) == []
    asyncio.run(run())


def test_the_arbiter_can_be_turned_off(hub: Config) -> None:
    hub.LocalGpuSpawner.arbiter = False

    async def run() -> None:
        s = _spawner(hub)
        s.user_options = {"profile": "quarter"}
        s.clear_state()
        await s.start()
        assert "LIBVGPU_ARBITER_SOCKET" not in s.env_seen and s._arbiter is None
    asyncio.run(run())
