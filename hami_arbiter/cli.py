"""``hami-arbiter``: the per-node arbiter daemon (see docs in README.md, "The arbiter").

    hami-arbiter [--socket-dir DIR] [--backstop kill|report|off] [--backstop-grace SECONDS]
                 [--grants-dir DIR]

Bad arguments exit 2 with one line; SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Optional, Sequence

from hami_arbiter import backstop, slices
from hami_arbiter.server import ArbiterServer

DEFAULT_SOCKET_DIR = "/run/hami-jupyter/arbiter"
log = logging.getLogger("hami_arbiter")


def _grace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 60:
        raise argparse.ArgumentTypeError(f"{text!r}: the grace must be 0 to 60 seconds")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line and exit 2, not argparse's usage block."""
        print(f"hami-arbiter: {message} (see hami-arbiter --help)", file=sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hami-arbiter", description=(
        "Grants turns on this node's GPUs to every capped process, at the share of its trusted slice."))
    p.add_argument("--socket-dir", default=DEFAULT_SOCKET_DIR,
                   help="directory of the socket arbiter.sock (made 0755; the socket 0666)")
    p.add_argument("--backstop", choices=["kill", "report", "off"], default="kill",
                   help="slices found over their memory limit: kill the offender, report it, or do nothing")
    p.add_argument("--backstop-grace", type=_grace, default=1.0, metavar="SECONDS",
                   help="how long a slice may stay over its limit before the backstop acts (default 1)")
    p.add_argument("--grants-dir", default=None,
                   help="the local hub's grants (one machine): servers' slices, keyed by pid and start time")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def start_backstop(args: argparse.Namespace) -> Optional["asyncio.Task[None]"]:
    """The trusted memory backstop (hami_arbiter/backstop.py) beside the turns, with the
    same slice resolver; its events go under the socket directory, which GPU pods mount."""
    runner = backstop.from_options(slices.slice_of, args.backstop, args.backstop_grace, args.socket_dir)
    if runner is None:
        return None
    log.info("backstop: %s slices over their VRAM limit after %.1f s", args.backstop, args.backstop_grace)
    return asyncio.ensure_future(runner.run())


async def _run(args: argparse.Namespace) -> int:
    server = ArbiterServer(args.socket_dir, slices.slice_of)
    try:
        server.bind()
    except OSError as exc:
        print(f"hami-arbiter: cannot listen in {args.socket_dir}: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    watching = start_backstop(args)
    serving = asyncio.ensure_future(server.serve())
    log.info("hami-arbiter listening on %s", server.path)
    await asyncio.wait([stop, serving], return_when=asyncio.FIRST_COMPLETED)
    for task in (serving, watching):
        if task is not None:
            task.cancel()
    server.close()
    log.info("hami-arbiter stopped")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="hami-arbiter %(levelname)s %(message)s")
    slices.configure(args.grants_dir)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
