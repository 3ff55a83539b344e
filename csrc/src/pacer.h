/*
 * The compute share's decisions, as a state machine with no side effects:
 * it is told the time and what happened, and answers what to do next. The
 * limiter (limiter.c) carries the answers out with the real clock and driver;
 * tests carry them out with a simulated clock and GPU (csrc/tests/test_pacing.c).
 *
 * Per process and GPU:
 * - Launches go only during a turn, taken from the GPU's arbiter (arbiter.h).
 * - A turn lasts a quantum of host time, or of estimated GPU work, whichever
 *   is used up first. The estimate matters because launches are
 *   asynchronous: in a millisecond a program can queue a hundred large
 *   matrix products, and a turn bounded by host time alone would run on long
 *   after its end. The GPU time per launch is learnt from every drained turn
 *   (its length over its launches); before the first, one launch is timed
 *   alone (a probe).
 * - When a turn is up: under `default`, if nobody waits, it simply goes on
 *   (work-conserving), the process waiting first for the work of the
 *   previous quantum so that it never has much more than a quantum queued;
 *   otherwise the process drains its work from the GPU, is charged the
 *   turn's real length, and gives the GPU up. The real length is the host's
 *   span (first launch call to drained) or, where the limiter times the
 *   turn with events, the GPU's own span of its work, which leaves out the
 *   edges: the GPU reaching the first launch, the drain's return.
 * - Under `force` the share is a token bucket: credit accrues at s% of wall
 *   time, at most one quantum of it (nothing is banked), and starts empty
 *   (no start-up credit); a turn may start when the credit is not negative
 *   and spends its length (scaled up by the power headroom it used, see
 *   power.h). Alone that is a turn of L then L*(100-s)/s idle;
 *   beside others, time spent waiting for a turn counts as idle.
 */
#ifndef VGPU_PACER_H
#define VGPU_PACER_H

#include <stdint.h>

#include "arbd_client.h"
#include "vgpu_arbiter.h"

enum vgpu_pace {
    VGPU_PACE_GO,          /* launch now */
    VGPU_PACE_SLEEP,       /* wait until `until`, then ask again */
    VGPU_PACE_DRAIN,       /* wait for all of this process's GPU work, then vgpu_pacer_drained() */
    VGPU_PACE_WAIT_MARKER, /* wait for the marker recorded last, then vgpu_pacer_marker_done() */
};

struct vgpu_pacer_decision {
    enum vgpu_pace action;
    uint64_t until;
};

struct vgpu_pacer {
    uint32_t share; /* percent, 1..99 */
    int force;
    uint64_t quantum, poll;
    struct vgpu_arbiter *arb; /* the per-user turn files: the fallback */
    int me;
    struct vgpu_arbd *remote; /* the trusted arbiter daemon, or NULL (arbd_client.h) */
    int turn_remote;          /* the turn held came from the daemon */
    uint64_t yields;          /* turns ended early for a tenant under its share */
    int holding;
    uint64_t turn_start, deadline, last_launch, last_note;
    uint64_t turn_launches, turn_work; /* launches in this turn, and their estimated GPU time */
    uint64_t per_launch;               /* estimated GPU time of one launch; 0 = not yet known */
    int marker;                        /* 1 = record one after the next launch; 2 = one is out */
    int marker_is_probe;               /* it times one launch (else it ends a quantum) */
    uint64_t marker_at;
    uint64_t marker_work;              /* turn_work when the outstanding marker was recorded */
    int64_t credit;                    /* force: GPU time this process may still use */
    uint32_t charge_scale;             /* force: a turn costs its length times this / 1024 (power.h) */
    int scale_known;
    uint64_t debt;                     /* force: charge owed for turns before the scale was known */
    uint64_t credit_at;
    uint64_t busy_ns; /* all turns so far */
    uint64_t turns;
    uint64_t drain_asked;              /* when the pending drain was asked for */
    uint64_t drains, displaced, extensions;
    uint64_t paused;                   /* turns that ended in a pause: charged up to their work's end */
    int acquired;                      /* the last go began a turn (not a launch within one) */
    uint64_t timed, edges_ns;          /* turns charged by the GPU's span, and the edge time left out */
};

/* The most a turn's GPU span may fall short of its host span and still be
 * the charge: the edges (the GPU reaching the first launch, the drain's
 * return) take tens to hundreds of microseconds; more means missed work. */
#define VGPU_PACER_EDGE_MAX 1000000ull

/* In a turn from the arbiter daemon, the most estimated GPU work queued
 * beyond the last completed marker: a holder asked to yield drains at most
 * about this much (twice it at worst), so a tenant under its share gets
 * the GPU within about one of the holder's kernels. */
#define VGPU_PACER_INFLIGHT 1000000ull

/* Sets the pacer up for a share (percent, 1..99) on an arbiter tenant; under
 * force a turn is the share of `period` (ns). */
void vgpu_pacer_init(struct vgpu_pacer *p, uint32_t share, int force, uint64_t period, struct vgpu_arbiter *arb,
                     int me);

/* Takes turns from the arbiter daemon whenever it is up (`remote` stays the
 * caller's); the turn files are the fallback. */
void vgpu_pacer_use_remote(struct vgpu_pacer *p, struct vgpu_arbd *remote);

/* The share changed while running (percent, 1..100): takes effect from the
 * next turn; credit already earned is kept. */
void vgpu_pacer_set_share(struct vgpu_pacer *p, uint32_t share, uint64_t period);

/* Force: from now on a turn costs its length times scale / 1024 (power.h);
 * 0 = not known yet. The first scale known is also owed for the turns
 * before it, so the share holds from the start; the debt is paid a quarter
 * of a turn at a time, so no half second loses much. */
void vgpu_pacer_set_charge_scale(struct vgpu_pacer *p, uint32_t scale);

/* What to do before a launch at `now`. Repeat until VGPU_PACE_GO. */
struct vgpu_pacer_decision vgpu_pacer_before_launch(struct vgpu_pacer *p, uint64_t now);

/* The drain asked for finished at `end`. `gpu_ns` is the GPU's own span of
 * the turn's work, from just before its first launch to just after its last
 * (timed events), or 0 when it was not timed: the turn is then charged from
 * its first launch call to `end`. */
void vgpu_pacer_drained(struct vgpu_pacer *p, uint64_t end, uint64_t gpu_ns);

/* Between launches (another thread, the same lock as the launches): reads
 * the daemon's messages; if this process holds a turn from it that another
 * tenant waits for, and its work should be done by now (the estimate of its
 * last launch's end; a millisecond later unless asked to yield), ends the
 * turn, charged up to that end: a program that
 * stopped launching (a notebook between cells) gives the GPU back at once
 * instead of keeping the others waiting. Returns when to look again (0:
 * when a message comes). */
uint64_t vgpu_pacer_idle_check(struct vgpu_pacer *p, uint64_t now);

/* After a launch: 1 if a marker should be recorded behind it (then call
 * vgpu_pacer_marker_recorded, or nothing if recording failed). */
int vgpu_pacer_want_marker(const struct vgpu_pacer *p);
void vgpu_pacer_marker_recorded(struct vgpu_pacer *p);

/* The marker recorded last has completed; `now` is when that was seen. */
void vgpu_pacer_marker_done(struct vgpu_pacer *p, uint64_t now);

#endif
