"""Who holds one GPU: stride scheduling among the tenants of the daemon.

A pure state machine: every call is told the time and answers what to send
to whom, so it is tested on a simulated clock (tests/test_arbiter_scheduler.py)
and the socket server (server.py) only carries the answers out.

- A turn of GPU time t advances its holder's pass by t * 100 / share; the
  waiting tenant with the smallest pass goes next, so busy tenants' shares
  are proportional to their shares.
- Work-conserving: a holder whose quantum ends while nobody waits keeps the
  GPU (it reports its use with CHARGE).
- No start-up credit: a newcomer starts at the system's virtual time (the
  least pass among those holding or waiting).
- Prompt turns: a tenant coming back after an idle spell (a notebook between
  cells) may start up to one quantum of its own behind the virtual time
  (bounded lag, never more than it was idle); if that puts it behind the
  holder, the holder is asked to yield at its next launch. Busy tenants ask
  again the moment they release, so they never get this credit, and their
  turns stay a full quantum (no ping-pong of short turns).
- Nobody can keep the GPU from others. A holder that others wait for is
  told (WAITING), even if no waiter is due on its pass, once it has not
  launched (NOTE) for IDLE_NS or has not renewed its turn (CHARGE) QUIET_NS
  after its quantum: one that has stopped launching (a notebook after its
  cell) would otherwise keep the turn while the GPU idles. libvgpu then
  gives the turn back once its work is done. A holder that neither launches
  nor gives the turn back (no NOTE for IDLE_NS past its quantum, or past
  being told), or that keeps launching a quantum past its own, is revoked
  and charged; a holder that goes away is charged up to its last sign of
  life.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from hami_arbiter import protocol as P

MS = 1_000_000
MIN_QUANTUM = 1 * MS
MAX_QUANTUM = 50 * MS
# A holder that others wait for, past its quantum (or asked to yield), that
# has not launched for this long is idle (between cells, in a long host
# phase): its turn is taken back.  Clients send NOTE at most every 0.5 ms
# while launching, and keep only a few ms of work queued on the GPU
# (pacer.h), so a holder draining its last work is not taken for idle.
IDLE_NS = 3 * MS
# A holder that others wait for is told so when it has not launched (NOTE,
# at most every 0.5 ms while it launches) for IDLE_NS, or has not renewed
# its turn (CHARGE, at its first launch past the quantum) this long after
# its quantum: it has stopped launching (a notebook after its cell, a worker
# waiting on its input) and must not keep the turn while the GPU idles.
QUIET_NS = 1 * MS
# A waiter that was idle at least this long before asking may get lag credit.
PROMPT_IDLE_NS = 1 * MS
# The holder yields to a waiter behind it by at least this much of its own
# time, so that two tenants near a tie do not preempt each other at once.
HYSTERESIS_NS = 1 * MS

Send = Tuple[Any, P.Message]


@dataclass(eq=False)
class Tenant:
    """One client on one GPU.  ``conn`` is what sends go to (the server's connection)."""

    conn: Any
    share: int
    force: bool = False
    pass_: int = 0
    wanting: bool = False
    quantum: int = 10 * MS
    idle_since: int = 0
    fresh: bool = True
    turns: int = 0
    used_ns: int = 0

    def stride(self, ns: int) -> int:
        return ns * 100 // self.share


@dataclass(eq=False)
class Gpu:
    uuid: bytes
    tenants: List[Tenant] = field(default_factory=list)
    holder: Optional[Tenant] = None
    granted_at: int = 0
    deadline: int = 0
    last_note: int = 0
    asked: int = 0          # 0: nothing asked of the holder; 1: WAITING sent; 2: YIELD sent
    asked_at: int = 0       # when the holder was last asked
    vtime: int = 0
    revoked: int = 0

    # -- time ---------------------------------------------------------------------

    def _holder_virtual(self, now: int) -> int:
        h = self.holder
        assert h is not None
        return h.pass_ + h.stride(max(0, now - self.granted_at))

    def virtual_now(self, now: int) -> int:
        """The least pass among those holding or waiting (what newcomers start at)."""
        passes = [t.pass_ for t in self.tenants if t.wanting]
        if self.holder is not None:
            passes.append(self._holder_virtual(now))
        if passes:
            self.vtime = max(self.vtime, min(passes))
        return self.vtime

    # -- what clients say -----------------------------------------------------------

    def join(self, t: Tenant, now: int) -> List[Send]:
        t.pass_ = self.virtual_now(now)
        t.idle_since = now
        self.tenants.append(t)
        return []

    def want(self, t: Tenant, quantum: int, now: int) -> List[Send]:
        if t.wanting or self.holder is t:
            return []
        t.quantum = min(max(quantum, MIN_QUANTUM), MAX_QUANTUM)
        vnow = self.virtual_now(now)
        credit = 0
        idle = now - t.idle_since
        if not t.fresh and idle >= PROMPT_IDLE_NS:
            credit = min(idle, t.stride(t.quantum))
        t.fresh = False
        t.pass_ = max(t.pass_, vnow - credit)
        t.wanting = True
        return self._schedule(now)

    def done(self, t: Tenant, used: int, now: int) -> List[Send]:
        if self.holder is not t:
            return []  # its turn was revoked meanwhile: already charged
        self._end_turn(self._bounded(used, now), now)
        return self._schedule(now)

    def charge(self, t: Tenant, used: int, now: int) -> List[Send]:
        if self.holder is not t:
            return []
        used = self._bounded(used, now)
        t.pass_ += t.stride(used)
        t.used_ns += used
        self.granted_at = now
        self.deadline = now + t.quantum
        self.last_note = now
        return self._schedule(now)

    def note(self, t: Tenant, now: int) -> List[Send]:
        if self.holder is t:
            self.last_note = now
        return []

    def leave(self, t: Tenant, now: int) -> List[Send]:
        if t in self.tenants:
            self.tenants.remove(t)
        t.wanting = False
        if self.holder is t:
            self._end_turn(max(0, self.last_note - self.granted_at), now)
            return self._schedule(now)
        return []

    # -- the daemon's own clock -----------------------------------------------------

    def next_check(self) -> Optional[int]:
        """When tick() may have something to do, or None."""
        if self.holder is None or not self._waiters():
            return None
        if self.asked == 0:
            return self._quiet_at()  # nobody is due before the holder: is it still launching?
        return min(self._idle_at(), self._overdue_at())

    def _quiet_at(self) -> int:
        # Within its quantum a holder may pause launching for a while with
        # work still queued (it waits for its oldest work when it has enough
        # in flight, pacer.h): only a pause longer than that counts there.
        return min(self.last_note + IDLE_NS, self.deadline + QUIET_NS)

    def _idle_at(self) -> int:
        since = max(self.last_note, self.asked_at if self.asked == 2 else max(self.deadline, self.asked_at))
        return since + IDLE_NS

    def _overdue_at(self) -> int:
        h = self.holder
        assert h is not None
        if self.asked == 2:
            return min(self.deadline, self.asked_at) + h.quantum
        return max(self.deadline, self.asked_at) + h.quantum

    def tick(self, now: int) -> List[Send]:
        """Tells a holder that has stopped launching that others wait; revokes
        one that keeps them waiting regardless."""
        h = self.holder
        if h is None or not self._waiters():
            return []
        if self.asked == 0:
            if now < self._quiet_at():
                return []
            self.asked, self.asked_at = 1, now
            return [(h.conn, P.Message(P.WAITING))]
        if now < min(self._idle_at(), self._overdue_at()):
            return []
        # Charged the whole time it kept the GPU from the others.
        self._end_turn(max(0, now - self.granted_at), now)
        self.revoked += 1
        return [(h.conn, P.Message(P.REVOKED))] + self._schedule(now)

    # -- inside -----------------------------------------------------------------------

    def _waiters(self) -> List[Tenant]:
        return [t for t in self.tenants if t.wanting]

    def _bounded(self, used: int, now: int) -> int:
        """A turn's charge: what the client says, but never less than the time it
        was seen launching, nor more than the time it held the GPU."""
        span = max(0, now - self.granted_at)
        floor = max(0, min(self.last_note - self.granted_at, span))
        return min(max(used, floor), span)

    def _end_turn(self, used: int, now: int) -> None:
        h = self.holder
        assert h is not None
        h.pass_ += h.stride(used)
        h.used_ns += used
        h.idle_since = now
        self.holder = None
        self.asked = 0

    def _schedule(self, now: int) -> List[Send]:
        sends: List[Send] = []
        waiters = self._waiters()
        if self.holder is None and waiters:
            t = min(waiters, key=lambda w: (w.pass_, self.tenants.index(w)))
            t.wanting = False
            t.turns += 1
            self.holder = t
            # The virtual time follows the tenants granted: a newcomer that
            # joins while nobody holds or waits (a force tenant between its
            # turns) starts at the last grant's pass, not at an old one.
            self.vtime = max(self.vtime, t.pass_)
            self.granted_at = self.last_note = now
            self.deadline = now + t.quantum
            self.asked = 0
            sends.append((t.conn, P.Message(P.GRANT, value=self.deadline)))
            waiters = self._waiters()
        h = self.holder
        if h is None or not waiters:
            return sends
        first = min(w.pass_ for w in waiters)
        behind = first + h.stride(HYSTERESIS_NS) < self._holder_virtual(now)
        # A waiter comes before the holder once the holder's pass, with its
        # quantum, is past the waiter's: then the holder ends the turn at its
        # quantum's end.  Otherwise it goes on (CHARGE), and is told later.
        due = first < self._holder_virtual(max(now, self.deadline))
        if behind and self.asked < 2:
            self.asked, self.asked_at = 2, now
            sends.append((h.conn, P.Message(P.YIELD)))
        elif due and self.asked == 0:
            self.asked, self.asked_at = 1, now
            sends.append((h.conn, P.Message(P.WAITING)))
        return sends
