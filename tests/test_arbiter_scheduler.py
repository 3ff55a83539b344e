"""hami_arbiter.scheduler on a simulated clock: shares, prompt turns, revocation."""

from __future__ import annotations

from hami_arbiter import protocol as P
from hami_arbiter.scheduler import IDLE_NS, MS, QUIET_NS, Gpu, Tenant

Q = 10 * MS


class Sim:
    """Busy tenants that want the GPU again the moment they give it back."""

    def __init__(self, shares: list[int]):
        self.gpu = Gpu(bytes(16))
        self.now = 0
        self.tenants = [Tenant(conn=i, share=s) for i, s in enumerate(shares)]
        self.sent: list[tuple[int, int]] = []
        for t in self.tenants:
            self.gpu.join(t, self.now)
        for t in self.tenants:
            self.record(self.gpu.want(t, Q, self.now))

    def record(self, sends: list) -> None:
        self.sent += [(conn, msg.op) for conn, msg in sends]

    def run_busy(self, seconds: float) -> list[int]:
        end = self.now + int(seconds * 1e9)
        while self.now < end:
            h = self.gpu.holder
            assert h is not None
            self.now += h.quantum
            if self.gpu.asked:  # as libvgpu does: told that someone is due, it ends the turn
                self.record(self.gpu.done(h, h.quantum, self.now))
                self.record(self.gpu.want(h, Q, self.now))
            else:
                self.record(self.gpu.charge(h, h.quantum, self.now))
        return [t.used_ns for t in self.tenants]


def test_busy_tenants_get_their_shares() -> None:
    for shares in ([30, 70], [25, 25, 25, 25], [10, 20, 70]):
        used = Sim(shares).run_busy(20)
        total = sum(used)
        for share, u in zip(shares, used):
            assert abs(100 * u / total - share) < 1.0, (shares, used)


def test_a_newcomer_has_no_start_up_credit() -> None:
    sim = Sim([50])
    sim.run_busy(5)
    late = Tenant(conn=9, share=50)
    sim.tenants.append(late)
    sim.gpu.join(late, sim.now)
    sim.record(sim.gpu.want(late, Q, sim.now))
    assert (0, P.YIELD) not in sim.sent  # it waits for the quantum's end, not more
    before = [t.used_ns for t in sim.tenants]
    used = sim.run_busy(10)
    gained = [u - b for u, b in zip(used, before)]
    assert abs(gained[0] - gained[1]) <= 2 * Q


def test_a_returning_light_tenant_gets_a_prompt_turn() -> None:
    g = Gpu(bytes(16))
    busy, light = Tenant(conn="busy", share=70), Tenant(conn="light", share=30)
    for t in (busy, light):
        g.join(t, 0)
    g.want(busy, Q, 0)
    now = 0
    for burst in range(50):  # the light tenant: 2 ms bursts after 30 ms of think time
        sends = g.want(light, Q, now)
        if g.holder is busy:
            # From its second burst on, it has been idle: the holder yields at once.
            assert burst == 0 or ("busy", P.YIELD) in [(c, m.op) for c, m in sends]
            now += 100_000 if burst else Q  # the holder yields at its next launch
            g.done(busy, 30 * MS, now)
        assert g.holder is light
        g.want(busy, Q, now)
        now += 2 * MS
        g.done(light, 2 * MS, now)
        assert g.holder is busy
        now += 30 * MS
        g.charge(busy, 30 * MS, now)


def test_an_idle_holder_loses_its_turn_to_a_waiter() -> None:
    g = Gpu(bytes(16))
    a, b = Tenant(conn="a", share=50), Tenant(conn="b", share=50)
    g.join(a, 0)
    g.join(b, 0)
    g.want(a, Q, 0)
    g.want(b, Q, 0)
    assert g.tick(IDLE_NS - 1) == []
    # Past its quantum (it may be draining until then), it has not launched
    # for IDLE_NS: the turn is taken back, and charged as held.
    due = g.next_check()
    assert due == Q + IDLE_NS
    assert g.tick(due - 1) == []
    sends = g.tick(due)
    assert [(c, m.op) for c, m in sends] == [("a", P.REVOKED), ("b", P.GRANT)]
    assert g.holder is b and a.used_ns == due


def test_a_holder_that_keeps_launching_past_its_turn_is_revoked() -> None:
    g = Gpu(bytes(16))
    a, b = Tenant(conn="a", share=50), Tenant(conn="b", share=50)
    g.join(a, 0)
    g.join(b, 0)
    g.want(a, Q, 0)
    g.want(b, Q, 0)
    assert g.asked  # b is due at a's quantum's end
    now = 0
    while g.holder is a:
        now += MS // 2
        g.note(a, now)
        g.tick(now)
    assert g.holder is b and now <= 2 * Q + MS and a.used_ns >= 2 * Q


def test_a_holder_that_leaves_frees_the_gpu_at_once() -> None:
    g = Gpu(bytes(16))
    a, b = Tenant(conn="a", share=50), Tenant(conn="b", share=50)
    g.join(a, 0)
    g.join(b, 0)
    g.want(a, Q, 0)
    g.want(b, Q, 0)
    sends = g.leave(a, 3 * MS)
    assert [(c, m.op) for c, m in sends][0] == ("b", P.GRANT)


def test_charges_are_bounded_by_what_the_daemon_saw() -> None:
    g = Gpu(bytes(16))
    a = Tenant(conn="a", share=50)
    g.join(a, 0)
    g.want(a, Q, 0)
    g.note(a, 8 * MS)
    g.done(a, 0, 9 * MS)  # says it used nothing, but launched until 8 ms
    assert a.used_ns == 8 * MS
    g.want(a, Q, 10 * MS)
    g.done(a, 10**12, 11 * MS)  # says far more than it held
    assert a.used_ns == 9 * MS


def _quiet_holder() -> tuple[Gpu, Tenant, Tenant]:
    """The H200 hang: a holder stops launching while holding (a worker waiting
    on its stdin after warm-up, a notebook between cells), and a fresh tenant
    asks only after the holder's quantum is over. Not behind the holder, it
    was never due, nobody told the holder, and nothing ever ran again."""
    g = Gpu(bytes(16))
    a, b = Tenant(conn="a", share=30, force=True), Tenant(conn="b", share=70, force=True)
    g.join(a, 0)
    g.want(a, 6 * MS, 0)
    g.join(b, 20 * MS)
    assert g.want(b, 14 * MS, 20 * MS) == []  # not due on its pass alone
    due = g.next_check()
    assert due is not None and due <= 20 * MS  # already due: the daemon's timer fires at once
    assert [(c, m.op) for c, m in g.tick(20 * MS)] == [("a", P.WAITING)]
    return g, a, b


def test_a_holder_gone_quiet_past_its_quantum_is_told_and_gives_the_turn_back() -> None:
    g, a, b = _quiet_holder()
    assert [(c, m.op) for c, m in g.done(a, 5 * MS, 20 * MS + 500_000)] == [("b", P.GRANT)]
    assert a.used_ns == 5 * MS  # what it used, not the time it sat on the turn


def test_a_holder_gone_quiet_that_does_not_answer_is_revoked() -> None:
    g, a, b = _quiet_holder()
    due = g.next_check()
    assert due is not None and 20 * MS < due <= 20 * MS + IDLE_NS  # it has a moment to answer
    assert g.tick(due - 1) == []
    sends = g.tick(due)
    assert [(c, m.op) for c, m in sends] == [("a", P.REVOKED), ("b", P.GRANT)]


def test_a_holder_that_charges_at_its_quantums_end_is_not_told() -> None:
    # Work-conserving default: a holder behind the waiter on its pass goes on
    # after its quantum (it says CHARGE at its next launch); the daemon's
    # check at the quantum's end finds the turn renewed and asks nothing.
    g = Gpu(bytes(16))
    a, b = Tenant(conn="a", share=50), Tenant(conn="b", share=50)
    g.join(a, 0)
    g.join(b, 0)
    b.pass_ = 100 * MS  # b has had far more than a
    g.want(a, Q, 0)
    g.want(b, Q, 1 * MS)
    assert g.asked == 0
    assert g.charge(a, Q, Q + 100_000) == []
    assert g.tick(Q + QUIET_NS) == [] and g.holder is a


def test_a_newcomer_joining_between_a_busy_tenants_turns_has_no_credit() -> None:
    # A force tenant alone releases the GPU between its turns. A newcomer that
    # joins in such a gap starts at the busy tenant's virtual time, not at the
    # daemon's start (which would be seconds of credit).
    g = Gpu(bytes(16))
    busy = Tenant(conn="busy", share=70, force=True)
    g.join(busy, 0)
    now = 0
    for _ in range(200):  # 14 ms turns, 6 ms apart: 4 s alone
        g.want(busy, 14 * MS, now)
        now += 14 * MS
        g.done(busy, 14 * MS, now)
        now += 6 * MS
    late = Tenant(conn="late", share=30, force=True)
    g.join(late, now - 3 * MS)
    assert busy.pass_ - late.pass_ <= busy.stride(14 * MS)


def test_a_holder_that_stops_launching_within_its_quantum_is_told_at_once() -> None:
    # A notebook's cell of 2 ms in a 10 ms turn: once it stops launching, a tenant
    # waiting for the GPU need not wait for the rest of the quantum with the GPU idle.
    g = Gpu(bytes(16))
    notebook, busy = Tenant(conn="notebook", share=30), Tenant(conn="busy", share=70)
    g.join(notebook, 0)
    g.join(busy, 0)
    busy.pass_ = 50 * MS  # it has had more than its share: not due before the notebook's quantum ends
    g.want(notebook, Q, 0)
    for t in range(1, 5):  # launching: a NOTE every 0.5 ms
        g.note(notebook, t * MS // 2)
    g.want(busy, Q, 2 * MS + MS // 2)
    assert g.asked == 0 and g.tick(2 * MS + MS // 2) == []
    assert g.next_check() == 2 * MS + IDLE_NS  # a pause longer than a wait for its queued work
    assert g.tick(2 * MS + IDLE_NS - 1) == []
    assert [(c, m.op) for c, m in g.tick(2 * MS + IDLE_NS)] == [("notebook", P.WAITING)]


def test_a_holder_that_keeps_launching_is_not_told_before_its_quantum_ends() -> None:
    g = Gpu(bytes(16))
    a, b = Tenant(conn="a", share=50), Tenant(conn="b", share=50)
    g.join(a, 0)
    g.join(b, 0)
    b.pass_ = 100 * MS
    g.want(a, Q, 0)
    g.want(b, Q, 0)
    for t in range(1, 2 * Q // MS):  # a NOTE every 0.5 ms up to its quantum's end
        now = t * MS // 2
        g.note(a, now)
        due = g.next_check()
        assert due is not None and due > now
        assert g.tick(now) == []
    assert g.asked == 0
