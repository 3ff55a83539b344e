"""The JupyterLab extension: its TypeScript unit tests, and that pip installed it prebuilt."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from labext import LABEXTENSION, ensure_node_modules, jlpm


def test_typescript_unit_tests() -> None:
    ensure_node_modules()
    done = jlpm("test")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    # node's test runner: every test ran and passed.
    assert re.search(r"^ℹ fail 0$", out, re.M) and re.search(r"^ℹ pass ([1-9][0-9]*)$", out, re.M), out


def test_the_typescript_is_strict() -> None:
    config = json.loads((LABEXTENSION / "tsconfig.json").read_text())["compilerOptions"]
    assert config["strict"] is True and config["noImplicitAny"] is True
    assert (LABEXTENSION / "yarn.lock").stat().st_size > 0  # the lockfile is committed


def test_installed_prebuilt_and_enabled() -> None:
    """After pip install: the prebuilt extension is in the environment, and JupyterLab lists it enabled."""
    installed = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "hami-jupyter-vgpu"
    meta = json.loads((installed / "package.json").read_text())
    assert meta["name"] == "hami-jupyter-vgpu"
    assert meta["jupyterlab"]["_build"]["load"].startswith("static/remoteEntry.")
    assert (installed / meta["jupyterlab"]["_build"]["load"]).is_file()
    assert (installed / "schemas" / "hami-jupyter-vgpu" / "plugin.json").is_file()
    listed = subprocess.run([sys.executable, "-m", "jupyterlab.labextensions", "list"], capture_output=True,
                            text=True, timeout=120)
    out = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)
    assert re.search(r"hami-jupyter-vgpu v0\.1\.0 enabled\s+OK", out), out
