"""The idle-memory policy in a real server: real kernels through hami-provisioner, the fake driver.

Short thresholds (a kernel is idle after 4 s, shut down 2 s after the
warning) so the test is quick; every wait is for a state, never a fixed
sleep that a loaded machine could outrun. Besides the idle kernel, each
server holds a kernel that is executing a long cell and one that launches
GPU work from a thread: both hold memory far longer than the threshold and
must never be warned about or touched.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cbuild import build_tests
from hub_harness import wait_for
from kernel_code import ALLOCATOR, holding_and_launching
from lab_harness import CONTEXT, HttpError, MiB, Server, install_spec, slice_env
from hami_kernel.region import read_region
from hami_kernel.idle_view import idle_file_path

IDLE_AFTER = 4
GRACE = 2
POLICY = [f"--IdlePolicy.idle_after={IDLE_AFTER}", f"--IdlePolicy.grace={GRACE}",
          "--IdlePolicy.check_interval=0.5", "--IdlePolicy.min_memory=64MiB"]

# Holds memory, then runs one long cell: executing all along.
EXECUTING = ALLOCATOR + "\nassert alloc(150) == 0\nimport time\ntime.sleep(600)\n"
# Holds memory and launches GPU work from a thread every 0.1 s, with no cell running.
LAUNCHING = ALLOCATOR + holding_and_launching(120)


def start_server(tmp: Path, action: str) -> Server:
    srv = Server(tmp, slice_env(build_tests("plain"), tmp), extra_args=[f"--IdlePolicy.action={action}", *POLICY])
    install_spec(srv.data, "gpu", {})
    return srv.start()


def held_by(srv: Server, kernel_id: str) -> int:
    region = read_region(srv.env["CUDA_DEVICE_MEMORY_SHARED_CACHE"])
    return sum(use.memory_used for proc in region.process(kernel_id) for use in proc.devices)


def notices(srv: Server, kernel_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [n for n in srv.usage()["idle"]["notices"]
            if n["kernel_id"] == kernel_id and (kind is None or n["kind"] == kind)]


def start_busy_kernels(srv: Server) -> dict[str, str]:
    """A kernel executing a long cell and one launching GPU work, both holding memory."""
    ids = {"executing": srv.open_notebook("executing.ipynb", "gpu"),
           "launching": srv.open_notebook("launching.ipynb", "gpu")}
    srv.client(ids["executing"]).execute(EXECUTING)  # not waited for: it runs to the end
    srv.execute(ids["launching"], LAUNCHING)
    for name, mib in (("executing", 150), ("launching", 120)):
        wait_for(f"the {name} kernel's memory", lambda k=ids[name], m=mib: held_by(srv, k) == CONTEXT + m * MiB,
                 timeout=60)
    return ids


def assert_untouched(srv: Server, ids: dict[str, str]) -> None:
    alive = {k["id"] for k in srv.get("api/kernels")}
    usage = {k["kernel_id"]: k for k in srv.usage()["kernels"]}
    for name, kernel_id in ids.items():
        assert kernel_id in alive, f"the {name} kernel was shut down"
        assert notices(srv, kernel_id) == [], f"the {name} kernel got a notice"
        assert usage[kernel_id]["idle"] is False and usage[kernel_id]["reclaim_at"] is None
    assert usage[ids["executing"]]["execution_state"] == "busy"
    # Both have held their memory longer than the threshold: only activity kept them.
    assert usage[ids["executing"]]["idle_seconds"] >= IDLE_AFTER


@pytest.fixture(scope="module")
def shutdown_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("reclaim"), "shutdown")
    try:
        yield srv
    finally:
        srv.stop()


def test_an_idle_kernel_is_warned_then_shut_down_and_its_memory_returns(shutdown_server: Server) -> None:
    srv = shutdown_server
    busy = start_busy_kernels(srv)
    small = srv.open_notebook("small.ipynb", "gpu")
    assert srv.allocate(small, 8) == 0  # 16+8 MiB: under min_memory, only marked
    idle = srv.open_notebook("idle.ipynb", "gpu")
    assert srv.allocate(idle, 200) == 0
    held = CONTEXT + 200 * MiB
    assert held_by(srv, idle) == held
    slice_before = srv.usage()["devices"][0]["memory_used_bytes"]

    # Marked idle past the threshold, and announced before anything happens.
    (warning,) = wait_for("the warning", lambda: notices(srv, idle, "warning"), timeout=60)
    assert warning["memory_bytes"] == held and warning["path"] == "idle.ipynb"
    assert warning["deadline"] >= warning["time"] + GRACE
    assert "will be shut down" in warning["message"] and "216 MiB" in warning["message"]

    # Then shut down: its memory leaves the slice, and the user is told how much came back.
    (done,) = wait_for("the shutdown", lambda: notices(srv, idle, "shutdown"), timeout=60)
    assert done["time"] >= warning["deadline"]
    assert done["freed_bytes"] == held and "216 MiB of GPU memory came back" in done["message"]
    assert idle not in {k["id"] for k in srv.get("api/kernels")}
    assert held_by(srv, idle) == 0
    usage = srv.usage()
    assert usage["devices"][0]["memory_used_bytes"] <= slice_before - held
    assert idle not in {k["kernel_id"] for k in usage["kernels"]}

    # The small one is marked idle but holds too little to act on.
    small_entry = next(k for k in usage["kernels"] if k["kernel_id"] == small)
    assert small_entry["idle"] is True and notices(srv, small) == []
    assert small in {k["id"] for k in srv.get("api/kernels")}
    # Idle memory in the metrics: the small kernel's, on the device and for the slice.
    samples = {(m.name, tuple(sorted(m.labels.items()))): m.value
               for family in text_string_to_metric_families(srv.get("api/vgpu/v1/metrics", raw=True)[2])
               for m in family.samples}
    small_held = CONTEXT + 8 * MiB
    assert samples[("hami_vgpu_slice_idle_memory_bytes", ())] == small_held
    device = (("device_name", "Fake GPU"), ("device_uuid", usage["devices"][0]["uuid"]))
    assert samples[("hami_vgpu_idle_memory_bytes", device)] == small_held
    marks = {dict(labels)["kernel_id"]: v for (name, labels), v in samples.items() if name == "hami_vgpu_kernel_idle"}
    assert marks == {small: 1.0, busy["executing"]: 0.0, busy["launching"]: 0.0}

    # Busy kernels: held memory all along, never announced, never touched.
    assert_untouched(srv, busy)


def test_the_idle_file_tells_vgpu_in_the_kernels(shutdown_server: Server) -> None:
    import json

    srv = shutdown_server
    path = idle_file_path(srv.env["CUDA_DEVICE_MEMORY_SHARED_CACHE"])
    doc = wait_for("the idle file", lambda: Path(path).is_file() and json.loads(Path(path).read_text()), timeout=30)
    assert doc["policy"] == {"action": "shutdown", "idle_after_seconds": IDLE_AFTER,
                             "min_memory_bytes": 64 * MiB, "grace_seconds": GRACE}
    usage = {k["kernel_id"]: k for k in srv.usage()["kernels"] if k["kernel_id"]}
    wait_for("the file to catch up", lambda: set(json.loads(Path(path).read_text())["kernels"]) == set(usage),
             timeout=30)
    # %vgpu in the small kernel (idle past the threshold, below min_memory): its row says IDLE.
    small = next(k for k, v in usage.items() if v["path"] == "small.ipynb")
    text, line = srv.execute(small, "from hami_kernel import status, status_text\n_s = status.gather()\n"
                                    "_t = status_text.format_text(_s); _l = status_text.status_line(_s)", "(_t, _l)")
    row = next(line for line in text.splitlines() if small[:8] + "*" in line)
    assert re.search(r"\b\d+ s IDLE$", row), text
    # %vgpu watch's line (where no widgets show) ends with the same.
    assert re.search(r"^\d\d:\d\d:\d\d GPU-\S+ VRAM kernel .*; idle \d+ s IDLE$", line), line
    executing = next(k for k, v in usage.items() if v["path"] == "executing.ipynb")
    assert not next(line for line in text.splitlines() if executing[:8] in line).endswith("IDLE"), text
    assert "the idle policy shuts them down 2 s after a warning (kernels holding 64 MiB or more" in text


@pytest.mark.parametrize("body, reason", [
    ({"action": "delete", "idle_after": 1, "min_memory": "1GiB"}, "action must be"),
    ({"action": "shutdown", "idle_after": -1, "min_memory": "1GiB"}, "idle_after must be"),
    ({"action": "shutdown", "idle_after": 1, "min_memory": "lots"}, "min_memory"),
    ({"action": "shutdown", "idle_after": 1, "min_memory": "1GiB", "force": True}, "unknown field"),
    ([1], "must be an object"),
])
def test_bad_reclaim_requests_get_400(shutdown_server: Server, body: object, reason: str) -> None:
    kernel = next(k["id"] for k in shutdown_server.get("api/kernels"))
    with pytest.raises(HttpError) as err:
        shutdown_server.post(f"api/vgpu/v1/kernels/{kernel}/reclaim", body)
    assert err.value.status == 400 and reason in err.value.json()["message"]
    with pytest.raises(HttpError) as err:
        shutdown_server.post("api/vgpu/v1/kernels/no-such-kernel/reclaim", {"action": "warn"})
    assert err.value.status == 404


def test_warn_only_warns(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "warn")
    try:
        busy = start_busy_kernels(srv)
        idle = srv.open_notebook("idle.ipynb", "gpu")
        assert srv.allocate(idle, 100) == 0
        (notice,) = wait_for("the idle notice", lambda: notices(srv, idle, "idle"), timeout=60)
        assert notice["memory_bytes"] == CONTEXT + 100 * MiB and "116 MiB" in notice["message"]
        # Well past what a shutdown would have taken: still there, holding its memory, warned once.
        wait_for("a later check", lambda: srv.usage()["time"] > notice["time"] + 2 * GRACE + 1, timeout=60)
        assert idle in {k["id"] for k in srv.get("api/kernels")}
        assert held_by(srv, idle) == CONTEXT + 100 * MiB
        assert len(notices(srv, idle)) == 1
        # Running something ends its idle spell; it is not marked idle any more.
        srv.execute(idle, "x = 1")
        assert next(k for k in srv.usage()["kernels"] if k["kernel_id"] == idle)["idle"] is False
        assert_untouched(srv, busy)
    finally:
        srv.stop()
