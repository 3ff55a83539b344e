"""A real JupyterHub with HamiSpawner, against the Kubernetes stand-in.

One ``jupyterhub`` process (sqlite in a temp dir, random ports, the Python
``configurable-http-proxy``) loads ``examples/kubernetes/jupyterhub_config.py``
and points KubeSpawner at :mod:`k8s_standin` through a kubeconfig.  A service
token with the admin role drives it over the REST API, as a portal or a
script would.  The stand-in's "pod IP" is 127.0.0.1, where it answers the
hub's readiness check as a single-user server would (see k8s_standin).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

import hami_spawner
from k8s_standin import KubeStandIn

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "kubernetes" / "jupyterhub_config.py"
TOKEN = "hami-test-token-0123456789abcdef"
NAMESPACE = "jhub"

pytestmark = pytest.mark.skipif(
    shutil.which("jupyterhub") is None or shutil.which("configurable-http-proxy") is None,
    reason="needs the jupyterhub and configurable-http-proxy commands ('.[test]' installs them)")

HUB_CONFIG = """
c = get_config()  # noqa: F821
load_subconfig({example!r})  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{tmp}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{tmp}/cookie_secret"
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.allow_named_servers = True
c.JupyterHub.cleanup_servers = True
c.JupyterHub.services = [{{"name": "tester", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["tester"]}}]
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 3}}
c.KubeSpawner.k8s_api_host = {api!r}
c.KubeSpawner.namespace = {namespace!r}
c.KubeSpawner.port = {notebook_port}
c.KubeSpawner.start_timeout = 8
c.KubeSpawner.http_timeout = 10
c.KubeSpawner.k8s_api_request_timeout = 3
c.KubeSpawner.k8s_api_request_retry_timeout = 10
"""

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{{name: standin, cluster: {{server: "{api}"}}}}]
users: [{{name: hub, user: {{token: not-checked}}}}]
contexts: [{{name: standin, context: {{cluster: standin, user: hub, namespace: {namespace}}}}}]
current-context: standin
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    def __init__(self, url: str, log: Path) -> None:
        self.url, self.log = url, log
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {TOKEN}"

    def api(self, method: str, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.session.request(method, f"{self.url}/hub/api{path}",
                                    data=None if body is None else json.dumps(body),
                                    timeout=kw.pop("timeout", 30), **kw)

    def server(self, user: str, name: str = "") -> dict[str, Any] | None:
        return self.api("GET", f"/users/{user}").json()["servers"].get(name)

    def wait(self, what: str, check: Any, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n--- hub log ---\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-60:])


@pytest.fixture(scope="module")
def standin() -> Iterator[KubeStandIn]:
    server = KubeStandIn().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hub(standin: KubeStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("hub")
    port = free_port()
    (tmp / "kubeconfig").write_text(KUBECONFIG.format(api=standin.url, namespace=NAMESPACE))
    (tmp / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
        example=str(EXAMPLE), port=port, hub_port=free_port(), proxy_api_port=free_port(),
        tmp=tmp, token=TOKEN, api=standin.url, namespace=NAMESPACE,
        notebook_port=standin.notebook_port))
    with running_hub(tmp, port) as client:
        for name in ("alice", "bob"):
            assert client.api("POST", f"/users/{name}").status_code == 201
        for group, members in (("research", ["alice"]), ("power", ["alice"])):
            assert client.api("POST", f"/groups/{group}").status_code == 201
            assert client.api("POST", f"/groups/{group}/users",
                              {"users": members}).status_code == 200
        yield client


@contextlib.contextmanager
def running_hub(tmp: Path, port: int) -> Iterator[Hub]:
    """A real JupyterHub on tmp/jupyterhub_config.py and tmp/kubeconfig, answering on port."""
    env = dict(os.environ, KUBECONFIG=str(tmp / "kubeconfig"))
    # the hub runs the hami_spawner this test imported (the checkout or the installed one)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(hami_spawner.__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        env.pop(var, None)  # never the in-cluster config of a CI runner
    log = tmp / "hub.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f",
                                 str(tmp / "jupyterhub_config.py")],
                                cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
    client = Hub(f"http://127.0.0.1:{port}", log)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"jupyterhub exited with {proc.returncode}\n{client.tail()}")
        try:
            return client.api("GET", "/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        client.wait("the hub to answer", up, timeout=60)
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start(hub: Hub, user: str, choice: dict[str, Any], name: str = "") -> requests.Response:
    path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
    return hub.api("POST", path, choice)


def stop(hub: Hub, standin: KubeStandIn, user: str, name: str = "") -> None:
    path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
    assert hub.api("DELETE", path).status_code in (202, 204)
    hub.wait(f"{user}'s server {name!r} to stop", lambda: hub.server(user, name) is None)
    pod = f"jupyter-{user}" + (f"--{name}" if name else "")
    hub.wait(f"pod {pod} to go", lambda: pod not in standin.pods())
    assert standin.invalid == []  # every pod the hub sent passed the strict schema check


def pod_of(standin: KubeStandIn, name: str) -> dict[str, Any]:
    return standin.pods()[name]


def container_env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_spawn_medium_then_stop(hub: Hub, standin: KubeStandIn) -> None:
    reply = start(hub, "alice", {"profile": "medium"})
    assert reply.status_code in (201, 202), reply.text
    hub.wait("alice's server to be ready", lambda: (hub.server("alice") or {}).get("ready"))
    pod = pod_of(standin, "jupyter-alice")
    assert pod["status"]["phase"] == "Running" and not standin.invalid
    container = pod["spec"]["containers"][0]
    limits = container["resources"]["limits"]
    assert {k: v for k, v in limits.items() if k.startswith("nvidia.com/")} == {
        "nvidia.com/gpu": "1", "nvidia.com/gpumem": "16384", "nvidia.com/gpucores": "50"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["nvidia.com/nouse-gputype"] == "T4"
    assert annotations["hami.io/gpu-scheduler-policy"] == "binpack"
    assert annotations["hami.io/node-scheduler-policy"] == "binpack"
    assert "nvidia.com/use-gputype" not in annotations
    assert pod["spec"]["schedulerName"] == "hami-scheduler"
    env = container_env(pod)
    assert env["CUDA_DISABLE_CONTROL"] == "true"
    assert env["LD_PRELOAD"] == env["LIBVGPU_LIBRARY"] == "/usr/local/lib/hami-jupyter/libvgpu.so"
    assert env["CUDA_DEVICE_MEMORY_LIMIT"] == "16g" and env["CUDA_DEVICE_SM_LIMIT"] == "50"
    assert container["image"].startswith("registry.example.org/jupyter/pytorch-notebook-hami:")
    assert any(p.startswith("/user/alice/") for p in standin.health_checks)
    stop(hub, standin, "alice")
    assert standin.calls("DELETE", f"/namespaces/{NAMESPACE}/pods/jupyter-alice$")


def test_custom_and_cpu_and_one_gpu_server_per_user(hub: Hub, standin: KubeStandIn) -> None:
    reply = start(hub, "alice", {"profile": "custom", "memory": "6GiB", "cores": "35"})
    assert reply.status_code in (201, 202), reply.text
    hub.wait("the custom server", lambda: (hub.server("alice") or {}).get("ready"))
    limits = pod_of(standin, "jupyter-alice")["spec"]["containers"][0]["resources"]["limits"]
    assert (limits["nvidia.com/gpumem"], limits["nvidia.com/gpucores"]) == ("6144", "35")
    # max_gpu_servers_per_user = 1 in the example: a second GPU server is refused, CPU is not
    before = len(standin.calls("POST", "/pods$"))
    refused = start(hub, "alice", {"profile": "small"}, name="second")
    assert refused.status_code == 400 and "at most 1" in refused.json()["message"]
    assert len(standin.calls("POST", "/pods$")) == before
    reply = start(hub, "alice", {"profile": "cpu"}, name="cpu")
    assert reply.status_code in (201, 202), reply.text
    hub.wait("the CPU server", lambda: (hub.server("alice", "cpu") or {}).get("ready"))
    cpu = pod_of(standin, "jupyter-alice--cpu")
    assert not any(k.startswith("nvidia.com/")
                   for k in cpu["spec"]["containers"][0]["resources"].get("limits", {}))
    assert "schedulerName" not in cpu["spec"] and "hami.io/gpu-scheduler-policy" not in (
        cpu["metadata"].get("annotations") or {})
    env = container_env(cpu)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "none" and "LD_PRELOAD" not in env
    assert cpu["spec"]["containers"][0]["image"].startswith("quay.io/jupyter/scipy-notebook")
    stop(hub, standin, "alice", "cpu")
    stop(hub, standin, "alice")


@pytest.mark.parametrize("user, choice, words", [
    ("bob", {"profile": "nope"}, ["unknown GPU profile 'nope'"]),
    ("bob", {"profile": "a100-40"}, ["unknown GPU profile 'a100-40'"]),  # research only
    ("bob", {"profile": "custom", "memory": "4GiB", "cores": "20"}, ["not offered"]),
    ("bob", {"profile": "small", "memory": "40GiB"}, ["fixed size", "memory"]),
    ("bob", {"profile": "small", "image": "evil/miner"}, ["fixed size", "image"]),
    ("bob", {"profile": ["small", "medium"]}, ["must be one string"]),
    ("bob", {"profile": "small", "cores": 100}, ["must be one string"]),
    ("alice", {"profile": "custom", "memory": "64GiB", "cores": "20"}, ["outside the allowed"]),
    ("alice", {"profile": "custom", "memory": "3GiB", "cores": "20"}, ["multiple of 2 GiB"]),
    ("alice", {"profile": "custom", "memory": "4GiB", "cores": "101"}, ["invalid compute share"]),
    ("alice", {"profile": "custom", "memory": "4GiB", "cores": "22"}, ["multiple of 5%"]),
    ("alice", {"profile": "custom", "memory": "4GB", "cores": "20"}, ["ambiguous"]),
    ("alice", {"profile": "custom", "memory": "4GiB"}, ["exactly 'memory', 'cores'"]),
    ("alice", {"profile": "custom", "memory": "4GiB", "cores": "20", "count": "2"},
     ["exceeds the maximum of 1"]),
    ("alice", {"profile": "custom", "memory": "4GiB", "memory--unlisted-choice": "30GiB",
               "cores": "20"}, ["given twice"]),
])
def test_tampering_is_refused_before_any_pod(hub: Hub, standin: KubeStandIn, user: str,
                                             choice: dict[str, Any], words: list[str]) -> None:
    before = len(standin.calls("POST", "/pods$"))
    reply = start(hub, user, choice)
    assert reply.status_code == 400, reply.text
    message = reply.json()["message"]
    for word in words:
        assert word in message
    assert len(standin.calls("POST", "/pods$")) == before
    assert hub.server(user) is None


def test_failed_scheduling_is_explained_on_the_progress_page(hub: Hub,
                                                             standin: KubeStandIn) -> None:
    text = ("0/2 nodes are available: 2 1/1 CardInsufficientMemory. preemption: 0/2 nodes are "
            "available: 2 No preemption victims found for incoming pod.")
    standin.refuse_scheduling(text)
    try:
        reply = start(hub, "alice", {"profile": "small"})
        assert reply.status_code in (201, 202), reply.text  # answered after slow_spawn_timeout
        assert hub.server("alice")["pending"] == "spawn"
        events = []
        with hub.api("GET", "/users/alice/server/progress", stream=True) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("failed") or "Waiting for a GPU" in events[-1]["message"]:
                        break
        waiting = [e for e in events if "Waiting for a GPU" in e["message"]]
        assert waiting, events
        assert "no GPU has enough free memory for this slice" in waiting[0]["message"]
        assert waiting[0]["detail"].endswith(text) and text in waiting[0]["html_message"]
        # the spawn times out (start_timeout) and the hub deletes the pending pod
        hub.wait("the failed spawn to be cleaned up",
                 lambda: hub.server("alice") is None and "jupyter-alice" not in standin.pods())
    finally:
        standin.allow_scheduling()


def test_the_hub_asked_only_for_pods_and_events(hub: Hub, standin: KubeStandIn) -> None:
    """The stand-in serves what KubeSpawner uses here; anything else would be a 404 it saw."""
    import re
    allowed = re.compile(rf"^/api/v1/namespaces/{NAMESPACE}/(pods|events)(/jupyter-[a-z-]+)?$")
    with standin._lock:
        asked = {(r.method, r.path) for r in standin.requests}
    assert {path for _, path in asked if not allowed.match(path)} == set()
    assert {method for method, _ in asked} == {"GET", "POST", "DELETE"}
