"""``hami-kernel run``: any command in a GPU slice, without Jupyter or a hub.

    hami-kernel run --memory 4GiB --cores 25 -- python3 train.py

The command runs under libvgpu with the slice's limits in HAMi's variables.
Each run gets a slice of its own (a private shared region, removed when the
command ends) unless ``--region PATH`` names one to share with other runs.
The command's exit status is returned; a bad size, policy or command exits
with status 2 and one line.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
from typing import Any

from . import LibraryNotFound, library_path, preload_first
from .kernel_slice import REGION_ENV
from .slice import CORES_ENV, MEMORY_ENV, format_memory_env, parse_memory, parse_share
from .status import POLICIES, POLICY_ENV


class RunError(ValueError):
    """Bad input to ``hami-kernel run``: reported as one line, exit status 2."""

    status = 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run a command in a GPU slice (no Jupyter needed)",
                       description="Run COMMAND under libvgpu, held to a GPU slice: "
                                   "hami-kernel run --memory 4GiB -- nvidia-smi")
    p.add_argument("--memory", help="VRAM limit per GPU, such as 4GiB or 512MiB")
    p.add_argument("--cores", help="compute share per GPU in percent, 1 to 100")
    p.add_argument("--policy", choices=POLICIES,
                   help="compute share policy: default (borrow the idle GPU), force (strict), disable")
    p.add_argument("--region", help="shared region to use (processes naming the same one share one "
                                    "slice); default: a private one for this run")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG ...]")
    p.set_defaults(func=run)


def slice_env(memory: str | None, cores: str | None, policy: str | None) -> dict[str, str]:
    """libvgpu on LD_PRELOAD (first) and the slice's limits in HAMi's variables."""
    if memory is None and cores is None:
        raise RunError("give --memory, --cores or both: without either the command would run "
                       "on the whole GPU")
    try:
        nbytes = None if memory is None else parse_memory(memory)
        share = None if cores is None else parse_share(cores)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    try:
        library = str(library_path())
    except LibraryNotFound as exc:
        raise RunError(f"cannot limit the command: {exc}") from None
    env = {"LD_PRELOAD": preload_first(library, os.environ.get("LD_PRELOAD"))}
    if nbytes is not None:
        env[MEMORY_ENV] = format_memory_env(nbytes)
    if share is not None and share < 100:
        env[CORES_ENV] = str(share)
    if policy:
        env[POLICY_ENV] = policy
    return env


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise RunError("give the command to run after --, e.g. hami-kernel run --memory 4GiB -- "
                       "python3 train.py")
    env = {**os.environ, **slice_env(args.memory, args.cores, args.policy)}
    # A private region unless one is named: the limit kept in a region wins over
    # the environment, so two runs must not share one by accident.
    with tempfile.TemporaryDirectory(prefix="hami-run-") as private:
        env[REGION_ENV] = args.region or os.path.join(private, "slice.region")
        try:
            child = subprocess.Popen(command, env=env)
        except OSError as exc:
            raise RunError(f"cannot run {command[0]!r}: {exc.strerror}") from None
        # Ctrl-C reaches the command from the terminal; we only wait for it.
        previous = {sig: signal.signal(sig, _forward(child)) for sig in (signal.SIGTERM, signal.SIGHUP)}
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            status = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return status if status >= 0 else 128 - status


def _forward(child: subprocess.Popen[bytes]) -> Any:
    def handler(signum: int, _frame: Any) -> None:
        child.send_signal(signum)
    return handler
