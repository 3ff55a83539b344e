#include "pacer.h"

#include "arbiter.h"

#define MS 1000000ull
#define US 1000ull
#define IDLE_DRAIN (50 * US) /* a drain this short found the GPU already idle */
#define MAX_DRAIN_JITTER (1 * MS) /* the longest drain still taken for an idle GPU's (work_end) */

void vgpu_pacer_set_share(struct vgpu_pacer *p, uint32_t share, uint64_t period)
{
    p->share = share;
    /* Force: a period (20 ms by default) of which the share is the turn, so
     * that even 10% is 25 turns in half a second. Default: 10 ms turns. */
    p->quantum = p->force ? period * share / 100 : 10 * MS;
    if (p->quantum < MS)
        p->quantum = MS;
}

void vgpu_pacer_init(struct vgpu_pacer *p, uint32_t share, int force, uint64_t period, struct vgpu_arbiter *arb,
                     int me)
{
    *p = (struct vgpu_pacer){0};
    p->force = force;
    p->arb = arb;
    p->me = me;
    vgpu_pacer_set_share(p, share, period);
    p->poll = 20 * US;
    p->marker = 1;
    p->marker_is_probe = 1;
    p->charge_scale = 1024;
}

void vgpu_pacer_use_remote(struct vgpu_pacer *p, struct vgpu_arbd *remote) { p->remote = remote; }

/* The turn's source: the daemon for a turn it granted, else the turn files. */
static int holds(const struct vgpu_pacer *p)
{
    return p->turn_remote ? p->remote->holding : vgpu_arbiter_holds(p->arb, p->me);
}

static int contended(struct vgpu_pacer *p, uint64_t now)
{
    return p->turn_remote ? (p->remote->waiting || p->remote->yield) : vgpu_arbiter_contended(p->arb, p->me, now);
}

/* Force: credit accrues at the share, capped at a quantum so that idle time
 * is never banked. */
static void accrue(struct vgpu_pacer *p, uint64_t now)
{
    if (p->credit_at == 0)
        p->credit_at = now; /* the first look: the bucket starts empty, not a quantum full */
    if (now > p->credit_at)
        p->credit += (int64_t)((now - p->credit_at) * p->share / 100u);
    if (p->credit > (int64_t)p->quantum)
        p->credit = (int64_t)p->quantum;
    p->credit_at = now > p->credit_at ? now : p->credit_at;
}

static void charge(struct vgpu_pacer *p, uint64_t used, uint64_t now)
{
    if (!p->turn_remote)
        vgpu_arbiter_charge(p->arb, p->me, used, now);
    p->busy_ns += used;
}

/* Ends the turn at `end` (host time), charging `used` of GPU time for it. */
static void finish_turn(struct vgpu_pacer *p, uint64_t end, uint64_t used)
{
    charge(p, used, end);
    if (p->turn_remote)
        vgpu_arbd_done(p->remote, used); /* nothing is sent for a turn the daemon took back */
    else
        vgpu_arbiter_release(p->arb, p->me);
    p->holding = 0;
    p->turn_remote = 0;
    if (p->force) {
        accrue(p, end);
        uint64_t repay = p->debt < used / 4 ? p->debt : used / 4;
        p->debt -= repay;
        p->credit -= (int64_t)(used * p->charge_scale / 1024u + repay);
    }
}

static void end_turn(struct vgpu_pacer *p, uint64_t end)
{
    finish_turn(p, end, end > p->turn_start ? end - p->turn_start : 0);
}

static void start_turn(struct vgpu_pacer *p, uint64_t now)
{
    p->turn_start = now;
    p->deadline = now + p->quantum;
    p->turn_launches = 0;
    p->turn_work = 0;
    p->marker_work = 0;
    if (p->turn_remote && p->marker == 0)
        p->marker = 1; /* markers bound the work in flight (VGPU_PACER_INFLIGHT) */
}

struct vgpu_pacer_decision vgpu_pacer_before_launch(struct vgpu_pacer *p, uint64_t now)
{
    int acquired = 0;
    if (p->marker == 2 && p->marker_is_probe)
        return (struct vgpu_pacer_decision){VGPU_PACE_WAIT_MARKER, 0};
    if (p->remote)
        vgpu_arbd_pump(p->remote, now);
    if (p->holding && !holds(p)) {
        p->displaced++;
        if (p->turn_remote)
            vgpu_arbd_take_revoked(p->remote);
        end_turn(p, p->last_launch); /* displaced while idle: charged up to its last launch */
    }
    /* Prompt turns: a tenant that used less than its share waits; the
     * daemon asked this holder to give way at this launch boundary. */
    if (p->holding && p->turn_remote && p->remote->yield) {
        p->yields++;
        p->drain_asked = now;
        return (struct vgpu_pacer_decision){VGPU_PACE_DRAIN, 0};
    }
    /* Little work in flight in a daemon's turn: wait for the marker of the
     * work queued before the last VGPU_PACER_INFLIGHT, which leaves that much
     * queued so the GPU does not idle meanwhile. */
    if (p->holding && p->turn_remote && p->marker == 2 && !p->marker_is_probe && p->per_launch &&
        p->turn_work - p->marker_work >= VGPU_PACER_INFLIGHT)
        return (struct vgpu_pacer_decision){VGPU_PACE_WAIT_MARKER, 0};
    if (p->holding && (now >= p->deadline || (p->per_launch && p->turn_work >= p->quantum))) {
        if (p->force || contended(p, now)) {
            p->drain_asked = now;
            return (struct vgpu_pacer_decision){VGPU_PACE_DRAIN, 0};
        }
        /* Nobody waits: the turn goes on, and is paid for as it goes; but
         * first the previous quantum's work must be done, or a lone process
         * could queue far more than the next one should wait for. */
        if (p->marker == 2)
            return (struct vgpu_pacer_decision){VGPU_PACE_WAIT_MARKER, 0};
        if (p->marker == 0) {
            p->marker = 1;
            p->marker_is_probe = 0;
        }
        charge(p, now - p->turn_start, now);
        if (p->turn_remote)
            vgpu_arbd_charge(p->remote, now - p->turn_start);
        else
            vgpu_arbiter_extend(p->arb, p->me, now, p->quantum);
        start_turn(p, now);
        p->extensions++;
    }
    if (!p->holding) {
        if (p->force) {
            accrue(p, now);
            if (p->credit < 0)
                return (struct vgpu_pacer_decision){VGPU_PACE_SLEEP,
                                                    now + (uint64_t)(-p->credit) * 100u / p->share + 1};
        }
        if (p->remote && p->remote->state == VGPU_ARBD_S_UP) {
            if (!vgpu_arbd_try_acquire(p->remote, now, p->quantum)) {
                /* The limiter waits on the daemon's socket: a grant wakes it. */
                return (struct vgpu_pacer_decision){VGPU_PACE_SLEEP, now + 5 * MS};
            }
            p->turn_remote = 1;
        } else if (!vgpu_arbiter_try_acquire(p->arb, p->me, now, p->quantum, p->quantum)) {
            /* Someone else's turn: no point asking again before it is nearly up. */
            uint64_t due = atomic_load(&p->arb->deadline_ns);
            uint64_t until = due > now + 300 * US ? due - 200 * US : now + p->poll;
            return (struct vgpu_pacer_decision){VGPU_PACE_SLEEP, until};
        }
        p->holding = 1;
        p->turns++;
        start_turn(p, now);
        acquired = 1;
    }
    p->turn_launches++;
    p->turn_work += p->per_launch;
    p->last_launch = now;
    if (p->marker == 1)
        p->marker_at = now;
    if (p->turn_remote) {
        vgpu_arbd_note(p->remote, now);
    } else if (now - p->last_note > 200 * US) {
        vgpu_arbiter_note_launch(p->arb, now);
        p->last_note = now;
    }
    p->acquired = acquired;
    return (struct vgpu_pacer_decision){VGPU_PACE_GO, 0};
}

/* When the GPU finished this turn's work, as far as the pacer can tell. A
 * drain that returns at once finds the GPU already idle: if the program
 * had stopped launching well before (a notebook between cells, a program
 * between phases), its turn ended when its work did, not when it came back;
 * charging the pause would make it wait for time it never used. */
static uint64_t work_end(const struct vgpu_pacer *p, uint64_t end)
{
    if (p->drain_asked < p->last_launch + p->quantum)
        return end;
    uint64_t by_launch = p->last_launch + p->per_launch, by_work = p->turn_start + p->turn_work;
    uint64_t guess = by_launch > by_work ? by_launch : by_work;
    /* A drain that returns at once found the GPU idle. One that took a
     * little longer (the host scheduled out for a moment, an interrupt:
     * about one drain in a hundred on an H200) is no sign of work still
     * running when the estimate says the work ended long before: taking
     * it for one charged the whole pause, and the next cell under `force`
     * waited for that credit (211 ms at 30%). Work still running would
     * mean an estimate wrong by far more than the drain took. */
    uint64_t drain = end - p->drain_asked, since = p->drain_asked > guess ? p->drain_asked - guess : 0;
    uint64_t jitter = since / 4 < MAX_DRAIN_JITTER ? since / 4 : MAX_DRAIN_JITTER;
    if (drain >= IDLE_DRAIN && drain >= jitter)
        return end;
    return guess < end ? guess : end;
}

/* What a drained turn used of the GPU: its host span, or the GPU's own span
 * of its work when that was timed and differs from the host's only by the
 * edges (the GPU reaching the turn's first launch, the drain's return). A
 * larger difference means the timing missed work (another stream, say):
 * then the host span, which never charges less than the turn held. */
static uint64_t turn_use(uint64_t span, uint64_t gpu_ns)
{
    if (gpu_ns == 0 || gpu_ns >= span || span - gpu_ns > VGPU_PACER_EDGE_MAX)
        return span;
    return gpu_ns;
}

void vgpu_pacer_drained(struct vgpu_pacer *p, uint64_t end, uint64_t gpu_ns)
{
    p->drains++;
    if (p->marker == 2 && !p->marker_is_probe)
        p->marker = 0; /* everything is done, that marker too */
    uint64_t done = work_end(p, end);
    if (done < end) {
        p->paused++;
        end_turn(p, done);
        return;
    }
    uint64_t span = end > p->turn_start ? end - p->turn_start : 0, used = turn_use(span, gpu_ns);
    if (used < span) {
        p->timed++;
        p->edges_ns += span - used;
    }
    /* What one launch costs the GPU, learnt from this turn. */
    if (p->turn_launches > 0 && used > 0) {
        uint64_t per = used / p->turn_launches;
        p->per_launch = p->per_launch ? (p->per_launch + per) / 2 : per;
    }
    finish_turn(p, end, used);
}

uint64_t vgpu_pacer_idle_check(struct vgpu_pacer *p, uint64_t now)
{
    if (!p->remote)
        return 0;
    vgpu_arbd_pump(p->remote, now);
    if (!p->holding || !p->turn_remote)
        return 0;
    if (!p->remote->holding) {
        p->displaced++;
        vgpu_arbd_take_revoked(p->remote);
        end_turn(p, p->last_launch);
        return 0;
    }
    if (!(p->remote->waiting || p->remote->yield) || !p->per_launch)
        return 0; /* nobody waits, or no estimate yet: the daemon's own deadline applies */
    uint64_t by_launch = p->last_launch + p->per_launch, by_work = p->turn_start + p->turn_work;
    uint64_t end = by_launch > by_work ? by_launch : by_work;
    /* Asked to yield (a tenant under its share waits): as soon as the work
     * is done. Only told that someone waits: once the program has stopped
     * launching for a while, not in the short host gaps of a program that
     * synchronizes after each launch, whose turn would be cut up. */
    uint64_t at = end + (p->remote->yield ? 200 * US : 1 * MS);
    if (now < at)
        return at;
    p->paused++;
    end_turn(p, end);
    return 0;
}

void vgpu_pacer_set_charge_scale(struct vgpu_pacer *p, uint32_t scale)
{
    if (scale == 0 || !p->force)
        return;
    if (!p->scale_known && scale > 1024)
        p->debt = p->busy_ns * (scale - 1024u) / 1024u;
    p->scale_known = 1;
    p->charge_scale = scale;
}

int vgpu_pacer_want_marker(const struct vgpu_pacer *p) { return p->marker == 1; }

void vgpu_pacer_marker_recorded(struct vgpu_pacer *p)
{
    p->marker = 2;
    p->marker_work = p->turn_work;
}

void vgpu_pacer_marker_done(struct vgpu_pacer *p, uint64_t now)
{
    if (p->marker_is_probe && !p->per_launch)
        p->per_launch = now > p->marker_at ? now - p->marker_at : 1;
    p->marker = p->holding && p->turn_remote ? 1 : 0; /* the next bound on work in flight */
    p->marker_is_probe = 0;
}
