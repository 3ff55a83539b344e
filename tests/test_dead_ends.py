"""Every foreseeable failure on the way to a server is a sentence, with its status.

A real JupyterHub with the system-accounts spawner (``hami-local``) on a
machine without a GPU (fake NVML with none): an account that does not exist,
an account that cannot run the server command, a GPU profile on a machine
without a GPU.  Each is answered with the reason, in the REST answer and on
the spawn page, never with "HTTP 500: Unhandled error", and nothing starts.
Plus the example config's own refusals (one line, exit status 2) and the
unit rules behind them.
"""
from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("jupyterhub", reason="needs JupyterHub: .venv/bin/pip install '.[test]' (the README's test command)")

from cbuild import build_tests  # noqa: E402
from hub_harness import ROOT, Browser, Hub, fake_driver_dir  # noqa: E402

from hami_spawner import quickstart  # noqa: E402
from hami_spawner.accounts import AccountError, lookup, why_cannot_run  # noqa: E402

MISSING = "hami-no-such-account"
CONFIG = """
c.JupyterHub.spawner_class = "hami-local"
c.LocalGpuSpawner.region_root = {regions!r}
c.Spawner.cmd = [{python!r}, "-m", "jupyterhub.singleuser"]
c.GpuProfiles.profiles = [{{"name": "quarter", "display_name": "Quarter GPU", "memory": "4GiB",
                           "cores": 25, "default": True}}]
"""


@pytest.fixture(scope="module")
def closed_python() -> Iterator[Path]:
    """This Python, reached through a directory only its owner may enter (as a venv in
    root's home is): what the hub's server command looks like to other accounts."""
    top = Path(tempfile.mkdtemp(dir="/tmp"))  # open up to here, so the closed one is the reason
    os.chmod(top, 0o755)
    closed = top / "closed"
    closed.mkdir(mode=0o700)
    (closed / "python").symlink_to(sys.executable)
    try:
        yield closed / "python"
    finally:
        shutil.rmtree(top)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, closed_python: Path) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("dead-ends")
    no_gpu = {"LD_LIBRARY_PATH": str(fake_driver_dir(build_tests("plain"))), "FAKE_CUDA_DEVICE_COUNT": "0"}
    hub = Hub(work, CONFIG.format(regions=str(work / "regions"), python=str(closed_python)), env=no_gpu)
    with hub.running("nobody", MISSING):
        yield hub


def test_an_account_that_cannot_run_the_server_command_gets_403_with_why(hub: Hub, closed_python: Path) -> None:
    status, body = hub.request("POST", "/hub/api/users/nobody/server", {"profile": "cpu"})
    assert status == 403, body
    assert body["message"].startswith(
        f"The server for 'nobody' cannot start: the account 'nobody' cannot run {closed_python} because "
        f"the directory {closed_python.parent} (mode 0700, owner {pwd.getpwuid(os.geteuid()).pw_name}) "
        f"is closed to it. Ask the administrator to install hami-jupyter in a Python environment every "
        f"user can run"), body
    assert hub.server("nobody") is None and hub.server_processes("nobody") == []


def test_the_spawn_page_shows_the_same_sentence(hub: Hub) -> None:
    browser = Browser(hub.url)
    browser.login("nobody")
    status, page = browser.post_form("/hub/spawn/nobody", {"profile": "cpu"})
    assert status == 403
    assert "cannot run" in page and "is closed to it" in page
    assert "HTTP 500" not in page and "Internal Server Error" not in page and "Unhandled error" not in page


def test_a_user_without_an_account_gets_403_with_why(hub: Hub) -> None:
    status, body = hub.request("POST", f"/hub/api/users/{MISSING}/server", {})
    assert status == 403, body
    assert body["message"] == (
        f"There is no system account named {MISSING!r} on this machine, and this hub starts each "
        f"server as its user's own account. Ask the administrator to create it (or to run the hub "
        f"with a shared password, HAMI_HUB_SYSTEM_USERS=0).")
    assert hub.server(MISSING) is None


def test_a_gpu_profile_without_a_gpu_is_400_not_409(hub: Hub) -> None:
    # root's account may run the server command, so what is left is the missing GPU:
    # no server of that profile can ever start here, which waiting would not change.
    hub.create_user("root")
    status, body = hub.request("POST", "/hub/api/users/root/server", {"profile": "quarter"})
    assert status == 400, body
    assert body["message"] == ("This machine has no NVIDIA GPU, so the 'Quarter GPU' slice can never be "
                               "placed here. Choose “CPU only (no GPU)” instead (profile 'cpu').")
    assert hub.server("root") is None and hub.server_processes("root") == []


# ---- the example config refuses a bad environment in one line ---------------------------


def run_example(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HAMI_HUB_")}
    full.update({"HAMI_HUB_DATA_DIR": str(tmp_path / "data"), **env})
    return subprocess.run([sys.executable, "-m", "jupyterhub", "-f",
                           str(ROOT / "examples" / "local" / "jupyterhub_config.py")],
                          cwd=tmp_path, env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("env, message", [
    ({"HAMI_HUB_SYSTEM_USERS": "yes"}, "HAMI_HUB_SYSTEM_USERS must be 0 (a shared password, the default) "
                                       "or 1 (the machine's own accounts), not 'yes'"),
    ({"HAMI_HUB_PASSWORD": "short"}, "HAMI_HUB_PASSWORD must be at least 8 characters"),
    ({"HAMI_HUB_DATA_DIR": "relative/dir"}, "HAMI_HUB_DATA_DIR must be an absolute path, not 'relative/dir'"),
])
def test_example_config_refuses_a_bad_environment_in_one_line(tmp_path: Path, env: dict[str, str],
                                                              message: str) -> None:
    done = run_example(env, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hami-jupyter: error: "), lines
    assert message in lines[0]
    assert os.listdir(tmp_path) in ([], ["data"])  # nothing written where it started


# ---- the rules behind them ------------------------------------------------------------------


def test_system_users_only_on_request_and_only_as_root() -> None:
    assert quickstart.system_users({}, 0) is False  # root gets the shared password too
    assert quickstart.system_users({"HAMI_HUB_SYSTEM_USERS": "1"}, 0) is True
    assert quickstart.system_users({"HAMI_HUB_SYSTEM_USERS": "0"}, 1000) is False
    with pytest.raises(quickstart.SetupError, match=r"HAMI_HUB_SYSTEM_USERS=1 needs the hub to run as root"):
        quickstart.system_users({"HAMI_HUB_SYSTEM_USERS": "1"}, 1000)


def test_data_dir_is_never_the_working_directory(tmp_path: Path) -> None:
    assert quickstart.data_dir({}, 0) == Path("/var/lib/hami-jupyter")
    assert quickstart.data_dir({"HOME": "/home/ada"}, 1000) == Path("/home/ada/.local/share/hami-jupyter")
    assert quickstart.data_dir({"HOME": "/home/ada", "XDG_DATA_HOME": "/data/ada"}, 1000) == \
        Path("/data/ada/hami-jupyter")
    assert quickstart.data_dir({"HAMI_HUB_DATA_DIR": str(tmp_path)}, 0) == tmp_path
    made = quickstart.prepare_data_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    (tmp_path / "link").symlink_to(made)
    with pytest.raises(quickstart.SetupError, match="is not a directory"):
        quickstart.prepare_data_dir(tmp_path / "link")


def test_passwords_come_from_the_env_or_are_made_once_and_kept(tmp_path: Path) -> None:
    keep = tmp_path / "password"
    made, where = quickstart.password({}, "PW", keep, 8)
    assert len(made) >= 8 and where == str(keep) and stat.S_IMODE(keep.stat().st_mode) == 0o600
    assert quickstart.password({}, "PW", keep, 8) == (made, str(keep))  # a restart keeps it
    assert quickstart.password({"PW": "chosen-one"}, "PW", keep, 8) == ("chosen-one", "PW")
    os.chmod(keep, 0o644)
    with pytest.raises(quickstart.SetupError, match="must be a file of yours that only you can read"):
        quickstart.password({}, "PW", keep, 8)


def test_why_an_account_cannot_run_a_command() -> None:
    nobody, me = lookup("nobody"), pwd.getpwuid(os.geteuid()).pw_name
    top = Path(tempfile.mkdtemp(dir="/tmp"))  # /tmp itself is open to everyone
    try:
        closed, tool = top / "closed", top / "closed" / "tool"
        closed.mkdir(mode=0o700)
        tool.write_text("#!/bin/sh\n")
        os.chmod(tool, 0o755)
        os.chmod(top, 0o755)
        assert why_cannot_run(str(tool), nobody) == f"the directory {closed} (mode 0700, owner {me}) is closed to it"
        os.chmod(closed, 0o755)
        assert why_cannot_run(str(tool), nobody) is None
        os.chmod(tool, 0o644)
        assert why_cannot_run(str(tool), nobody) == f"{tool} (mode 0644, owner {me}) is not executable for it"
        os.chmod(tool, 0o755)
        (top / "link").symlink_to(tool)  # open itself, but leads into a closed directory
        os.chmod(closed, 0o700)
        assert "is closed to it" in why_cannot_run(str(top / "link"), nobody)
    finally:
        shutil.rmtree(top)
    assert why_cannot_run("hami-no-such-command", nobody) == \
        "the command 'hami-no-such-command' is not found on the hub's PATH"
    with pytest.raises(AccountError, match="no system account named 'hami-no-such-account'"):
        lookup(MISSING)
