"""End-to-end tests of the ``hami-kernel`` kernelspec CLI.

Every test runs against temporary Jupyter directories (HOME, JUPYTER_DATA_DIR,
JUPYTER_PATH, IPYTHONDIR), so the real user's kernelspecs are never touched.
The ``python3`` base comes from this Python's own share/jupyter (read only) or,
when there is none, from ipykernel.  Nothing here needs the hami-provisioner
entry point to be installed: where Jupyter must resolve it, it is registered
(or hidden) in jupyter_client's provisioner cache for the test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.provisioning import KernelProvisionerFactory

from hami_kernel import kernelspec_cli
from hami_kernel.kernelspec_cli import main

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30
HAMI_EP = EntryPoint(name="hami-provisioner", value="hami_kernel.provisioner:HamiProvisioner",
                     group="jupyter_client.kernel_provisioners")


@pytest.fixture
def jdirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    dirs = {k: tmp_path / k for k in ("home", "data", "prefix", "ipython", "config")}
    for path in dirs.values():
        path.mkdir()
    monkeypatch.setenv("HOME", str(dirs["home"]))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(dirs["data"]))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(dirs["config"]))
    monkeypatch.setenv("JUPYTER_PATH", str(dirs["prefix"] / "share" / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(dirs["ipython"]))
    monkeypatch.delenv("JUPYTER_PREFER_ENV_PATH", raising=False)
    dirs["user_kernels"] = dirs["data"] / "kernels"
    dirs["prefix_kernels"] = dirs["prefix"] / "share" / "jupyter" / "kernels"
    return dirs


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def base_python3() -> tuple[dict, str]:
    """The python3 kernel.json Jupyter would use here, and its resource dir."""
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    path = KernelSpecManager().find_kernel_specs()["python3"]
    if os.path.isfile(os.path.join(path, "kernel.json")):
        return json.loads(Path(path, "kernel.json").read_text()), path
    return get_kernel_dict(), RESOURCES


def kernel_json(kernel_dir: Path) -> dict:
    return json.loads((kernel_dir / "kernel.json").read_text(encoding="utf-8"))


def write_spec(kernels: Path, name: str, spec: dict, files: dict[str, bytes] = {}) -> Path:
    path = kernels / name
    path.mkdir(parents=True)
    (path / "kernel.json").write_text(json.dumps(spec))
    for fname, content in files.items():
        (path / fname).write_bytes(content)
    return path


def test_install_writes_exact_kernel_json(jdirs, capsys):
    status, out, err = run(capsys, "install", "--name", "gpu-4g", "--memory", "4GiB", "--cores", "25")
    dest = jdirs["user_kernels"] / "gpu-4g"  # --user is the default
    assert status == 0, err
    assert out == f"Installed kernelspec gpu-4g in {dest} (Python 3 (GPU 4 GiB · 25%))\n"
    base, base_dir = base_python3()
    expected = dict(base, display_name="Python 3 (GPU 4 GiB · 25%)", metadata={
        **base.get("metadata", {}),
        "kernel_provisioner": {"provisioner_name": "hami-provisioner",
                               "config": {"memory": "4GiB", "cores": 25}},
        "hami": {"memory": 4 * GIB, "cores": 25, "from": "python3"}})
    assert kernel_json(dest) == expected
    assert kernel_json(dest)["argv"] == base["argv"]
    logos = sorted(p for p in os.listdir(base_dir) if p.startswith("logo-"))
    assert logos and all((dest / logo).is_file() for logo in logos)


def test_jupyter_finds_the_spec_and_its_provisioner(jdirs, capsys, monkeypatch):
    assert run(capsys, "install", "--name", "GPU-4G", "--memory", "4GiB", "--cores", "25")[0] == 0
    ksm = KernelSpecManager()
    assert ksm.find_kernel_specs()["gpu-4g"] == str(jdirs["user_kernels"] / "gpu-4g")
    provisioner = {"provisioner_name": "hami-provisioner", "config": {"memory": "4GiB", "cores": 25}}

    # Registered, as installing hami-jupyter does: Jupyter serves the spec.
    monkeypatch.setitem(KernelProvisionerFactory.provisioners, "hami-provisioner", HAMI_EP)
    spec = ksm.get_kernel_spec("gpu-4g")
    assert spec.metadata["kernel_provisioner"] == provisioner
    assert spec.display_name == "Python 3 (GPU 4 GiB · 25%)"
    assert KernelProvisionerFactory.instance().is_provisioner_available(spec)
    assert "gpu-4g" in ksm.get_all_specs()

    # Not registered: Jupyter hides the spec, but hami-kernel still lists it.
    monkeypatch.delitem(KernelProvisionerFactory.provisioners, "hami-provisioner")
    monkeypatch.setattr(KernelProvisionerFactory, "_get_provisioner",
                        lambda self, name: (_ for _ in ()).throw(RuntimeError(name)))
    with pytest.raises(NoSuchKernel):
        ksm.get_kernel_spec("gpu-4g")
    assert KernelSpec.from_resource_dir(ksm.find_kernel_specs()["gpu-4g"]).metadata[
        "kernel_provisioner"] == provisioner
    assert "gpu-4g" in json.loads(run(capsys, "list", "--json")[1])["kernelspecs"]


@pytest.mark.parametrize("args, display, config, hami", [
    (["--memory", "4GiB"], "Python 3 (GPU 4 GiB)", {"memory": "4GiB"}, {"memory": 4 * GIB, "cores": None}),
    (["--cores", "30%"], "Python 3 (GPU · 30%)", {"cores": 30}, {"memory": None, "cores": 30}),
    (["--memory", "1.5GiB", "--cores", "100"], "Python 3 (GPU 1.5 GiB · 100%)",
     {"memory": "1536MiB", "cores": 100}, {"memory": 3 * GIB // 2, "cores": 100}),
    (["--memory", "8g", "--display-name", "Big GPU"], "Big GPU", {"memory": "8GiB"},
     {"memory": 8 * GIB, "cores": None}),
])
def test_install_variants(jdirs, capsys, args, display, config, hami):
    status, out, err = run(capsys, "install", "--name", "k", *args)
    assert status == 0, err
    spec = kernel_json(jdirs["user_kernels"] / "k")
    assert spec["display_name"] == display and out.endswith(f"({display})\n")
    assert spec["metadata"]["kernel_provisioner"]["config"] == config
    assert spec["metadata"]["hami"] == dict(hami, **{"from": "python3"})


def test_install_locations(jdirs, capsys, monkeypatch, tmp_path):
    status, out, err = run(capsys, "install", "--name", "p", "--memory", "2GiB",
                           "--prefix", str(jdirs["prefix"]))
    assert status == 0 and "JUPYTER_PATH" not in err
    assert out.startswith(f"Installed kernelspec p in {jdirs['prefix_kernels'] / 'p'} ")
    assert KernelSpecManager().find_kernel_specs()["p"] == str(jdirs["prefix_kernels"] / "p")

    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))  # never the real env
    assert run(capsys, "install", "--name", "s", "--cores", "10", "--sys-prefix")[0] == 0
    assert (tmp_path / "venv" / "share" / "jupyter" / "kernels" / "s" / "kernel.json").is_file()

    status, out, err = run(capsys, "install", "--name", "u", "--cores", "10", "--user")
    assert status == 0 and (jdirs["user_kernels"] / "u" / "kernel.json").is_file()
    assert not (jdirs["home"] / ".local").exists()

    # A prefix Jupyter does not search works, with a warning that says how to fix it.
    status, out, err = run(capsys, "install", "--name", "o", "--cores", "10", "--prefix", str(tmp_path / "o"))
    assert status == 0
    assert f"{tmp_path / 'o' / 'share' / 'jupyter'} to JUPYTER_PATH" in err


def test_provisioner_missing_warning(jdirs, capsys, monkeypatch):
    monkeypatch.setattr(kernelspec_cli, "entry_points", lambda **kw: [])
    status, _, err = run(capsys, "install", "--name", "w", "--cores", "10")
    assert status == 0
    assert err.startswith("hami-kernel: warning: the hami-provisioner provisioner is not installed")
    monkeypatch.setattr(kernelspec_cli, "entry_points", lambda **kw: [HAMI_EP])
    assert run(capsys, "install", "--name", "w", "--cores", "10")[2] == ""


def test_reinstall_resizes(jdirs, capsys):
    assert run(capsys, "install", "--name", "g", "--memory", "4GiB")[0] == 0
    assert run(capsys, "install", "--name", "g", "--memory", "8GiB")[0] == 0
    assert kernel_json(jdirs["user_kernels"] / "g")["metadata"]["kernel_provisioner"]["config"] == {
        "memory": "8GiB"}


def test_install_from_custom_base(jdirs, capsys):
    base = {"argv": ["/opt/r/bin/R", "--slave", "-f", "{resource_dir}/kernel.R", "{connection_file}"],
            "display_name": "R 4.3", "language": "R", "interrupt_mode": "message",
            "env": {"R_LIBS_USER": "/opt/r/libs"},
            "metadata": {"kernel_provisioner": {"provisioner_name": "local-provisioner"}, "lab": 1}}
    write_spec(jdirs["user_kernels"], "my-r", base,
               {"logo-64x64.png": b"\x89PNG fake", "kernel.R": b"# launcher\n"})
    status, out, err = run(capsys, "install", "--name", "r-gpu", "--memory", "2GiB", "--from", "my-r")
    assert status == 0, err
    dest = jdirs["user_kernels"] / "r-gpu"
    assert out == f"Installed kernelspec r-gpu in {dest} (R 4.3 (GPU 2 GiB))\n"
    assert kernel_json(dest) == dict(base, display_name="R 4.3 (GPU 2 GiB)", metadata={
        "lab": 1, "kernel_provisioner": {"provisioner_name": "hami-provisioner",
                                         "config": {"memory": "2GiB"}},
        "hami": {"memory": 2 * GIB, "cores": None, "from": "my-r"}})
    assert (dest / "logo-64x64.png").read_bytes() == b"\x89PNG fake"
    assert (dest / "kernel.R").read_bytes() == b"# launcher\n"


def test_python3_falls_back_to_ipykernel(jdirs, capsys, monkeypatch):
    from ipykernel.kernelspec import get_kernel_dict
    monkeypatch.setattr(KernelSpecManager, "find_kernel_specs", lambda self: {})
    assert run(capsys, "install", "--name", "f", "--memory", "1GiB")[0] == 0
    spec = kernel_json(jdirs["user_kernels"] / "f")
    assert spec["argv"] == get_kernel_dict()["argv"]
    assert spec["display_name"] == "Python 3 (GPU 1 GiB)"
    assert (jdirs["user_kernels"] / "f" / "logo-64x64.png").is_file()


def test_list_shows_only_hami_specs(jdirs, capsys):
    status, out, _ = run(capsys, "list")
    assert status == 0 and out.startswith("No hami kernelspecs installed")
    assert json.loads(run(capsys, "list", "--json")[1]) == {"kernelspecs": {}}

    write_spec(jdirs["user_kernels"], "plain", {"argv": ["x"], "display_name": "Plain", "language": "x"})
    run(capsys, "install", "--name", "gpu-4g", "--memory", "4GiB", "--cores", "25")
    run(capsys, "install", "--name", "half", "--cores", "50", "--prefix", str(jdirs["prefix"]))
    status, out, _ = run(capsys, "list")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 3 and "plain" not in out and "python3" not in out
    assert lines[0].split() == ["NAME", "DISPLAY", "NAME", "MEMORY", "CORES", "DIRECTORY"]
    assert lines[1].split() == ["gpu-4g", "Python", "3", "(GPU", "4", "GiB", "·", "25%)", "4", "GiB",
                                "25%", str(jdirs["user_kernels"] / "gpu-4g")]
    assert lines[2].split()[0] == "half" and lines[2].split()[-3:] == [
        "-", "50%", str(jdirs["prefix_kernels"] / "half")]

    data = json.loads(run(capsys, "list", "--json")[1])
    assert data == {"kernelspecs": {
        "gpu-4g": {"display_name": "Python 3 (GPU 4 GiB · 25%)", "memory": 4 * GIB, "cores": 25,
                   "resource_dir": str(jdirs["user_kernels"] / "gpu-4g"),
                   "config": {"memory": "4GiB", "cores": 25}},
        "half": {"display_name": "Python 3 (GPU · 50%)", "memory": None, "cores": 50,
                 "resource_dir": str(jdirs["prefix_kernels"] / "half"), "config": {"cores": 50}}}}


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hami-kernel: error: "), err
    return lines[0]


def test_remove(jdirs, capsys):
    write_spec(jdirs["user_kernels"], "plain", {"argv": ["x"], "display_name": "Plain", "language": "x"})
    for name in ("a", "b"):
        run(capsys, "install", "--name", name, "--cores", "20")

    status, out, err = run(capsys, "remove", "a", "nope")  # a typo removes nothing
    assert status == 2 and "nope" in one_error_line(err) and out == ""
    status, out, err = run(capsys, "remove", "a", "plain")
    assert status == 2 and "plain is not a hami kernelspec" in one_error_line(err)
    status, out, err = run(capsys, "remove", "python3")
    assert status == 2 and "python3 is not a hami kernelspec" in one_error_line(err)
    assert (jdirs["user_kernels"] / "a").is_dir() and (jdirs["user_kernels"] / "plain").is_dir()

    status, out, err = run(capsys, "remove", "a", "B", "-y")
    assert status == 0 and err == ""
    assert out == f"Removed {jdirs['user_kernels'] / 'a'}\nRemoved {jdirs['user_kernels'] / 'b'}\n"
    assert sorted(os.listdir(jdirs["user_kernels"])) == ["plain"]
    assert json.loads(run(capsys, "list", "--json")[1]) == {"kernelspecs": {}}


@pytest.mark.parametrize("args", [
    ["--name", "n", "--memory", "4GB"],
    ["--name", "n", "--memory", "lots"],
    ["--name", "n", "--memory", "0"],
    ["--name", "n", "--memory", "-1"],
    ["--name", "n", "--memory=-4GiB"],  # argparse reads a bare "-4GiB" as an option
    ["--name", "n", "--memory", "9" * 30 + "TiB"],  # too large: one line, not a traceback
    ["--name", "n", "--memory", "1" * 5000],
    ["--name", "n", "--cores", "-5"],
    ["--name", "n", "--cores", "0"],
    ["--name", "n", "--cores", "101"],
    ["--name", "n", "--cores", "x"],
    ["--name", "n", "--cores", "12.5"],
    ["--name", "n"],
    ["--name", "bad name", "--cores", "10"],
    ["--name", "..", "--cores", "10"],
    ["--name", "a/b", "--cores", "10"],
    ["--name", "grüße", "--cores", "10"],
    ["--name", "python3", "--cores", "10"],
    ["--name", "n", "--cores", "10", "--from", "no-such-kernel"],
])
def test_bad_input_is_one_line_and_exit_2(jdirs, capsys, args):
    status, out, err = run(capsys, "install", *args)
    assert status == 2 and out == ""
    one_error_line(err)
    assert not jdirs["user_kernels"].exists()


def test_error_messages(jdirs, capsys):
    assert "4GiB" in one_error_line(run(capsys, "install", "--name", "n", "--memory", "4GB")[2])
    assert "too large" in one_error_line(run(capsys, "install", "--name", "n", "--memory", "9" * 30 + "TiB")[2])
    assert "--memory, --cores" in one_error_line(run(capsys, "install", "--name", "n")[2])
    err = run(capsys, "install", "--name", "n", "--cores", "1", "--from", "nope")[2]
    assert one_error_line(err) == ("hami-kernel: error: no kernelspec named nope; "
                                   "`jupyter kernelspec list` shows the installed ones")


def test_write_errors_exit_1(jdirs, capsys, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    status, _, err = run(capsys, "install", "--name", "n", "--cores", "1", "--prefix", str(tmp_path / "file"))
    assert status == 1 and one_error_line(err)

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", "/usr/share/jupyter/kernels/n")
    monkeypatch.setattr(KernelSpecManager, "install_kernel_spec", denied)
    status, _, err = run(capsys, "install", "--name", "n", "--cores", "1")
    assert status == 1 and "Permission denied" in one_error_line(err)


def test_argparse_usage_errors_exit_2(jdirs, capsys):
    for argv in ([], ["install", "--memory", "1GiB"], ["remove"], ["frobnicate"],
                 ["install", "--name", "n", "--cores", "1", "--user", "--prefix", "/x"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_as_a_real_process(jdirs):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hami_kernel.kernelspec_cli", *argv], cwd=REPO,
                              env=env, capture_output=True, text=True, encoding="utf-8", timeout=120)

    bad = cli("install", "--name", "n", "--memory", "4GB")
    assert bad.returncode == 2 and bad.stdout == ""
    assert one_error_line(bad.stderr).startswith("hami-kernel: error: '4GB' is ambiguous")
    assert cli("install", "--name", "n", "--cores", "101").returncode == 2

    ok = cli("install", "--name", "gpu-4g", "--memory", "4GiB", "--cores", "25")
    dest = jdirs["user_kernels"] / "gpu-4g"
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"Installed kernelspec gpu-4g in {dest} (Python 3 (GPU 4 GiB · 25%))\n"
    assert kernel_json(dest)["metadata"]["kernel_provisioner"]["config"] == {"memory": "4GiB", "cores": 25}
    listed = cli("list", "--json")
    assert listed.returncode == 0 and list(json.loads(listed.stdout)["kernelspecs"]) == ["gpu-4g"]
    refused = cli("remove", "python3")
    assert refused.returncode == 2 and one_error_line(refused.stderr)
    assert cli("remove", "gpu-4g").returncode == 0 and not dest.exists()
    assert cli("--help").returncode == 0
