"""``hami-kernel``: install, list and remove Jupyter kernelspecs that start on a GPU slice.

A hami kernelspec is a copy of an ordinary one (``python3`` by default) whose
``metadata.kernel_provisioner`` names ``hami-provisioner`` with the slice's
size, so every kernel started from it gets that VRAM cap and compute share::

    hami-kernel install --name gpu-4g --memory 4GiB --cores 25
    hami-kernel list [--json]
    hami-kernel remove gpu-4g

``hami-kernel run`` (:mod:`hami_kernel.run_cli`) runs any command in a slice.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Sequence

from . import run_cli
from .slice import format_memory, format_memory_env, parse_memory, parse_share

if TYPE_CHECKING:
    from jupyter_client.kernelspec import KernelSpecManager

PROG = "hami-kernel"
PROVISIONER = "hami-provisioner"
# Jupyter's rule plus a leading letter/digit: it allows "..", and installing rmtree()s the target.
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")


class CliError(Exception):
    """A problem to report as one line; ``status`` 2 for bad input, 1 otherwise."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _manager() -> KernelSpecManager:
    # Imported here: `hami-kernel run` needs no Jupyter, and may run where there is none.
    from jupyter_client.kernelspec import KernelSpecManager
    # A quiet logger of our own: jupyter_client's warnings would add a second, vaguer line.
    log = logging.getLogger(PROG)
    log.setLevel(logging.ERROR)
    return KernelSpecManager(log=log)


def _read(resource_dir: str) -> dict[str, Any]:
    path = os.path.join(resource_dir, "kernel.json")
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return spec


def _hami_config(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The provisioner config of a hami kernelspec; None for any other spec."""
    stanza = (spec.get("metadata") or {}).get("kernel_provisioner") or {}
    return (stanza.get("config") or {}) if stanza.get("provisioner_name") == PROVISIONER else None


def _hami_specs(ksm: KernelSpecManager) -> dict[str, tuple[str, dict[str, Any]]]:
    """{name: (directory, kernel.json)} of the hami kernelspecs Jupyter can see.

    kernel.json is read directly rather than through get_all_specs(): Jupyter
    hides a spec whose provisioner is not installed in this environment, and
    those are exactly the ones a user may need to list or remove.
    """
    found = {}
    for name, path in sorted(ksm.find_kernel_specs().items()):
        try:
            spec = _read(path)
        except (OSError, ValueError):
            continue  # not a kernelspec Jupyter could load either (or ipykernel's built-in)
        if _hami_config(spec) is not None:
            found[name] = (path, spec)
    return found


def _load_base(ksm: KernelSpecManager, name: str) -> tuple[dict[str, Any], str | None]:
    path = ksm.find_kernel_specs().get(name.lower())
    if path and os.path.isfile(os.path.join(path, "kernel.json")):
        return _read(path), path
    if name.lower() == "python3":
        # No python3 kernelspec on disk: Jupyter then uses ipykernel's own.
        from ipykernel.kernelspec import RESOURCES, get_kernel_dict
        return get_kernel_dict(), RESOURCES
    raise CliError(f"no kernelspec named {name}; `jupyter kernelspec list` shows the installed ones")


def _canonical_memory(nbytes: int) -> str:
    """Exact, unit-suffixed form for the provisioner ("4GiB", "1536MiB")."""
    env = format_memory_env(nbytes)  # never rounds: "4g", "1536m", "1000"
    return env[:-1] + env[-1].upper() + "iB" if env[-1].isalpha() else env


def install(args: argparse.Namespace) -> int:
    if args.memory is None and args.cores is None:
        raise CliError("give --memory, --cores or both: a kernelspec without either would not be a slice")
    try:
        memory = None if args.memory is None else parse_memory(args.memory)
        cores = None if args.cores is None else parse_share(args.cores)
    except ValueError as e:
        raise CliError(str(e)) from None
    name = args.name.lower()
    if not _NAME_RE.fullmatch(name):
        raise CliError(f"invalid kernel name {args.name!r}: use ASCII letters, digits and - . _, "
                       f"starting with a letter or digit")
    ksm = _manager()
    # Replacing an existing hami spec is how a slice is resized; replacing or
    # shadowing a plain kernelspec (python3 above all) would lose it.
    other = ksm.find_kernel_specs().get(name)
    if other and name not in _hami_specs(ksm):
        raise CliError(f"a kernelspec named {name} already exists in {other} and is not a hami one; "
                       f"choose another --name")
    base, base_dir = _load_base(ksm, args.base)

    # "Python 3 (ipykernel) (GPU 4 GiB)" says nothing more than "Python 3 (GPU 4 GiB)".
    base_name = re.sub(r"\s*\(ipykernel\)$", "", base.get("display_name") or args.base)
    size = "GPU" + (f" {format_memory(memory)}" if memory else "") + (f" · {cores}%" if cores else "")
    config: dict[str, Any] = {"memory": _canonical_memory(memory)} if memory else {}
    config.update({"cores": cores} if cores else {})
    metadata = {k: v for k, v in (base.get("metadata") or {}).items() if k != "kernel_provisioner"}
    metadata["kernel_provisioner"] = {"provisioner_name": PROVISIONER, "config": config}
    metadata["hami"] = {"memory": memory, "cores": cores, "from": args.base}
    spec = dict(base, metadata=metadata, display_name=args.display_name or f"{base_name} ({size})")

    user, prefix = not args.prefix, args.prefix or None
    with tempfile.TemporaryDirectory(prefix="hami-kernel-") as tmp:
        src = os.path.join(tmp, name)
        # The whole resource dir, not only the logos: argv may run files from
        # it through "{resource_dir}".
        if base_dir and os.path.isdir(base_dir):
            shutil.copytree(base_dir, src, ignore=shutil.ignore_patterns("kernel.json", "__pycache__"))
        else:
            os.makedirs(src)
        with open(os.path.join(src, "kernel.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=1, ensure_ascii=False)
        try:
            dest = ksm.install_kernel_spec(src, name, user=user, prefix=prefix)
        except OSError as e:
            raise CliError(f"cannot install kernelspec {name}: {e}", 1) from None
    print(f"Installed kernelspec {name} in {dest} ({spec['display_name']})")
    if os.path.dirname(dest) not in ksm.kernel_dirs:
        print(f"{PROG}: warning: {os.path.dirname(dest)} is not on Jupyter's kernel path; add "
              f"{os.path.dirname(os.path.dirname(dest))} to JUPYTER_PATH", file=sys.stderr)
    if not entry_points(group="jupyter_client.kernel_provisioners", name=PROVISIONER):
        print(f"{PROG}: warning: the {PROVISIONER} provisioner is not installed in this Python; "
              f"Jupyter hides the kernel unless hami-jupyter is installed where the server runs",
              file=sys.stderr)
    return 0


def _size(config: dict[str, Any]) -> tuple[int | None, int | None]:
    """(bytes, percent) of a spec's config; None where absent, "" or 0 (whole server slice)."""
    memory, cores = config.get("memory") or None, config.get("cores") or None
    try:
        return (None if memory is None else parse_memory(memory),
                None if cores is None else parse_share(cores))
    except ValueError:
        return None, None  # hand-edited and broken; the raw config is still shown


def list_specs(args: argparse.Namespace) -> int:
    rows = {}
    for name, (path, spec) in _hami_specs(_manager()).items():
        config = _hami_config(spec) or {}
        memory, cores = _size(config)
        rows[name] = {"display_name": spec.get("display_name", name), "memory": memory,
                      "cores": cores, "resource_dir": path, "config": config}
    if args.json or not rows:
        print(json.dumps({"kernelspecs": rows}, indent=1, ensure_ascii=False) if args.json else
              f"No hami kernelspecs installed; create one with `{PROG} install --name gpu-4g --memory 4GiB`")
        return 0
    table = [("NAME", "DISPLAY NAME", "MEMORY", "CORES", "DIRECTORY")] + [
        (name, row["display_name"],
         "-" if row["memory"] is None else format_memory(row["memory"]),
         "-" if row["cores"] is None else f"{row['cores']}%", row["resource_dir"])
        for name, row in rows.items()]
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[4])
    return 0


def remove(args: argparse.Namespace) -> int:
    ksm = _manager()
    names = list(dict.fromkeys(n.lower() for n in args.names))
    installed, hami = ksm.find_kernel_specs(), _hami_specs(ksm)
    # Check every name before deleting anything, so a typo removes nothing.
    unknown, foreign = [n for n in names if n not in installed], [n for n in names if n not in hami]
    if unknown:
        raise CliError(f"no kernelspec named {', '.join(unknown)}; `{PROG} list` shows the hami ones")
    if foreign:
        raise CliError(f"{', '.join(foreign)} is not a hami kernelspec; use `jupyter kernelspec remove`")
    for name in names:
        try:
            print(f"Removed {ksm.remove_kernel_spec(name)}")
        except OSError as e:
            raise CliError(f"cannot remove kernelspec {name}: {e}", 1) from None
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Install, list and remove Jupyter kernelspecs that start on a GPU slice; "
                               "run a command in one.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("install", help="install a kernelspec that runs on a GPU slice",
                       description="Copy a kernelspec into one whose kernels start on a GPU slice. "
                                   "Installs for the current user unless --sys-prefix or --prefix.")
    p.add_argument("--name", required=True, help="kernel name (letters, digits, - . _)")
    p.add_argument("--memory", help="VRAM cap per GPU, such as 4GiB or 512MiB (not 4GB: ambiguous)")
    p.add_argument("--cores", help="compute share per GPU in percent, 1 to 100")
    p.add_argument("--from", dest="base", default="python3", metavar="KERNEL",
                   help="kernelspec to copy (default: python3)")
    p.add_argument("--display-name", help='name shown in Jupyter (default: "<base> (GPU 4 GiB · 25%%)")')
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install in the user's Jupyter data dir (default)")
    where.add_argument("--sys-prefix", dest="prefix", action="store_const", const=sys.prefix,
                       help=f"install in this Python's prefix ({sys.prefix}); for virtualenvs and conda")
    where.add_argument("--prefix", help="install in PREFIX/share/jupyter/kernels")
    p.set_defaults(func=install)
    p = sub.add_parser("list", help="list the installed hami kernelspecs")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=list_specs)
    p = sub.add_parser("remove", help="remove hami kernelspecs (never other ones)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-y", "--yes", action="store_true", help="accepted for familiarity; there is no prompt")
    p.set_defaults(func=remove)
    run_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, OSError, ValueError) as e:  # the last two: e.g. a malformed base kernel.json
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return getattr(e, "status", 1)


if __name__ == "__main__":
    raise SystemExit(main())
