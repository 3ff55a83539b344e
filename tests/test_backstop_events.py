"""The backstop's events: written so the slice's users can read them, read without trusting the file."""
from __future__ import annotations

import os
import stat
import time

from hami_arbiter.events import EventWriter
from hami_kernel.backstop_events import BackstopEvent, events_file, own_events_file, read_events, format_text


def event(n: int) -> BackstopEvent:
    return BackstopEvent(time=1_800_000_000.0 + n, gpu=0, action="over", used=2 << 30, limit=1 << 30, pid=n,
                         comm="python", process_used=2 << 30, message=f"event {n}")


def test_files_are_readable_by_all_and_keep_only_the_newest(tmp_path):
    old = os.umask(0o077)  # a strict daemon umask must not hide the events from their users
    try:
        writer = EventWriter(tmp_path / "events", keep=5)
        for n in range(12):
            writer.write(event(n), {(111, 1000), (222, 1001)})
    finally:
        os.umask(old)
    for pidns, uid in ((111, 1000), (222, 1001)):
        path = events_file(tmp_path / "events", pidns, uid)
        assert [e.message for e in read_events(path, limit=100)] == [f"event {n}" for n in range(7, 12)]
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "events").stat().st_mode) == 0o755
    assert not [p for p in (tmp_path / "events").rglob(".events-*")]  # no temporary file left behind


def test_directories_of_long_gone_namespaces_are_pruned(tmp_path):
    writer = EventWriter(tmp_path, max_age=3600)
    writer.write(event(1), {(111, 1000)})
    stale = events_file(tmp_path, 111, 1000)
    long_ago = time.time() - 7200
    os.utime(stale, (long_ago, long_ago))
    os.utime(stale.parent, (long_ago, long_ago))
    EventWriter(tmp_path, max_age=3600).write(event(2), {(222, 1000)})
    assert not stale.parent.exists() and events_file(tmp_path, 222, 1000).exists()


def test_the_reader_fails_closed_on_odd_files(tmp_path):
    good = tmp_path / "good.jsonl"
    EventWriter(tmp_path).write(event(1), {(1, 1)})
    real = events_file(tmp_path, 1, 1)
    good.write_text("not json\n" + real.read_text() + '{"time": "x"}\n[1, 2]\n')
    assert [e.message for e in read_events(good)] == ["event 1"]  # bad lines skipped, not fatal
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_events(fifo) == []  # no hang
    link = tmp_path / "link"
    link.symlink_to(real)
    assert read_events(link) == []  # links are not followed
    assert read_events(tmp_path / "missing") == []
    assert format_text([]) == ""


def test_a_process_finds_its_own_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HAMI_JUPYTER_EVENTS_DIR", str(tmp_path))
    expected = events_file(tmp_path, os.stat("/proc/self/ns/pid").st_ino, os.getuid())
    assert own_events_file() == expected
    EventWriter(tmp_path).write(event(3), {(os.stat("/proc/self/ns/pid").st_ino, os.getuid())})
    assert "event 3" in format_text(read_events())
