"""The hub the chart configures: a real JupyterHub with the chart's rendered hub config.

The chart's mixed-fleet example is rendered with Helm's engine; its ConfigMap is written
where the chart's extraConfig entry reads it (the hub Deployment's mount, checked), and
that entry is the hub's configuration, after the settings a test hub needs (ports, the
Kubernetes API stand-in, a service token).  The hub must then offer exactly the values
file's profiles and make, for each, the pod those values promise.
"""
from __future__ import annotations

import ast
from typing import Any, Iterator

import pytest

import chart_render as cr
from k8s_standin import KubeStandIn
from test_kube_hub import (KUBECONFIG, NAMESPACE, TOKEN, Hub, container_env, free_port, pod_of, running_hub,
                           start, stop)
from test_kube_hub import pytestmark as needs_hub
from test_kube_hub import standin  # noqa: F401  (the Kubernetes API stand-in, a fixture)

EXAMPLE = cr.CHART / "examples" / "mixed-fleet.yaml"
pytestmark = [*([needs_hub] if not isinstance(needs_hub, list) else needs_hub),
              pytest.mark.skipif(bool(cr.missing()), reason=cr.missing() or "-")]

HUB_CONFIG = """
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{tmp}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{tmp}/cookie_secret"
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.cleanup_servers = True
c.JupyterHub.services = [{{"name": "tester", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["tester"]}}]
c.KubeSpawner.k8s_api_host = {api!r}
c.KubeSpawner.namespace = {namespace!r}
c.KubeSpawner.port = {notebook_port}
c.KubeSpawner.start_timeout = 8
c.KubeSpawner.http_timeout = 10
c.KubeSpawner.k8s_api_request_timeout = 3
c.KubeSpawner.k8s_api_request_retry_timeout = 10
# ---- the chart's hub.extraConfig entry, as z2jh runs it after its own settings ----
"""
MIB = {"MiB": 1, "GiB": 1024, "TiB": 1024 * 1024}


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return cr.chart().merge_values(cr.values_of(EXAMPLE))


@pytest.fixture(scope="module")
def hub(standin: KubeStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("chart-hub")
    docs = cr.documents(cr.render(cr.values_of(EXAMPLE)))
    mount = tmp / "hami-jupyter"
    mount.mkdir()
    port = free_port()
    (tmp / "kubeconfig").write_text(KUBECONFIG.format(api=standin.url, namespace=NAMESPACE))
    (tmp / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
        port=port, hub_port=free_port(), proxy_api_port=free_port(), tmp=tmp, token=TOKEN,
        api=standin.url, namespace=NAMESPACE, notebook_port=standin.notebook_port)
        + cr.hub_snippet(docs, mount))
    with running_hub(tmp, port) as client:
        for name in ("ada", "bob"):
            assert client.api("POST", f"/users/{name}").status_code == 201
        assert client.api("POST", "/groups/training").status_code == 201
        assert client.api("POST", "/groups/training/users", {"users": ["ada"]}).status_code == 200
        yield client


def offered(hub: Hub, user: str) -> list[str]:
    """The choices the hub's HamiSpawner offers this user, from its answer to a wrong one."""
    reply = start(hub, user, {"profile": "no-such-profile"})
    assert reply.status_code == 400, reply.text
    message = reply.json()["message"]
    assert "unknown GPU profile 'no-such-profile'; you may choose one of " in message, message
    return ast.literal_eval(message.split("you may choose one of ", 1)[1].strip())


def test_hub_offers_exactly_the_values_files_profiles(hub: Hub, values: dict[str, Any]) -> None:
    profiles, cpu = values["gpu"]["profiles"], values["gpu"]["cpuProfile"]["name"]
    assert offered(hub, "ada") == sorted(p["name"] for p in profiles) + [cpu]
    assert offered(hub, "bob") == sorted(p["name"] for p in profiles
                                         if "training" not in p.get("groups", [])) + [cpu]


def expected_limits(profile: dict[str, Any]) -> dict[str, str]:
    limits = {"nvidia.com/gpu": str(profile.get("count", 1))}
    if "memory" in profile:
        number, unit = profile["memory"][:-3], profile["memory"][-3:]
        limits["nvidia.com/gpumem"] = str(int(number) * MIB[unit])
    if profile.get("cores", 100) != 100:
        limits["nvidia.com/gpucores"] = str(profile["cores"])
    return limits


def test_each_profile_makes_the_pod_its_values_promise(hub: Hub, standin: KubeStandIn,
                                                       values: dict[str, Any]) -> None:
    gpu = values["gpu"]
    for profile in gpu["profiles"]:
        name = profile["name"]
        reply = start(hub, "ada", {"profile": name})
        assert reply.status_code in (201, 202), reply.text
        hub.wait(f"ada's {name} server", lambda: (hub.server("ada") or {}).get("ready"))
        pod = pod_of(standin, "jupyter-ada")
        container = pod["spec"]["containers"][0]
        limits = container["resources"]["limits"]
        assert {k: v for k, v in limits.items() if k.startswith("nvidia.com/")} == \
            expected_limits(profile), name
        assert pod["spec"]["schedulerName"] == values["hami"]["schedulerName"]
        assert container["image"] == cr.gpu_image(values)
        annotations = pod["metadata"]["annotations"]
        assert annotations.get("nvidia.com/use-gputype") == (
            ",".join(profile["gpu_types"]) if "gpu_types" in profile else None)
        assert annotations.get("nvidia.com/nouse-gputype") == (
            ",".join(profile["avoid_gpu_types"]) if "avoid_gpu_types" in profile else None)
        assert annotations["hami.io/gpu-scheduler-policy"] == profile.get("policy", "binpack")
        assert annotations["hami.io/node-scheduler-policy"] == gpu["nodeSchedulerPolicy"]
        env = container_env(pod)
        assert env["CUDA_DISABLE_CONTROL"] == "true"
        assert env["LD_PRELOAD"] == env["LIBVGPU_LIBRARY"] == gpu["libvgpuPath"]
        if "memory" in profile:
            letter = profile["memory"][-3].lower()
            assert env["CUDA_DEVICE_MEMORY_LIMIT"] == profile["memory"][:-3] + letter
        if "cores" in profile:
            assert env["CUDA_DEVICE_SM_LIMIT"] == str(profile["cores"])
        own = gpu["kubespawnerOverrides"].get(name, {})
        if "cpu_limit" in own:
            assert float(limits["cpu"]) == own["cpu_limit"]
        if "mem_limit" in own:
            assert int(limits["memory"]) == int(own["mem_limit"][:-1]) * 1024 ** 3
        stop(hub, standin, "ada")
