"""hami_arbiter.scheduler under a mix of well- and ill-behaved tenants, on a simulated clock.

Whatever the tenants do (use their turns, sit on them without launching,
answer late or never, leave while holding), no tenant that asks for the GPU
waits without bound: while anyone waits the daemon always has a reason to act
again (a holder's message or its own timer), and every request is granted
within a few turns. The daemon's only clock is ``tick`` at ``next_check``,
as server.py arms it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

import pytest

from hami_arbiter import protocol as P
from hami_arbiter.scheduler import MS, Gpu, Tenant

STEP = MS // 10  # 0.1 ms
QUANTUM = 10 * MS


@dataclass
class Client:
    """A tenant and how it behaves."""

    kind: str  # busy | quiet | polite | notebook | leaver
    tenant: Tenant
    holding: bool = False
    granted_at: int = 0
    asked_at: Optional[int] = None
    want_at: Optional[int] = 0
    asked_since: Optional[int] = None  # when its pending WANT was sent
    waits: list[int] = field(default_factory=list)
    gone: bool = False


def simulate(kinds: list[str], shares: list[int], seconds: float, seed: int) -> list[Client]:
    rng = random.Random(seed)
    gpu = Gpu(bytes(16))
    clients = [Client(k, Tenant(conn=i, share=s)) for i, (k, s) in enumerate(zip(kinds, shares))]
    for c in clients:
        gpu.join(c.tenant, 0)
    by_conn = {c.tenant.conn: c for c in clients}

    def deliver(sends: list, now: int) -> None:
        for conn, msg in sends:
            c = by_conn[conn]
            if msg.op == P.GRANT:
                c.holding, c.granted_at, c.asked_at = True, now, None
                c.waits.append(now - c.asked_since)
                c.asked_since = None
            elif msg.op in (P.WAITING, P.YIELD):
                c.asked_at = now if c.asked_at is None else c.asked_at
            elif msg.op == P.REVOKED:
                c.holding, c.asked_at = False, None
                c.want_at = now + rng.randrange(0, 20 * MS)

    now = 0
    end = int(seconds * 1e9)
    while now < end:
        for c in clients:
            if c.gone:
                continue
            if c.kind == "leaver" and rng.random() < 1e-4:  # about once a second, holding or not
                c.gone = True
                deliver(gpu.leave(c.tenant, now), now)
                continue
            if not c.holding:
                if c.want_at is not None and now >= c.want_at and c.asked_since is None:
                    c.asked_since = now
                    deliver(gpu.want(c.tenant, QUANTUM, now), now)
                continue
            held = now - c.granted_at
            if c.kind in ("busy", "leaver"):
                if held >= QUANTUM:  # libvgpu at its quantum's end: give way if asked, else go on
                    if c.asked_at is not None:
                        c.holding, c.want_at = False, now
                        deliver(gpu.done(c.tenant, held, now), now)
                    else:
                        deliver(gpu.charge(c.tenant, held, now), now)
                        c.granted_at = now
                elif held % (MS // 2) == 0:
                    gpu.note(c.tenant, now)
            elif c.kind == "notebook":  # a 2 ms cell, then it sits on the turn until asked
                if held < 2 * MS and held % (MS // 2) == 0:
                    gpu.note(c.tenant, now)
                if c.asked_at is not None and held >= 2 * MS and now - c.asked_at >= MS // 2:
                    c.holding, c.want_at = False, now + rng.randrange(5 * MS, 60 * MS)
                    deliver(gpu.done(c.tenant, min(held, 2 * MS), now), now)
            elif c.kind == "polite":  # launches a little, then idles; answers a request 2 ms late
                if held < MS and held % (MS // 2) == 0:
                    gpu.note(c.tenant, now)
                if c.asked_at is not None and now - c.asked_at >= 2 * MS:
                    c.holding, c.want_at = False, now + rng.randrange(0, 5 * MS)
                    deliver(gpu.done(c.tenant, MS, now), now)
            # "quiet": holds and never says anything again; only the daemon can end its turn
        waiting = [c for c in clients if c.asked_since is not None and not c.gone]
        if waiting:
            assert gpu.holder is not None, "someone waits and nobody holds the GPU"
            due = gpu.next_check()
            assert due is not None, f"someone waits and the daemon has no reason to act again ({now / 1e6:.1f} ms)"
            if due <= now:
                deliver(gpu.tick(now), now)
        now += STEP
    return clients


@pytest.mark.parametrize("seed", range(4))
def test_every_request_is_granted_within_a_few_turns_whatever_the_others_do(seed: int) -> None:
    clients = simulate(["busy", "quiet", "polite", "notebook", "leaver"], [30, 20, 10, 25, 15], 10, seed)
    for c in clients:
        assert c.waits, c.kind  # everyone got the GPU at some point
        # Four others, each keeping it at most a quantum plus the daemon's grace
        # (IDLE_NS, or a quantum when it keeps launching), then the stride order.
        assert max(c.waits) <= 150 * MS, (c.kind, max(c.waits) / 1e6)


def test_a_holder_that_never_answers_costs_the_others_a_bounded_wait() -> None:
    (busy, quiet) = simulate(["busy", "quiet"], [50, 50], 5, seed=7)
    assert len(busy.waits) > 100 and max(busy.waits) <= QUANTUM + 5 * MS, max(busy.waits) / 1e6
    assert quiet.tenant.used_ns < busy.tenant.used_ns  # and it is charged for the turns it sat on
