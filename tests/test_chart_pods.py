"""The chart's arbiter DaemonSet and the GPU pods its hub makes agree, and pods get the wall.

The GPU pod is made by HamiSpawner's own get_pod_manifest() (no API server), configured
exactly as the chart configures the hub: the chart's extraConfig entry run against the
chart's ConfigMap.  The arbiter contract (notes: the socket directory as a hostPath the
daemon creates and GPU pods mount read-only, named in the slice file) is checked on both.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from traitlets.config import Config

import chart_render as cr
from test_kube_manifest import fake_user, kubeconfig, manifest, with_spawner  # noqa: F401

pytestmark = pytest.mark.skipif(bool(cr.missing()), reason=cr.missing() or "-")
GPU_DOCKERFILE = cr.ROOT / "charts" / "images" / "singleuser" / "Dockerfile"
ARBITER_VOLUME = "hami-jupyter-arbiter"  # the contract's volume name in GPU pods


def spawner_config(docs: list[dict[str, Any]], directory: Path) -> Config:
    """What the hub's config holds after the chart's extraConfig entry ran."""
    config = Config()
    exec(compile(cr.hub_snippet(docs, directory), "00-hami-jupyter", "exec"), {"c": config})
    return config


def gpu_pod(docs: list[dict[str, Any]], directory: Path, profile: str = "small",
            groups: tuple[str, ...] = ()) -> dict[str, Any]:
    config = spawner_config(docs, directory)
    return with_spawner(lambda spawner: manifest(spawner, {"profile": profile}),
                        user=fake_user(groups=groups), config=config)


def arbiter(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return cr.find(docs, "DaemonSet", "hami-jupyter-arbiter")["spec"]["template"]["spec"]


def preload_in_image() -> tuple[str, str]:
    """The library the GPU image installs, and what its /etc/ld.so.preload names."""
    text = GPU_DOCKERFILE.read_text()
    installed = re.search(r"install -o root -g root -m 0755 \\\n[^\n]*\\\n\s+(\S+) \\", text)
    preload = re.search(r"echo (\S+) > /etc/ld\.so\.preload", text)
    assert installed and preload, "the GPU image's Dockerfile no longer installs the preload"
    return installed.group(1), preload.group(1)


def test_gpu_pod_and_daemonset_run_the_same_image_and_library(tmp_path: Path) -> None:
    values = cr.chart().merge_values({})
    docs = cr.documents(cr.render({}))
    pod = gpu_pod(docs, tmp_path)
    kubernetes_validate.validate(pod, "1.32", strict=True)
    container = pod["spec"]["containers"][0]
    daemon = arbiter(docs)["containers"][0]
    assert container["image"] == daemon["image"] == cr.gpu_image(values)
    assert pod["spec"]["schedulerName"] == values["hami"]["schedulerName"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    library = values["gpu"]["libvgpuPath"]
    assert env["LD_PRELOAD"] == env["LIBVGPU_LIBRARY"] == library
    assert preload_in_image() == (library, library)
    # the daemon as the contract has it: the node's processes, NVML only, and not
    # under the tenants' preload
    spec = arbiter(docs)
    assert spec["hostPID"] is True and daemon["securityContext"]["privileged"] is True
    daemon_env = {e["name"]: e["value"] for e in daemon["env"]}
    assert daemon_env == {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"}
    assert daemon["command"][:3] == ["hami-arbiter", "--socket-dir", "/run/hami-jupyter/arbiter"]
    preload = [m for m in daemon["volumeMounts"] if m["mountPath"] == "/etc/ld.so.preload"]
    assert len(preload) == 1 and preload[0]["readOnly"]
    empty = {v["name"]: v for v in spec["volumes"]}[preload[0]["name"]]["configMap"]["name"]
    assert cr.find(docs, "ConfigMap", empty)["data"] == {"ld.so.preload": ""}


@pytest.mark.parametrize("path", [None, *cr.EXAMPLES], ids=["defaults", *[p.stem for p in cr.EXAMPLES]])
def test_gpu_pod_mounts_the_slice_read_only(path: Path | None, tmp_path: Path) -> None:
    """The wall's read-only source: the slice as a root-owned downward-API file."""
    values = cr.chart().merge_values(cr.values_of(path))
    docs = cr.documents(cr.render(cr.values_of(path)))
    profile = values["gpu"]["profiles"][0]
    pod = gpu_pod(docs, tmp_path, profile["name"], tuple(profile.get("groups", ())))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    mount = mounts["/etc/hami-jupyter"]
    assert mount["readOnly"] is True
    source = volumes[mount["name"]]["downwardAPI"]
    assert source["defaultMode"] == 0o444
    assert source["items"] == [{"path": "slice", "fieldRef": {
        "fieldPath": "metadata.annotations['hami-jupyter.io/slice']"}}]
    text = pod["metadata"]["annotations"]["hami-jupyter.io/slice"]
    memory = profile["memory"]
    assert f"CUDA_DEVICE_MEMORY_LIMIT={memory[:-3]}{memory[-3].lower()}\n" in text


@pytest.mark.parametrize("socket_dir", ["/run/hami-jupyter/arbiter", "/var/run/gpu-arbiter"])
def test_gpu_pod_reaches_the_arbiter_socket(socket_dir: str, tmp_path: Path) -> None:
    """The contract on both sides: one directory, created by the daemon, read-only in pods,
    and named in the slice file.  (Needs HamiSpawner.arbiter_socket_dir.)"""
    docs = cr.documents(cr.render({"arbiter": {"socketDir": socket_dir}}))
    spec = arbiter(docs)
    daemon = spec["containers"][0]
    host = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    assert list(host.values()) == [{"path": socket_dir, "type": "DirectoryOrCreate"}]
    assert [m["mountPath"] for m in daemon["volumeMounts"] if m["name"] in host] == [socket_dir]
    assert daemon["command"][daemon["command"].index("--socket-dir") + 1] == socket_dir

    pod = gpu_pod(docs, tmp_path)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert ARBITER_VOLUME in volumes, "the GPU pod does not mount the arbiter's socket directory"
    assert volumes[ARBITER_VOLUME]["hostPath"] == {"path": socket_dir, "type": "Directory"}
    mounts = [m for m in pod["spec"]["containers"][0]["volumeMounts"]
              if m["name"] == ARBITER_VOLUME]
    assert len(mounts) == 1 and mounts[0]["mountPath"] == socket_dir and mounts[0]["readOnly"]
    text = pod["metadata"]["annotations"]["hami-jupyter.io/slice"]
    assert f"LIBVGPU_ARBITER_SOCKET={socket_dir}/arbiter.sock\n" in text
