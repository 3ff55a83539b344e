"""The hami-jupyterhub chart: lint, render with Helm's engine, validate what it renders.

Every values file (the chart's defaults and each example) is rendered with HAMi on and
off; each object must pass the Kubernetes 1.32 schema, strict.  The values the admin
writes are checked too: the ``jupyterhub:`` section against z2jh's own schema, and the
chart's schema must refuse each bad value with a message that names it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import chart_render as cr

pytestmark = pytest.mark.skipif(bool(cr.missing()), reason=cr.missing() or "-")
K8S_VERSION = "1.32"
VALUES_FILES = [None, *cr.EXAMPLES]
IDS = ["defaults", *[p.stem for p in cr.EXAMPLES]]


def test_there_are_the_three_examples() -> None:
    assert [p.stem for p in cr.EXAMPLES] == ["mixed-fleet", "research-team", "teaching-lab"]


@pytest.mark.parametrize("path", VALUES_FILES, ids=IDS)
def test_lint_is_clean(path: Path | None) -> None:
    import helm_python
    report = helm_python.lint(cr.chart_dir(), cr.values_of(path), kube_version="v1.32.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("hami", [True, False], ids=["hami", "no-hami"])
@pytest.mark.parametrize("path", VALUES_FILES, ids=IDS)
def test_renders_valid_kubernetes_objects(path: Path | None, hami: bool) -> None:
    values = cr.merged(cr.values_of(path), {"hami": {"enabled": hami}})
    docs = cr.documents(cr.render(values))
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {exc}") from None
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("ConfigMap", "hami-jupyter-hub-config"), ("DaemonSet", "hami-jupyter-arbiter"),
            ("Deployment", "hub"), ("Deployment", "proxy")} <= kinds
    assert (("Deployment", f"{cr.RELEASE}-hami-scheduler") in kinds) is hami
    assert (("DaemonSet", f"{cr.RELEASE}-hami-device-plugin") in kinds) is hami


def test_one_scheduler_name_for_hami_and_the_spawner() -> None:
    docs = cr.documents(cr.render({"hami": {"schedulerName": "gpu-slices"}}))
    assert cr.hub_config(docs)["HamiSpawner"]["gpu_scheduler_name"] == "gpu-slices"
    scheduler = cr.find(docs, "Deployment", f"{cr.RELEASE}-hami-scheduler")
    containers = scheduler["spec"]["template"]["spec"]["containers"]
    words = [a for c in containers for a in c.get("command", []) + c.get("args", [])]
    assert "--scheduler-name=gpu-slices" in words
    assert not [w for w in words if "hami-scheduler" in w and "scheduler-name" in w]
    config = cr.find(docs, "ConfigMap", f"{cr.RELEASE}-hami-scheduler")
    assert "- schedulerName: gpu-slices" in config["data"]["config.yaml"]
    # without HAMi (the cluster runs its own) the spawner still gets the name
    docs = cr.documents(cr.render({"hami": {"enabled": False, "schedulerName": "theirs"}}))
    assert cr.hub_config(docs)["HamiSpawner"]["gpu_scheduler_name"] == "theirs"


@pytest.mark.parametrize("path", VALUES_FILES, ids=IDS)
def test_hub_config_is_the_values_file(path: Path | None) -> None:
    values = cr.chart().merge_values(cr.values_of(path))
    gpu, image = values["gpu"], cr.gpu_image(values)
    config = cr.hub_config(cr.documents(cr.render(cr.values_of(path))))
    assert config["JupyterHub"]["spawner_class"] == "hami_spawner.kubernetes.HamiSpawner"
    assert config["GpuProfiles"] == {
        "profiles": gpu["profiles"], "custom": gpu["custom"],
        "max_gpu_servers_per_user": gpu["maxServersPerUser"],
        "cpu_profile_name": gpu["cpuProfile"]["name"],
        "cpu_profile_display_name": gpu["cpuProfile"]["displayName"]}
    spawner = config["HamiSpawner"]
    assert (spawner["interceptor"], spawner["libvgpu_path"], spawner["slice_file"]) == (
        gpu["interceptor"], gpu["libvgpuPath"], gpu["sliceFile"])
    assert spawner["node_scheduler_policy"] == gpu["nodeSchedulerPolicy"]
    assert spawner["arbiter_socket_dir"] == values["arbiter"]["socketDir"]
    # every GPU choice runs the GPU image, with the admin's own overrides kept
    gpu_choices = [p["name"] for p in gpu["profiles"]] + (["custom"] if gpu["custom"] else [])
    overrides = spawner["kubespawner_overrides"]
    assert set(overrides) == set(gpu_choices) | set(gpu["kubespawnerOverrides"])
    for name in gpu_choices:
        assert overrides[name] == {"image": image, **gpu["kubespawnerOverrides"].get(name, {})}


def test_hami_core_has_no_arbiter() -> None:
    docs = cr.documents(cr.render({"gpu": {"interceptor": "hami-core"}}))
    assert not [d for d in docs if d["metadata"]["name"] == "hami-jupyter-arbiter"]
    assert cr.hub_config(docs)["HamiSpawner"]["arbiter_socket_dir"] == ""
    docs = cr.documents(cr.render({"arbiter": {"enabled": False}}))
    assert not [d for d in docs if d["kind"] == "DaemonSet" and "arbiter" in d["metadata"]["name"]]
    assert cr.hub_config(docs)["HamiSpawner"]["arbiter_socket_dir"] == ""


@pytest.mark.parametrize("path", [Path("values.yaml"), *cr.EXAMPLES],
                         ids=["values.yaml", *[p.stem for p in cr.EXAMPLES]])
def test_jupyterhub_section_fits_z2jh_schema(path: Path) -> None:
    """The section as z2jh's chart receives it (its defaults under the file's values)."""
    schema = yaml.safe_load(cr.Z2JH_SCHEMA.read_text())
    section = cr.values_of(cr.CHART / path if path.name == "values.yaml" else path)["jupyterhub"]
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(z2jh_values(section)))
    assert errors == [], [f"{list(e.path)}: {e.message}" for e in errors]


def test_z2jh_schema_check_can_fail() -> None:
    schema = yaml.safe_load(cr.Z2JH_SCHEMA.read_text())
    bad = z2jh_values({"singleuser": {"imge": {"name": "x"}}, "cull": {"timeout": "soon"}})
    messages = sorted(e.message for e in jsonschema.Draft7Validator(schema).iter_errors(bad))
    assert any("'imge' was unexpected" in m for m in messages), messages
    assert any("'soon' is not of type 'integer'" in m for m in messages), messages


def z2jh_values(section: dict[str, Any]) -> dict[str, Any]:
    import helm_python
    z2jh = helm_python.Chart.load(cr.chart_dir() / "charts" / cr.DEPENDENCIES["jupyterhub"])
    chart_section = cr.values_of(cr.CHART / "values.yaml")["jupyterhub"]
    return z2jh.merge_values(cr.merged(chart_section, section))


def profiles(*items: dict[str, Any]) -> dict[str, Any]:
    return {"gpu": {"profiles": list(items)}}


SCHEMA = "values don't meet the specifications of the schema(s)"
BAD_VALUES = {
    "negative-memory": (profiles({"name": "a", "memory": "-4GiB"}),
                        "at '/gpu/profiles/0/memory': '-4GiB' does not match pattern"),
    "unitless-memory": (profiles({"name": "a", "memory": "4096"}),
                        "at '/gpu/profiles/0/memory': '4096' does not match pattern"),
    "memory-as-number": (profiles({"name": "a", "memory": 4096}),
                         "at '/gpu/profiles/0/memory': got number, want string"),
    "decimal-unit": (profiles({"name": "a", "memory": "4GB"}),
                     "at '/gpu/profiles/0/memory': '4GB' does not match pattern"),
    "compute-over-100": (profiles({"name": "a", "cores": 150}),
                         "at '/gpu/profiles/0/cores': maximum: got 150, want 100"),
    "custom-compute-over-100": (
        {"gpu": {"custom": {"memory_min": "1GiB", "memory_max": "8GiB", "cores_max": 101}}},
        "at '/gpu/custom/cores_max': maximum: got 101, want 100"),
    "unknown-policy": (profiles({"name": "a", "policy": "pack"}),
                       "at '/gpu/profiles/0/policy': value must be one of 'binpack', 'spread'"),
    "profile-without-name": (profiles({"memory": "4GiB"}),
                             "at '/gpu/profiles/0': missing property 'name'"),
    "two-defaults": (profiles({"name": "a", "default": True}, {"name": "b", "default": True}),
                     "at '/gpu/profiles': max 1 items required to match contains schema, "
                     "but matched 2 items at 0 1"),
    "unknown-profile-key": (profiles({"name": "a", "mem": "4GiB"}),
                            "at '/gpu/profiles/0': additional properties 'mem' not allowed"),
    "unknown-interceptor": ({"gpu": {"interceptor": "libvgpu"}},
                            "at '/gpu/interceptor': value must be one of 'bundled', 'hami-core'"),
    "unknown-backstop": ({"arbiter": {"backstop": "shoot"}},
                         "at '/arbiter/backstop': value must be one of 'kill', 'report', 'off'"),
    "custom-without-bounds": ({"gpu": {"custom": {"cores_step": 5}}},
                              "at '/gpu/custom': missing properties 'memory_min', 'memory_max'"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_refuses_bad_values(case: str) -> None:
    import helm_python
    values, message = BAD_VALUES[case]
    with pytest.raises(helm_python.HelmValuesError) as caught:
        cr.render(values)
    assert SCHEMA in str(caught.value) and "hami-jupyterhub:" in str(caught.value)
    assert message in str(caught.value), str(caught.value)


# What one value at a time cannot say: refused when the chart renders, in one sentence.
RENDER_CHECKS = {
    "same-name-twice": (profiles({"name": "a"}, {"name": "a"}),
                        'gpu.profiles: the name "a" is used by two profiles'),
    "reserved-custom": (profiles({"name": "custom"}), 'the name "custom" is reserved'),
    "the-cpu-name": (profiles({"name": "cpu"}), '"cpu" is the name of the CPU-only choice'),
    "own-volumes-replace-ours": (
        {"jupyterhub": {"hub": {"extraVolumes": [{"name": "x", "emptyDir": {}}]}}},
        "jupyterhub.hub.extraVolumes and extraVolumeMounts must keep the chart's entries"),
    "a-profile-list": ({"jupyterhub": {"singleuser": {"profileList": [{"display_name": "x"}]}}},
                       "leave jupyterhub.singleuser.profileList empty"),
}


@pytest.mark.parametrize("case", sorted(RENDER_CHECKS))
def test_render_refuses_inconsistent_values(case: str) -> None:
    import helm_python
    values, message = RENDER_CHECKS[case]
    with pytest.raises(helm_python.HelmError) as caught:
        cr.render(values)
    assert "hami-jupyterhub: " in str(caught.value) and message in str(caught.value), str(caught.value)


def test_gpu_image_cannot_be_dropped() -> None:
    import helm_python
    with pytest.raises(helm_python.HelmValuesError, match="/prePuller/extraImages/hami-gpu-notebook"):
        cr.render({"jupyterhub": {"prePuller": {"extraImages": {"hami-gpu-notebook": None}}}})


def test_notes_tell_what_was_installed_and_how_to_check() -> None:
    notes = cr.render({})["hami-jupyterhub/templates/NOTES.txt"]
    assert "2 GPU profile(s): small, medium" in notes
    assert "hami\\.io/node-nvidia-register" in notes and "kubectl get nodes -l gpu=on" in notes
    assert "port-forward service/proxy-public" in notes
    assert "rollout status daemonset/hami-jupyter-arbiter" in notes
    notes = cr.render({"hami": {"enabled": False}})["hami-jupyterhub/templates/NOTES.txt"]
    assert re.search(r"HAMi is NOT installed by this release", notes)
