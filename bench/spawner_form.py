#!/usr/bin/env python3
"""How long HamiSpawner takes to render the spawn form and build a pod, with many profiles.

Both run in the hub's single event loop for every user, so they must stay
small: the goal is under 20 ms each with 200 profiles.  Measured:

* ``form (new spawner)``: a new user's first form: the profiles parsed and
  filtered for the user's groups, KubeSpawner's profile_list built and its
  Jinja template rendered;
* ``form (same spawner)``: the form again for the same user;
* ``manifest``: what ``start()`` does before calling the API: the choice
  checked (pre-spawn hook), the profile applied, the pod manifest built and
  serialized to JSON.

No Kubernetes API is contacted (the client is configured, never called).
Needs ``pip install '.[kubernetes]'``; no GPU.

    python3 bench/spawner_form.py                 # 200 profiles, 200 samples each
    python3 bench/spawner_form.py --profiles 50 --samples 500 --json
    python3 bench/spawner_form.py --quick         # a smoke run (tests use it)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Awaitable, Callable

GOAL_MS = 20.0


def profiles(count: int) -> list[dict[str, Any]]:
    """Many distinct profiles: varied sizes, GPU types, groups, every other one public."""
    out = []
    for i in range(count):
        out.append({"name": f"p{i:04d}", "display_name": f"Profile {i}",
                    "description": f"Slice number {i} of a big catalogue",
                    "memory": f"{1 + i % 80}GiB", "cores": 1 + (i * 7) % 100,
                    "count": 1 + i % 2, "gpu_types": ["A100", "H100"][: 1 + i % 2],
                    "avoid_gpu_types": ["T4"] if i % 3 == 0 else [],
                    "policy": ("binpack", "spread")[i % 2],
                    "groups": [] if i % 2 == 0 else [f"g{i % 10}", "everyone"]})
    out[0]["default"] = True
    return out


def config(count: int) -> Any:
    from traitlets.config import Config
    c = Config()
    c.GpuProfiles.profiles = profiles(count)
    c.GpuProfiles.custom = {"memory_min": "1GiB", "memory_max": "80GiB", "cores_min": 5,
                            "cores_step": 5, "count_max": 4}
    c.KubeSpawner.image = "quay.io/jupyter/pytorch-notebook:cuda12-python-3.12"
    c.KubeSpawner.cpu_limit = 4
    c.KubeSpawner.mem_limit = "16G"
    return c


def fake_user() -> SimpleNamespace:
    return SimpleNamespace(name="alice", id=7, url="/user/alice/", admin=False, spawners={},
                           groups=[SimpleNamespace(name="everyone")])


def fake_hub() -> SimpleNamespace:
    return SimpleNamespace(public_host="", url="http://hub:8081/hub/", base_url="/hub/",
                           api_url="http://hub:8081/hub/api")


def use_a_dummy_kubeconfig(directory: str) -> None:
    """KubeSpawner loads a client configuration when built; this one is never used."""
    from kubernetes_asyncio.config import kube_config
    path = Path(directory) / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\n"
                    "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
                    "users: [{name: u, user: {token: t}}]\n"
                    "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
                    "current-context: x\n")
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)


async def sample(func: Callable[[], Awaitable[Any]], samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        await func()
        times.append((time.perf_counter() - start) * 1000)
    return times


async def measure(count: int, samples: int) -> dict[str, Any]:
    from hami_spawner.kubernetes import HamiSpawner
    cfg = config(count)

    def new_spawner() -> Any:
        return HamiSpawner(config=cfg, user=fake_user(), hub=fake_hub(), _mock=True)

    async def form_new() -> str:
        spawner = new_spawner()
        return await spawner.options_form(spawner)

    spawner = new_spawner()
    offered = [p["slug"] for p in spawner.profile_list(spawner)]
    html = await spawner.options_form(spawner)

    async def form_same() -> str:
        return await spawner.options_form(spawner)

    choices = iter(range(10**9))

    async def manifest() -> str:
        slug = offered[next(choices) % len(offered)]
        spawner.user_options = ({"profile": slug, "memory": "8GiB", "cores": "25", "count": "2"}
                                if slug == "custom" else {"profile": slug})
        await spawner.run_pre_spawn_hook()
        await spawner.load_user_options()
        pod = await spawner.get_pod_manifest()
        return json.dumps(spawner.api.api_client.sanitize_for_serialization(pod))

    rows = {}
    for name, func in (("form (new spawner)", form_new), ("form (same spawner)", form_same),
                       ("manifest", manifest)):
        await func()  # warm-up (imports, template compilation)
        times = sorted(await sample(func, samples))
        rows[name] = {"median_ms": statistics.median(times),
                      "p90_ms": times[min(len(times) - 1, int(len(times) * 0.9))],
                      "min_ms": times[0], "max_ms": times[-1], "samples": len(times)}
    return {"profiles": count, "offered_to_user": len(offered), "form_bytes": len(html),
            "goal_ms": GOAL_MS, "results": rows}


def environment() -> dict[str, str]:
    import jupyterhub
    import kubespawner
    return {"python": platform.python_version(), "jupyterhub": jupyterhub.__version__,
            "kubespawner": kubespawner.__version__, "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d")}


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['profiles']} profiles configured, {result['offered_to_user']} offered to "
             f"the user; form {result['form_bytes']} bytes; goal < {result['goal_ms']:.0f} ms",
             "",
             "| operation | median ms | p90 ms | min ms | max ms | samples | under goal |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, row in result["results"].items():
        lines.append(f"| {name} | {row['median_ms']:.2f} | {row['p90_ms']:.2f} | "
                     f"{row['min_ms']:.2f} | {row['max_ms']:.2f} | {row['samples']} | "
                     f"{'yes' if row['median_ms'] < result['goal_ms'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=200, help="profiles configured (200)")
    parser.add_argument("--samples", type=int, default=200, help="timed runs of each (200)")
    parser.add_argument("--quick", action="store_true", help="10 profiles, 5 samples")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.quick:
        args.profiles, args.samples = 10, 5
    if args.profiles < 1 or args.samples < 1:
        parser.error("--profiles and --samples must be at least 1")
    with tempfile.TemporaryDirectory() as directory:
        use_a_dummy_kubeconfig(directory)
        result = asyncio.run(measure(args.profiles, args.samples))
    result["environment"] = environment()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        env = result["environment"]
        print(f"{env['date']}, Python {env['python']}, JupyterHub {env['jupyterhub']}, "
              f"KubeSpawner {env['kubespawner']}, {env['processor']}\n")
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
