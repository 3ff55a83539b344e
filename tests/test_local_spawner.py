"""LocalGpuSpawner without a hub: the form, form data, placement, env, state and restart.

The single-user process is not started here (LocalProcessSpawner.start/stop are
replaced by recorders); tests/test_local_hub.py runs the real thing.
"""
from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("jupyterhub", reason="needs JupyterHub: .venv/bin/pip install '.[test]' (the README's test command)")
from jupyterhub.objects import Hub  # noqa: E402
from jupyterhub.spawner import LocalProcessSpawner  # noqa: E402
from tornado import web  # noqa: E402
from traitlets.config import Config  # noqa: E402

from hami_kernel.slice import GIB, Slice  # noqa: E402
from hami_spawner import local  # noqa: E402
from hami_spawner.allocator import Allocator, Gpu, NoCapacity  # noqa: E402
from hami_spawner.form import NO_GPU_MESSAGE  # noqa: E402
from hami_spawner.local import LocalGpuSpawner, SimpleLocalGpuSpawner  # noqa: E402

H100, A10 = "NVIDIA H100 80GB HBM3", "NVIDIA A10"
PROFILES = [
    {"name": "quarter", "display_name": "Quarter <GPU>", "memory": "20GiB", "cores": 25,
     "description": "for <b>notebooks</b> & small models"},
    {"name": "half", "display_name": "Half GPU", "memory": "40GiB", "cores": 50, "default": True},
    {"name": "whole", "display_name": "Whole GPU"},
    {"name": "research", "display_name": "Research 60G", "memory": "60GiB", "groups": ["research"]},
    {"name": "a10", "display_name": "On an A10", "memory": "8GiB", "gpu_types": ["A10"]},
]


def gpus(*names: str) -> list[Gpu]:
    return [Gpu(i, f"GPU-{i}", name, 80 * GIB) for i, name in enumerate(names)]


@pytest.fixture
def allocator() -> Any:
    alloc = Allocator(gpus(H100))
    local.set_shared_allocator(alloc)
    yield alloc
    local.set_shared_allocator(None)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    c = Config()
    c.GpuProfiles.profiles = PROFILES
    c.LocalGpuSpawner.region_root = str(tmp_path / "regions")
    c.LocalGpuSpawner.arbiter = False  # test_local_arbiter.py starts the real daemon
    return c


class Recorder:
    """Stands in for LocalProcessSpawner.start/stop: records the env the server would get."""

    def __init__(self) -> None:
        self.envs: list[dict[str, str]] = []
        self.fail = False
        self.stops = 0

    async def start(self, spawner: LocalProcessSpawner) -> tuple[str, int]:
        self.envs.append(spawner.get_env())
        if self.fail:
            raise RuntimeError("the server did not start")
        spawner.pid = 4242
        return "127.0.0.1", 12345

    async def stop(self, spawner: LocalProcessSpawner, now: bool = False) -> None:
        self.stops += 1


@pytest.fixture
def process(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(LocalProcessSpawner, "start", lambda self: rec.start(self))
    monkeypatch.setattr(LocalProcessSpawner, "stop", lambda self, now=False: rec.stop(self, now))
    return rec


def make_user(name: str = "alice", groups: tuple[str, ...] = (), admin: bool = False) -> Any:
    return SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups], admin=admin,
                           spawners={}, url=f"/user/{name}/")


def spawner(config: Config, user: Any = None, name: str = "", cls: type = SimpleLocalGpuSpawner) -> Any:
    user = user or make_user()
    s = cls(user=user, config=config, hub=Hub(ip="127.0.0.1", port=8081, base_url="/hub/"),
            orm_spawner=SimpleNamespace(name=name, display_name=name, server=None))
    user.spawners[name] = s
    return s


def spawn(s: Any, options: dict[str, Any]) -> Any:
    """What JupyterHub does: user_options, clear_state, the pre-spawn hook, start."""
    async def run() -> Any:
        s.user_options = options
        s.clear_state()
        await s.run_pre_spawn_hook()
        return await s.start()
    return asyncio.run(run())


def form(s: Any) -> str:
    return asyncio.run(s.get_options_form())


def radio(html: str, value: str) -> str:
    """The <input> tag of one radio button ("" if absent)."""
    marker = f'value="{value}"'
    if marker not in html:
        return ""
    start = html.rindex("<input", 0, html.index(marker))
    return html[start:html.index(">", start) + 1]


# -- the form ---------------------------------------------------------------------------


def test_form_offers_this_users_profiles_with_size_and_model(allocator: Allocator, config: Config) -> None:
    html = form(spawner(config))
    for name in ("quarter", "half", "whole", "a10", "cpu"):
        assert radio(html, name), name
    assert not radio(html, "research")  # another group's profile is not shown
    assert "checked" in radio(html, "half")  # the admin's default
    assert "20 GiB of GPU memory · 25% of compute · on NVIDIA H100 80GB HBM3" in html
    assert "all GPU memory (80 GiB) · all compute" in html
    assert "CPU only (no GPU)" in html
    # escaped, never markup
    assert "Quarter &lt;GPU&gt;" in html and "<GPU>" not in html
    assert "for &lt;b&gt;notebooks&lt;/b&gt; &amp; small models" in html
    # a10 has no GPU of its type on this machine: disabled, with why
    assert "disabled" in radio(html, "a10")
    assert "no GPU of type A10" in html
    assert not radio(html, "custom")  # no custom range configured


def test_form_shows_group_and_admin_profiles(allocator: Allocator, config: Config) -> None:
    assert radio(form(spawner(config, make_user("rita", ("research",)))), "research")
    assert radio(form(spawner(config, make_user("root", admin=True))), "research")


def test_form_disables_what_does_not_fit_now(allocator: Allocator, config: Config) -> None:
    allocator.place("bob", Slice(50 * GIB, 40))
    html = form(spawner(config))
    assert "disabled" not in radio(html, "quarter")
    for name in ("half", "whole"):
        assert "disabled" in radio(html, name), name
    assert "No GPU on this machine has 40 GiB and 50% compute free for the &#x27;Half GPU&#x27; slice" in html
    assert "checked" in radio(html, "quarter")  # the default does not fit: the first that does


def test_form_without_gpu_offers_only_cpu(config: Config) -> None:
    local.set_shared_allocator(Allocator([]))
    try:
        html = form(spawner(config))
    finally:
        local.set_shared_allocator(None)
    assert NO_GPU_MESSAGE in html
    assert [v for v in ("quarter", "half", "whole", "a10") if radio(html, v)] == []
    assert "checked" in radio(html, "cpu")


def test_form_custom_inputs(allocator: Allocator, config: Config) -> None:
    config.GpuProfiles.custom = {"memory_min": "2GiB", "memory_max": "40GiB",
                                 "memory_step": "512MiB", "cores_step": 5, "count_max": 1}
    html = form(spawner(config))
    assert radio(html, "custom")
    assert 'name="custom_memory" min="2" max="40" step="0.5"' in html
    assert 'name="custom_cores" min="1" max="100" step="5"' in html
    assert "custom_count" not in html
    allocator.place("big", Slice(79 * GIB, 10))
    assert "disabled" in radio(form(spawner(config)), "custom")


def test_options_from_form(allocator: Allocator, config: Config) -> None:
    s = spawner(config)
    hidden = {"custom_memory": ["2"], "custom_cores": ["1"]}  # every form posts these
    assert s.run_options_from_form({"profile": ["quarter"], **hidden}) == {"profile": "quarter"}
    assert s.run_options_from_form({"profile": ["custom"], "custom_memory": ["12.5"],
                                    "custom_cores": ["30"], "custom_count": ["2"]}) == {
        "profile": "custom", "memory": "12.5GiB", "cores": "30", "count": "2"}
    assert s.run_options_from_form({}) == {}
    with pytest.raises(web.HTTPError) as info:
        s.run_options_from_form({"profile": ["quarter", "whole"]})
    assert info.value.status_code == 400 and "one value" in info.value.jupyterhub_message
    assert s.options_from_query({"profile": ["half"]}) == {"profile": "half"}
    assert s.options_from_query({"gpu": ["lots"]}) == {"gpu": ["lots"]}  # refused later, not defaulted


# -- placement, env, release ----------------------------------------------------------------


def test_start_places_the_slice_and_sets_the_env(allocator: Allocator, config: Config,
                                                 process: Recorder, tmp_path: Path) -> None:
    s = spawner(config)
    stale = tmp_path / "regions" / "alice" / "server.region"
    stale.parent.mkdir(parents=True)
    stale.write_text("an earlier server's region")
    assert spawn(s, {"profile": "quarter"}) == ("127.0.0.1", 12345)
    env = process.envs[-1]
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-0"
    assert env["CUDA_DEVICE_MEMORY_LIMIT"] == "20g" and env["CUDA_DEVICE_SM_LIMIT"] == "25"
    assert env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == str(stale)
    assert env["JUPYTER_DEFAULT_PROVISIONER_NAME"] == "hami-provisioner"
    assert "LD_PRELOAD" not in env  # kernels get libvgpu from the provisioner
    assert not stale.exists()  # its limit would have stood over the new slice's
    assert stat.S_IMODE(os.stat(stale.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "regions").st_mode) == 0o711
    assert allocator.get("alice").gpus == ("GPU-0",)
    assert s.get_state()["hami_gpu"] == {"profile": "quarter", "display_name": "Quarter <GPU>",
                                         "gpus": ["GPU-0"], "memory": 20 * GIB, "cores": 25}


def test_named_servers_get_their_own_region_and_whole_gpu_has_no_limits(
        allocator: Allocator, config: Config, process: Recorder, tmp_path: Path) -> None:
    config.JupyterHub.allow_named_servers = True
    s = spawner(config, name="big one")
    spawn(s, {"profile": "whole"})
    env = process.envs[-1]
    assert env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == str(tmp_path / "regions" / "alice" /
                                                         "server-big_20one.region")
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-0"
    assert not [k for k in env if k.startswith(("CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_SM_LIMIT"))]
    assert allocator.get("alice:big one") is not None


def test_cpu_server_sees_no_gpu(allocator: Allocator, config: Config, process: Recorder) -> None:
    config.Spawner.environment = {"CUDA_DEVICE_MEMORY_LIMIT": "80g"}
    s = spawner(config)
    spawn(s, {"profile": "cpu"})
    env = process.envs[-1]
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_DEVICE_MEMORY_LIMIT" not in env and "CUDA_DEVICE_MEMORY_SHARED_CACHE" not in env
    # The provisioner still starts its kernels, without libvgpu, so that %vgpu is there to say so.
    assert env["JUPYTER_DEFAULT_PROVISIONER_NAME"] == "hami-provisioner"
    assert allocator.placements == {} and "hami_gpu" not in s.get_state()


def test_preload_server_and_no_default_provisioner(allocator: Allocator, config: Config,
                                                   process: Recorder, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    lib = tmp_path / "libvgpu.so"
    lib.write_bytes(b"")
    monkeypatch.setenv("LIBVGPU_LIBRARY", str(lib))
    config.LocalGpuSpawner.preload_server = True
    config.LocalGpuSpawner.default_provisioner = ""
    config.Spawner.environment = {"LD_PRELOAD": "/opt/other.so"}
    spawn(spawner(config), {"profile": "quarter"})
    env = process.envs[-1]
    assert env["LD_PRELOAD"] == f"{lib}:/opt/other.so"
    assert "JUPYTER_DEFAULT_PROVISIONER_NAME" not in env


def test_refused_when_full_with_the_allocators_message(allocator: Allocator, config: Config,
                                                       process: Recorder) -> None:
    allocator.place("bob", Slice(50 * GIB, 50))
    s = spawner(config)
    with pytest.raises(web.HTTPError) as info:
        spawn(s, {"profile": "whole"})
    assert info.value.status_code == 409
    assert info.value.jupyterhub_message == (
        "No GPU on this machine has all its memory and all its compute free for the "
        "'Whole GPU' slice (free now: GPU 0: 30 GiB, 50%).")
    assert process.envs == []  # no process
    assert set(allocator.placements) == {"bob"}


def test_no_gpu_of_the_type_is_refused(allocator: Allocator, config: Config, process: Recorder) -> None:
    with pytest.raises(web.HTTPError) as info:
        spawn(spawner(config), {"profile": "a10"})
    # 400, not 409: no GPU of that type will ever be free here.
    assert info.value.status_code == 400
    assert info.value.jupyterhub_message == (
        "This machine has no GPU of type A10 for the 'On an A10' slice (it has GPU 0: NVIDIA H100 80GB "
        "HBM3), so it can never be placed here. Choose “CPU only (no GPU)” instead (profile 'cpu').")
    assert process.envs == []


def test_forged_choice_is_refused_before_placing(allocator: Allocator, config: Config,
                                                 process: Recorder) -> None:
    for options, message in (({"profile": "research"}, "unknown GPU profile 'research'"),
                             ({"profile": "quarter", "memory": "80GiB"}, "unexpected field"),
                             ({"profile": 5}, "must be one string"),
                             ({"gpu": "lots"}, "no GPU profile chosen")):
        with pytest.raises(web.HTTPError) as info:
            spawn(spawner(config), options)
        assert info.value.status_code == 400 and message in info.value.jupyterhub_message, options
    assert process.envs == [] and allocator.placements == {}


def test_failed_start_releases(allocator: Allocator, config: Config, process: Recorder) -> None:
    process.fail = True
    with pytest.raises(RuntimeError):
        spawn(spawner(config), {"profile": "whole"})
    assert allocator.placements == {}


def test_stop_and_death_release(allocator: Allocator, config: Config, process: Recorder,
                                tmp_path: Path) -> None:
    s = spawner(config)
    spawn(s, {"profile": "whole"})
    region = Path(process.envs[-1]["CUDA_DEVICE_MEMORY_SHARED_CACHE"])
    region.write_text("in use")
    asyncio.run(s.stop())
    assert allocator.placements == {} and s.placement is None and not region.exists()
    spawn(s, {"profile": "whole"})  # fits again
    s.clear_state()  # what the hub does when poll() finds the process gone
    assert allocator.placements == {} and s.gpu_profile is None


def test_state_survives_a_hub_restart(config: Config, process: Recorder) -> None:
    local.set_shared_allocator(Allocator(gpus(H100, H100)))
    try:
        alice = spawner(config)
        spawn(alice, {"profile": "half"})
        state = alice.get_state()
        # the hub restarts: a new allocator, a new spawner that loads the saved state
        restarted = Allocator(gpus(H100, H100))
        local.set_shared_allocator(restarted)
        again = spawner(config)
        again.load_state(state)
        assert restarted.get("alice") == alice.placement
        assert again.gpu_profile.name == "half" and again.gpu_profile.slice == Slice(40 * GIB, 50)
        assert again.get_state()["hami_gpu"] == state["hami_gpu"]
        again.load_state(state)  # loading twice changes nothing
        assert len(restarted.placements) == 1
        assert restarted.place("x", Slice(None, None)).gpus == ("GPU-1",)
        with pytest.raises(NoCapacity):  # would fit on GPU 0 if alice's slice had been lost
            restarted.place("y", Slice(None, None))
        asyncio.run(again.stop())
        assert "alice" not in restarted.placements
    finally:
        local.set_shared_allocator(None)


def test_state_of_a_vanished_gpu_is_dropped_clearly(config: Config, process: Recorder,
                                                    caplog: Any) -> None:
    local.set_shared_allocator(Allocator(gpus(H100, H100)))
    try:
        spawn(spawner(config, make_user("bob")), {"profile": "whole"})
        alice = spawner(config)
        spawn(alice, {"profile": "whole"})
        assert alice.placement.gpus == ("GPU-1",)
        local.set_shared_allocator(Allocator(gpus(H100)))  # GPU-1 is gone after the restart
        again = spawner(config)
        with caplog.at_level(logging.ERROR):
            again.load_state(alice.get_state())
        assert again.placement is None and again.gpu_profile is None
        assert "GPU(s) GPU-1 no longer present" in caplog.text
        assert "is not restored" in caplog.text
    finally:
        local.set_shared_allocator(None)


def test_max_gpu_servers_per_user(allocator: Allocator, config: Config, process: Recorder) -> None:
    config.GpuProfiles.max_gpu_servers_per_user = 1
    user = make_user()
    first = spawner(config, user)
    spawn(first, {"profile": "quarter"})
    first._spawn_pending = True  # active, as far as Spawner.active can tell
    assert first.active
    with pytest.raises(web.HTTPError) as info:
        spawn(spawner(config, user, name="second"), {"profile": "quarter"})
    assert info.value.status_code == 400 and "at most 1" in info.value.jupyterhub_message
    spawn(spawner(config, user, name="third"), {"profile": "cpu"})  # a CPU server is fine


# -- the region directory ---------------------------------------------------------------


def test_region_directory_is_owned_by_the_user_under_root(config: Config, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    chowned = []
    monkeypatch.setattr(local.os, "chown", lambda path, uid, gid, **kw: chowned.append((str(path), uid, gid)))
    monkeypatch.setattr(local.os, "geteuid", lambda: 0)
    monkeypatch.setattr(local.pwd, "getpwnam", lambda name: SimpleNamespace(pw_uid=1234, pw_gid=99))
    s = spawner(config, cls=LocalGpuSpawner)
    assert s.region_owner() == (1234, 99)
    s.prepare_region()
    assert chowned == [(str(tmp_path / "regions" / "alice"), 1234, 99)]
    assert spawner(config).region_owner() is None


def test_region_root_that_is_a_symlink_is_refused(config: Config, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "regions").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="not a directory"):
        spawner(config).prepare_region()


def test_odd_names_make_safe_file_names(config: Config) -> None:
    s = spawner(config, make_user("../eve@x"), name="a/b")
    assert s.region_path().name == "server-a_2fb.region"
    assert s.region_path().parent.name == "_.._2feve_40x"
    assert s.region_path().parent.parent == Path(config.LocalGpuSpawner.region_root)


def test_default_region_root() -> None:
    assert LocalGpuSpawner(user=make_user()).region_root == f"/tmp/hami-jupyter-{os.getuid()}"


def test_allocator_check_places_nothing() -> None:
    alloc = Allocator(gpus(H100))
    alloc.check(Slice(80 * GIB, None))
    assert alloc.placements == {}
    alloc.place("a", Slice(GIB, 10))
    with pytest.raises(NoCapacity, match="'probe' slice"):
        alloc.check(Slice(80 * GIB, None), label="probe")
    assert set(alloc.placements) == {"a"}


def test_spawner_classes_have_short_names_for_jupyterhub() -> None:
    # c.JupyterHub.spawner_class = "hami-local" works through these entry points
    from importlib.metadata import entry_points

    from hami_spawner.kubernetes import HamiSpawner
    from hami_spawner.local import LocalGpuSpawner, SimpleLocalGpuSpawner
    found = {ep.name: ep.load() for ep in entry_points(group="jupyterhub.spawners")
             if ep.name.startswith("hami")}
    assert found == {"hami-local": LocalGpuSpawner, "hami-local-simple": SimpleLocalGpuSpawner,
                     "hami": HamiSpawner}


def test_user_options_are_taken_by_the_choice_check_unless_the_admin_has_a_hook() -> None:
    from traitlets.config import Config
    assert spawner(Config()).apply_user_options.__name__ == "_taken_by_the_pre_spawn_hook"
    config = Config()
    config.Spawner.apply_user_options = {"image": "image"}
    assert spawner(config).apply_user_options == {"image": "image"}
