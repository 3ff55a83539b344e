"""Writes the backstop's events where each slice's users can read them and nobody else can write.

The layout and the record are defined once, by the reader the users run
(:mod:`hami_kernel.backstop_events`): ``<root>/pidns-<inode>/uid-<uid>.jsonl``
per PID namespace and user of the slice's processes.  ``root`` is in the
arbiter's directory (root's, 0755; mounted read-only into GPU pods), so an
event cannot be forged or removed by a tenant.  Each file is rewritten
whole through a temporary file and rename(2), so a reader never sees half a
line, and keeps only the newest ``keep`` events, so it stays small however
often a slice misbehaves; directories nobody wrote to for a week are
removed.  A failure to write is logged and never stops the
backstop: the daemon's log line is always written first.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from hami_kernel.backstop_events import BackstopEvent, events_file, read_events

__all__ = ["EventWriter"]


class EventWriter:
    def __init__(self, root: str | os.PathLike[str], keep: int = 20, log: logging.Logger | None = None,
                 max_age: float = 7 * 86400):
        self.root = Path(root)
        self.keep = keep
        self.max_age = max_age
        self._pruned: float | None = None
        self.log = log or logging.getLogger("hami_arbiter.backstop")

    def write(self, event: BackstopEvent, audiences: set[tuple[int, int]]) -> None:
        """Appends event to the file of each (pidns inode, uid) in audiences."""
        for pidns, uid in sorted(audiences):
            path = events_file(self.root, pidns, uid)
            try:
                self._append(path, event)
            except OSError as exc:
                self.log.warning("backstop: cannot write the event to %s: %s", path, exc)

    def _prune(self) -> None:
        """At most once an hour: drop the directories of namespaces nobody wrote to for max_age seconds
        (containers long gone), so that the directory does not grow with every pod ever run."""
        now = time.monotonic()
        if self._pruned is not None and now - self._pruned < 3600:
            return
        self._pruned = now
        cutoff = time.time() - self.max_age
        for directory in self.root.glob("pidns-*"):
            try:
                if directory.is_symlink() or not directory.is_dir():
                    continue
                if directory.stat().st_mtime < cutoff and all(f.stat().st_mtime < cutoff for f in directory.iterdir()):
                    shutil.rmtree(directory)
            except OSError as exc:
                self.log.warning("backstop: cannot prune %s: %s", directory, exc)

    def _append(self, path: Path, event: BackstopEvent) -> None:
        # Created as root in root's directory: 0755 so that the slice's users may read, nobody else
        # write (set explicitly: the daemon's umask may be stricter).
        for directory in (self.root, path.parent):
            directory.mkdir(mode=0o755, exist_ok=True)
            os.chmod(directory, 0o755)
        self._prune()
        events = read_events(path, limit=self.keep - 1) if self.keep > 1 else []
        events.append(event)
        text = "".join(json.dumps(asdict(e), sort_keys=True) + "\n" for e in events)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".events-")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
