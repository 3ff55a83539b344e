"""The hami-jupyterhub chart rendered by Helm's own engine, offline, for the chart tests.

CI reaches no chart repository: the two dependency charts come from ``../shared/charts``
(beside the checkout), copied into the ``charts/`` folder of a temporary copy of the
chart, exactly where ``helm dependency build`` would put them.  Rendering uses the
``helm-python-sdk`` package (Helm v4's library; no helm binary).
"""
from __future__ import annotations

import base64
import copy
import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "hami-jupyterhub"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
SHARED = ROOT.parent / "shared"
DEPENDENCIES = {"jupyterhub": "jupyterhub-4.4.0.tgz", "hami": "hami-2.10.0.tgz"}
Z2JH_SCHEMA = SHARED / "z2jh" / "values.schema.yaml"
RELEASE, NAMESPACE = "jhub", "jhub"


def missing() -> str:
    """Why the chart tests cannot run here, or "" (the shared charts are absent)."""
    absent = [name for name in DEPENDENCIES.values() if not (SHARED / "charts" / name).is_file()]
    return f"needs {', '.join(absent)} in {SHARED / 'charts'}" if absent else ""


@functools.lru_cache(maxsize=1)
def chart_dir() -> Path:
    """A copy of the chart with its dependencies in charts/ (made once per test run)."""
    target = Path(tempfile.mkdtemp(prefix="hami-chart-")) / CHART.name
    shutil.copytree(CHART, target, ignore=shutil.ignore_patterns("charts"))
    (target / "charts").mkdir()
    for archive in DEPENDENCIES.values():
        shutil.copy(SHARED / "charts" / archive, target / "charts" / archive)
    return target


def chart() -> Any:
    """The chart, loaded afresh: Helm drops a disabled dependency from the loaded chart
    when it renders, so one loaded chart must not serve two renders."""
    import helm_python
    return helm_python.Chart.load(chart_dir())


def values_of(path: Path | None) -> dict[str, Any]:
    return {} if path is None else yaml.safe_load(path.read_text()) or {}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Values files on top of each other as helm does: maps merge, the rest is replaced."""
    result: dict[str, Any] = {}
    for layer in layers:
        result = _merge(result, layer)
    return result


def _merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        for key, value in top.items():
            out[key] = _merge(base.get(key), value)
        return out
    return copy.deepcopy(top)


def render(values: dict[str, Any]) -> dict[str, str]:
    """File name -> rendered text (helm template), for the chart's values plus these."""
    return chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object rendered (NOTES.txt and empty files left out)."""
    docs = []
    for name, text in sorted(rendered.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: rendered {len(found)} times"
    return found[0]


def hub_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The hub's GPU settings: the JSON of the chart's ConfigMap."""
    config_map = find(docs, "ConfigMap", "hami-jupyter-hub-config")
    return json.loads(config_map["data"]["hub-config.json"])


def hub_values(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """z2jh's values as its hub reads them (the Secret "hub", key values.yaml)."""
    secret = find(docs, "Secret", "hub")
    return yaml.safe_load(base64.b64decode(secret["data"]["values.yaml"]))


def gpu_image(values: dict[str, Any]) -> str:
    entry = values["jupyterhub"]["prePuller"]["extraImages"]["hami-gpu-notebook"]
    return f"{entry['name']}:{entry['tag']}"


def hub_mount_dir(docs: list[dict[str, Any]]) -> str:
    """Where the hub Deployment mounts the chart's ConfigMap."""
    spec = find(docs, "Deployment", "hub")["spec"]["template"]["spec"]
    volumes = {v["name"] for v in spec["volumes"]
               if v.get("configMap", {}).get("name") == "hami-jupyter-hub-config"}
    mounts = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] in volumes]
    assert len(mounts) == 1 and mounts[0].get("readOnly"), mounts
    return mounts[0]["mountPath"]


def hub_snippet(docs: list[dict[str, Any]], directory: Path) -> str:
    """The chart's extraConfig entry as the hub runs it, with the ConfigMap's files
    written to ``directory`` in place of the hub's mount (checked to be what it opens)."""
    mount = hub_mount_dir(docs)
    snippet = hub_values(docs)["hub"]["extraConfig"]["00-hami-jupyter"]
    assert snippet.count(f'"{mount}/hub-config.json"') == 1, snippet
    config_map = find(docs, "ConfigMap", "hami-jupyter-hub-config")
    for name, text in config_map["data"].items():
        (directory / name).write_text(text)
    return snippet.replace(f'"{mount}/', f'"{directory}/')
