"""HamiSpawner's pods: every example profile as a valid Kubernetes pod with HAMi's limits.

Pods are built by KubeSpawner's own get_pod_manifest() for a fake user (as
KubeSpawner's tests do) from ``examples/kubernetes/jupyterhub_config.py`` and
checked against the Kubernetes 1.30 OpenAPI schema, strict (unknown fields
fail), offline with kubernetes-validate.  No API server is contacted.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, Iterator

import kubernetes_validate
import yaml
import pytest
from kubernetes_asyncio.config import kube_config
from tornado import web
from traitlets.config import Config, PyFileConfigLoader

from hami_kernel.slice import GIB
from hami_spawner.kubernetes import HamiSpawner

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kubernetes"
K8S_VERSION = "1.30"
LIB = "/usr/local/lib/hami-jupyter/libvgpu.so"
GPU_IMAGE = "registry.example.org/jupyter/pytorch-notebook-hami:cuda12-python-3.12"  # the example's


@pytest.fixture(scope="module", autouse=True)
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """KubeSpawner loads a client config when built; give it one that is never used.

    kubernetes_asyncio read $KUBECONFIG when imported, so its default path is set."""
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text("apiVersion: v1\nkind: Config\n"
                    "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
                    "users: [{name: u, user: {token: t}}]\n"
                    "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
                    "current-context: x\n")
    saved = (kube_config.KUBE_CONFIG_DEFAULT_LOCATION,
             os.environ.pop("KUBERNETES_SERVICE_HOST", None))
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
    yield
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved[0]
    if saved[1] is not None:
        os.environ["KUBERNETES_SERVICE_HOST"] = saved[1]


def example_config(**traits: Any) -> Config:
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(EXAMPLE)).load_config()
    for key, value in traits.items():
        setattr(config.HamiSpawner, key, value)
    return config


def fake_user(name: str = "alice", groups: tuple[str, ...] = ("research", "power"),
              admin: bool = False) -> SimpleNamespace:
    return SimpleNamespace(name=name, id=7, url=f"/user/{name}/", admin=admin, spawners={},
                           groups=[SimpleNamespace(name=g) for g in groups])


def fake_hub() -> SimpleNamespace:
    return SimpleNamespace(public_host="", url="http://hub:8081/hub/", base_url="/hub/",
                           api_url="http://hub:8081/hub/api")


def with_spawner(test: Callable[[HamiSpawner], Awaitable[Any]], user: SimpleNamespace | None = None,
                 config: Config | None = None, **traits: Any) -> Any:
    """Run ``test(spawner)`` in a fresh event loop (KubeSpawner's API client wants one)."""
    async def main() -> Any:
        spawner = HamiSpawner(config=config or example_config(**traits),
                              user=user or fake_user(), hub=fake_hub(), _mock=True)
        return await test(spawner)
    return asyncio.run(main())


async def manifest(spawner: HamiSpawner, choice: dict[str, Any]) -> dict[str, Any]:
    """What start() sends: pre-spawn hook (the check), profile overrides, the pod."""
    spawner.user_options = choice
    await spawner.run_pre_spawn_hook()
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    return spawner.api.api_client.sanitize_for_serialization(pod)


def manifests(choices: list[dict[str, Any]], **traits: Any) -> list[dict[str, Any]]:
    """Pods for choices made one after the other on one spawner (a user restarting)."""
    async def test(spawner: HamiSpawner) -> list[dict[str, Any]]:
        return [await manifest(spawner, choice) for choice in choices]
    return with_spawner(test, **traits)


def gpu_limits(pod: dict[str, Any]) -> dict[str, str]:
    limits = pod["spec"]["containers"][0]["resources"].get("limits") or {}
    return {k: v for k, v in limits.items() if k.startswith("nvidia.com/")}


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


# name -> (choice, HAMi limits, GPU-type annotations, per-GPU policy)
EXPECTED: dict[str, tuple[dict[str, str], dict[str, str], dict[str, str], str | None]] = {
    "small": ({"profile": "small"},
              {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4096", "nvidia.com/gpucores": "25"},
              {}, "binpack"),
    "medium": ({"profile": "medium"},
               {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "16384", "nvidia.com/gpucores": "50"},
               {"nvidia.com/nouse-gputype": "T4"}, "binpack"),
    "a100-40": ({"profile": "a100-40"}, {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "40960"},
                {"nvidia.com/use-gputype": "A100"}, "binpack"),
    "h100-whole": ({"profile": "h100-whole"}, {"nvidia.com/gpu": "1"},
                   {"nvidia.com/use-gputype": "H100"}, "spread"),
    "two-gpus": ({"profile": "two-gpus"}, {"nvidia.com/gpu": "2"}, {}, "binpack"),
    "custom": ({"profile": "custom", "memory": "10GiB", "cores": "35"},
               {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "10240", "nvidia.com/gpucores": "35"},
               {}, "binpack"),
    "cpu": ({"profile": "cpu"}, {}, {}, None),
}


def test_every_example_profile_is_covered() -> None:
    names = {p["name"] for p in example_config().GpuProfiles.profiles}
    assert names | {"custom", "cpu"} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_profile_pod(name: str) -> None:
    choice, limits, types, policy = EXPECTED[name]
    (pod,) = manifests([choice])
    assert kubernetes_validate.validate(pod, K8S_VERSION, strict=True) == K8S_VERSION
    assert gpu_limits(pod) == limits
    assert not any(k.startswith("nvidia.com/") for k in
                   pod["spec"]["containers"][0]["resources"].get("requests") or {})
    annotations = pod["metadata"].get("annotations") or {}
    hami = {k: v for k, v in annotations.items() if k.startswith(("nvidia.com/", "hami.io/"))}
    env = env_of(pod)
    if policy is None:  # the CPU choice: nothing of HAMi, and no GPU visible
        assert hami == {} and "schedulerName" not in pod["spec"] and slice_file_of(pod) is None
        assert env["NVIDIA_VISIBLE_DEVICES"] == "none"
        assert not {"LD_PRELOAD", "CUDA_DISABLE_CONTROL", "CUDA_DEVICE_MEMORY_LIMIT"} & set(env)
        assert pod["spec"]["containers"][0]["image"].startswith("quay.io/jupyter/scipy")
        return
    assert hami == {**types, "hami.io/gpu-scheduler-policy": policy,
                    "hami.io/node-scheduler-policy": "binpack"}
    assert pod["spec"]["schedulerName"] == "hami-scheduler"
    assert env["CUDA_DISABLE_CONTROL"] == "true"
    assert env["LD_PRELOAD"] == env["LIBVGPU_LIBRARY"] == LIB
    assert env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == "/tmp/libvgpu.region"
    assert "NVIDIA_VISIBLE_DEVICES" not in env  # HAMi's device plugin sets it
    mib = int(limits.get("nvidia.com/gpumem", 0))  # the same limit, in HAMi-core's env form
    assert env.get("CUDA_DEVICE_MEMORY_LIMIT") == (f"{mib // 1024}g" if mib else None)
    assert env.get("CUDA_DEVICE_SM_LIMIT") == limits.get("nvidia.com/gpucores")
    assert pod["spec"]["containers"][0]["image"] == GPU_IMAGE
    # The same slice as a root-owned file libvgpu trusts over the environment.
    assert slice_file_of(pod) == {k: v for k, v in env.items() if k in (
        "CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_SM_LIMIT", "CUDA_DEVICE_MEMORY_SHARED_CACHE",
        "LIBVGPU_ARBITER_SOCKET")}
    # The node's arbiter (the contract with the DaemonSet and the chart).
    assert env["LIBVGPU_ARBITER_SOCKET"] == "/run/hami-jupyter/arbiter/arbiter.sock"
    assert arbiter_mount_of(pod) is True


def slice_file_of(pod: dict[str, Any]) -> dict[str, str] | None:
    """NAME=VALUE of the slice file the kubelet would mount in the notebook container, checking
    that it is mounted read-only where libvgpu reads it; None when there is none."""
    text = (pod["metadata"].get("annotations") or {}).get("hami-jupyter.io/slice")
    mounts = [m for m in pod["spec"]["containers"][0].get("volumeMounts") or []
              if m["name"] == "hami-jupyter-slice"]
    volumes = [v for v in pod["spec"].get("volumes") or [] if v["name"] == "hami-jupyter-slice"]
    if text is None:
        assert mounts == [] and volumes == []
        return None
    assert mounts == [{"name": "hami-jupyter-slice", "mountPath": "/etc/hami-jupyter", "readOnly": True}]
    assert volumes == [{"name": "hami-jupyter-slice", "downwardAPI": {"defaultMode": 0o444, "items": [
        {"path": "slice", "fieldRef": {"fieldPath": "metadata.annotations['hami-jupyter.io/slice']"}}]}}]
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def arbiter_mount_of(pod: dict[str, Any]) -> bool:
    """Whether the notebook container mounts the node's arbiter directory, exactly as
    the contract says (read-only hostPath of type Directory, at the same path)."""
    mounts = [m for m in pod["spec"]["containers"][0].get("volumeMounts") or []
              if m["name"] == "hami-jupyter-arbiter"]
    volumes = [v for v in pod["spec"].get("volumes") or [] if v["name"] == "hami-jupyter-arbiter"]
    if not mounts and not volumes:
        return False
    assert mounts == [{"name": "hami-jupyter-arbiter", "mountPath": "/run/hami-jupyter/arbiter",
                       "readOnly": True}]
    assert volumes == [{"name": "hami-jupyter-arbiter",
                        "hostPath": {"path": "/run/hami-jupyter/arbiter", "type": "Directory"}}]
    return True


def test_the_arbiter_can_be_turned_off() -> None:
    (pod,) = manifests([{"profile": "small"}], arbiter_socket_dir="")
    assert arbiter_mount_of(pod) is False and "LIBVGPU_ARBITER_SOCKET" not in env_of(pod)
    assert "LIBVGPU_ARBITER_SOCKET" not in (slice_file_of(pod) or {})
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_hami_core_interceptor_leaves_the_library_to_hami() -> None:
    (pod,) = manifests([{"profile": "small"}], interceptor="hami-core")
    env = env_of(pod)
    assert not {"LD_PRELOAD", "CUDA_DISABLE_CONTROL", "LIBVGPU_LIBRARY",
                "CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_SM_LIMIT",
                "CUDA_DEVICE_MEMORY_SHARED_CACHE"} & set(env)
    assert gpu_limits(pod)["nvidia.com/gpumem"] == "4096"
    assert pod["spec"]["schedulerName"] == "hami-scheduler"
    assert slice_file_of(pod) is None  # HAMi-core reads no file of ours
    assert arbiter_mount_of(pod) is False
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_the_slice_file_can_be_left_out() -> None:
    (pod,) = manifests([{"profile": "small"}], slice_file=False)
    assert slice_file_of(pod) is None and env_of(pod)["CUDA_DEVICE_MEMORY_LIMIT"] == "4g"


def test_an_admins_preload_stays_after_ours() -> None:
    config = example_config()
    config.KubeSpawner.environment = {"LD_PRELOAD": "/opt/other.so"}
    pod = with_spawner(lambda spawner: manifest(spawner, {"profile": "small"}), config=config)
    assert env_of(pod)["LD_PRELOAD"] == f"{LIB}:/opt/other.so"


def test_knobs_resource_names_scheduler_policy_region() -> None:
    names = {"gpu": "example.com/vgpu", "gpumem": "example.com/vgpu-memory",
             "gpucores": "example.com/vgpu-cores"}
    (pod,) = manifests([{"profile": "small"}], resource_names=names, gpu_scheduler_name="",
                       node_scheduler_policy="", region_path="")
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert (limits["example.com/vgpu"], limits["example.com/vgpu-memory"],
            limits["example.com/vgpu-cores"]) == ("1", "4096", "25")
    assert "schedulerName" not in pod["spec"]
    assert "hami.io/node-scheduler-policy" not in pod["metadata"]["annotations"]
    assert "CUDA_DEVICE_MEMORY_SHARED_CACHE" not in env_of(pod)


def test_a_restart_with_another_profile_keeps_nothing_of_the_last() -> None:
    small, cpu, custom = manifests([{"profile": "small"}, {"profile": "cpu"},
                                    {"profile": "custom", "memory": "2GiB", "cores": "5"}])
    assert cpu["spec"]["containers"][0]["image"].startswith("quay.io/jupyter/scipy")
    assert gpu_limits(cpu) == {} and "nvidia.com/gpu" in gpu_limits(small)
    assert gpu_limits(custom) == {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "2048",
                                  "nvidia.com/gpucores": "5"}


# ---- the form (KubeSpawner's profile_list) ---------------------------------------------

@pytest.mark.parametrize("user, slugs", [
    (fake_user("bob", ()), ["small", "medium", "cpu"]),
    (fake_user("carol", ("power",)), ["small", "medium", "custom", "cpu"]),
    (fake_user("alice"), ["small", "medium", "a100-40", "h100-whole", "two-gpus", "custom", "cpu"]),
    (fake_user("root", (), admin=True),
     ["small", "medium", "a100-40", "h100-whole", "two-gpus", "custom", "cpu"]),
])
def test_profile_list_shows_what_the_groups_are_offered(user: SimpleNamespace,
                                                        slugs: list[str]) -> None:
    async def test(spawner: HamiSpawner) -> None:
        profiles = spawner.profile_list(spawner)
        assert [p["slug"] for p in profiles] == slugs
        assert [p["slug"] for p in profiles if p["default"]] == ["small"]
        html = await spawner.options_form(spawner)
        for slug in EXPECTED:  # every offer is a radio button; nothing else is
            assert (f'value="{slug}"' in html) == (slug in slugs)
    with_spawner(test, user=user)


def test_custom_profile_options_and_a_form_post() -> None:
    async def test(spawner: HamiSpawner) -> None:
        custom = next(p for p in spawner.profile_list(spawner) if p["slug"] == "custom")
        memory, cores = custom["profile_options"]["memory"], custom["profile_options"]["cores"]
        assert list(memory["choices"]) == [f"{n}GiB" for n in range(2, 33, 2)]
        assert "unlisted_choice" not in memory  # 16 sizes: all listed
        assert list(cores["choices"]) == [str(n) for n in range(5, 101, 5)]
        assert "count" not in custom["profile_options"]
        html = await spawner.options_form(spawner)
        assert 'name="profile-option-custom--memory"' in html and '<option value="12GiB"' in html
        spawner.user_options = spawner.options_from_form({
            "profile": ["custom"], "profile-option-custom--memory": ["12GiB"],
            "profile-option-custom--cores": ["40"], "profile-option-small--memory": ["x"]})
        profile = spawner.resolve_gpu_choice()
        assert (profile.slice.memory, profile.slice.cores) == (12 * GIB, 40)
    with_spawner(test)


def test_a_wide_custom_range_gets_a_free_form_field_checked_on_the_server() -> None:
    async def test(spawner: HamiSpawner) -> None:
        custom = next(p for p in spawner.profile_list(spawner) if p["slug"] == "custom")
        memory = custom["profile_options"]["memory"]
        assert len(memory["choices"]) <= 8 and memory["unlisted_choice"]["enabled"]
        html = await spawner.options_form(spawner)
        assert "profile-option-custom--memory--unlisted-choice" in html
        form = {"profile": ["custom"], "profile-option-custom--memory": ["unlisted-choice"],
                "profile-option-custom--memory--unlisted-choice": ["14GiB"],
                "profile-option-custom--cores": ["20"]}
        spawner.user_options = spawner.options_from_form(form)
        assert spawner.resolve_gpu_choice().slice.memory == 14 * GIB
        form["profile-option-custom--memory--unlisted-choice"] = ["15GiB"]  # off the steps
        spawner.user_options = spawner.options_from_form(form)
        with pytest.raises(web.HTTPError) as err:
            spawner.resolve_gpu_choice()
        assert err.value.status_code == 400 and "multiple of 2 GiB" in str(err.value)
    with_spawner(test, custom_max_choices=8)


@pytest.mark.parametrize("options, words", [
    ({"profile": "custom", "memory": "4GiB", "memory--unlisted-choice": "6GiB", "cores": "5"},
     "given twice"),
    ({"profile": "custom", "memory": "unlisted-choice", "cores": "5"}, "invalid memory size"),
    ({"profile": "small", "cores--unlisted-choice": "5"}, "fixed size"),
    ({"profile": "custom", "memory": "1GiB", "cores": "5"}, "outside the allowed range"),
])
def test_forged_kubespawner_options_are_refused(options: dict[str, str], words: str) -> None:
    async def test(spawner: HamiSpawner) -> None:
        spawner.user_options = options
        with pytest.raises(web.HTTPError) as err:
            await spawner.run_pre_spawn_hook()
        assert err.value.status_code == 400 and words in str(err.value)
    with_spawner(test)


def test_empty_options_get_the_default_and_state_survives_a_hub_restart() -> None:
    async def test(spawner: HamiSpawner) -> dict[str, Any]:
        spawner.user_options = {}
        await spawner.run_pre_spawn_hook()
        assert spawner.gpu_profile.name == "small"
        return spawner.get_state()
    state = with_spawner(test)
    assert state["hami_gpu"] == {"profile": "small", "resources": {
        "nvidia.com/gpu": "1", "nvidia.com/gpumem": "4096", "nvidia.com/gpucores": "25"}}

    async def restored(spawner: HamiSpawner) -> None:
        spawner.load_state(state)
        assert spawner.gpu_profile.slice.memory == 4 * GIB and spawner.gpu_profile.name == "small"
        spawner.clear_state()
        assert spawner.gpu_profile is None
    with_spawner(restored)


# ---- the z2jh values snippet -----------------------------------------------------------

Z2JH_SCHEMA = Path(os.environ.get(
    "Z2JH_VALUES_SCHEMA",
    Path(__file__).resolve().parent.parent.parent / "shared" / "z2jh" / "values.schema.yaml"))


def _without_required(schema: Any) -> Any:
    """The chart's defaults fill the required keys; a values file gives only some."""
    if isinstance(schema, dict):
        return {k: _without_required(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [_without_required(v) for v in schema]
    return schema


def z2jh_schema() -> Path:
    """z2jh's own values schema, which this repository does not copy.  Missing in CI is a
    failure (CI lays out ../shared beside the checkout); elsewhere a skip that says how to
    provide it."""
    if Z2JH_SCHEMA.is_file():
        return Z2JH_SCHEMA
    message = (f"needs z2jh's values schema at {Z2JH_SCHEMA}: the shared/ folder laid out beside "
               f"this checkout (as in CI), or Z2JH_VALUES_SCHEMA=<the values.schema.yaml of the "
               f"jupyterhub chart 4.x>")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_z2jh_values_snippet_fits_the_charts_schema() -> None:
    import jsonschema
    import yaml
    schema = _without_required(yaml.safe_load(z2jh_schema().read_text()))
    values = yaml.safe_load((EXAMPLE / "z2jh-values.yaml").read_text())
    # what `--set-file hub.extraConfig.hami-jupyter=jupyterhub_config.py` adds
    values["hub"]["extraConfig"] = {"hami-jupyter": (EXAMPLE / "jupyterhub_config.py").read_text()}
    validator = jsonschema.Draft7Validator(schema)
    assert [e.message for e in validator.iter_errors(values)] == []
    values["singleuser"]["profilelist"] = []  # and the check does catch a misspelled key
    assert list(validator.iter_errors(values))


def test_user_options_are_taken_by_the_choice_check_unless_the_admin_has_a_hook() -> None:
    # JupyterHub warns about user_options no apply_user_options hook takes; ours are
    # taken by the pre-spawn check. An admin's own hook stays in place.
    async def hook_of(spawner: HamiSpawner) -> Any:
        return spawner.apply_user_options
    ours = with_spawner(hook_of)
    assert callable(ours) and ours.__name__ == "_taken_by_the_pre_spawn_hook"
    config = example_config()
    config.Spawner.apply_user_options = {"image": "image"}
    assert with_spawner(hook_of, config=config) == {"image": "image"}


def test_the_arbiter_daemonset_follows_the_contract() -> None:
    path = Path(__file__).resolve().parent.parent / "examples" / "kubernetes" / "arbiter-daemonset.yaml"
    ds = yaml.safe_load(path.read_text())
    assert kubernetes_validate.validate(ds, K8S_VERSION, strict=True) == K8S_VERSION
    spec = ds["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["hostPID"] is True and container["securityContext"]["privileged"] is True
    assert container["command"] == ["hami-arbiter", "--socket-dir", "/run/hami-jupyter/arbiter"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"}
    assert container["volumeMounts"] == [{"name": "hami-jupyter-arbiter", "mountPath": "/run/hami-jupyter/arbiter"}]
    assert spec["volumes"] == [{"name": "hami-jupyter-arbiter", "hostPath": {
        "path": "/run/hami-jupyter/arbiter", "type": "DirectoryOrCreate"}}]
    assert container["image"] == GPU_IMAGE  # the single-user GPU image, which has hami-jupyter
