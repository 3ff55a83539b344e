#include "limiter.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <time.h>

#include "arbiter.h"
#include "config.h"
#include "log.h"
#include "pacer.h"
#include "power.h"
#include "real_driver.h"
#include "runtime.h"

struct device {
    pthread_mutex_t lock; /* one launching thread at a time through the pacer */
    struct vgpu_pacer pacer;
    struct vgpu_arbd remote; /* the trusted arbiter daemon, when one is configured */
    _Atomic int capped; /* set last by configure(), with release order */
    CUevent marker; /* recorded behind a launch when the pacer asks */
    int marker_broken;
    /* LIBVGPU_TURN_CHARGE=gpu: timed events before a turn's first launch and
     * after its last, on that launch's stream; a turn that launches on
     * another stream too is charged by host time. */
    CUevent turn_begin, turn_end;
    int timing_broken;
    int turn_timed; /* turn_begin is recorded for the turn in progress */
    CUstream turn_stream;
    int turn_per_thread;
    _Atomic uint64_t busy_ns; /* the pacer's, readable by the statistics thread */
    struct vgpu_power_meter power; /* force only; the statistics thread's after configure */
    int power_aware;
    _Atomic uint32_t charge_scale;
};

static struct device g_device[VGPU_MAX_DEVICES];
static pthread_once_t g_yielder_once = PTHREAD_ONCE_INIT;
static _Atomic int g_configured[VGPU_MAX_DEVICES];
static pthread_mutex_t g_configure_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t g_launches[VGPU_MAX_DEVICES];
static _Atomic int g_single_entry = -1; /* the only device with a context here, or -1 */
static _Atomic unsigned g_active_mask;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void vgpu_limiter_device_active(int entry)
{
    unsigned mask = atomic_fetch_or(&g_active_mask, 1u << entry) | (1u << entry);
    atomic_store(&g_single_entry, (mask & (mask - 1)) == 0 ? entry : -1);
}

uint64_t vgpu_limiter_launches(int entry) { return atomic_load_explicit(&g_launches[entry], memory_order_relaxed); }
uint64_t vgpu_limiter_busy_ns(int entry) { return atomic_load_explicit(&g_device[entry].busy_ns, memory_order_relaxed); }
int vgpu_limiter_capped(int entry) { return atomic_load_explicit(&g_device[entry].capped, memory_order_acquire); }

int vgpu_limiter_active(int entry) { return (atomic_load(&g_active_mask) >> entry) & 1u; }

uint32_t vgpu_limiter_sample_power(int entry, uint64_t now_ns)
{
    struct device *d = &g_device[entry];
    if (!atomic_load_explicit(&g_configured[entry], memory_order_acquire) || !d->power_aware)
        return 0;
    uint32_t scale = vgpu_power_meter_sample(&d->power, now_ns, vgpu_limiter_busy_ns(entry));
    atomic_store_explicit(&d->charge_scale, scale, memory_order_relaxed);
    return scale;
}

void vgpu_limiter_reset_after_fork(void)
{
    /* The child holds no turn and has no events of its own; the parent's
     * connection to the arbiter daemon is not the child's. */
    for (int i = 0; i < VGPU_MAX_DEVICES; i++)
        if (g_device[i].remote.fd >= 0 && g_device[i].remote.state != VGPU_ARBD_S_OFF)
            vgpu_arbd_forget(&g_device[i].remote);
    memset(g_device, 0, sizeof g_device);
    for (int i = 0; i < VGPU_MAX_DEVICES; i++) {
        atomic_store(&g_launches[i], 0);
        atomic_store(&g_configured[i], 0);
    }
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_configure_lock = fresh;
    pthread_once_t once = PTHREAD_ONCE_INIT; /* the child has no yielder thread yet */
    g_yielder_once = once;
    atomic_store(&g_single_entry, -1);
    atomic_store(&g_active_mask, 0u);
}

/* The share this process has on a device: the slice's, narrowed by the
 * process's own cap (a kernel's sub-slice). */
static uint32_t share_of(int entry)
{
    struct vgpu_region *r = vgpu_rt.region.map;
    uint32_t slice = atomic_load(&r->devices[entry].sm_limit);
    uint32_t own = atomic_load(&r->procs[vgpu_rt.region.slot].sm_limit[entry]);
    uint32_t share = slice && own ? (slice < own ? slice : own) : (slice ? slice : own);
    /* Root's cap (trusted.h) holds whatever the region says. */
    uint32_t ceiling = vgpu_rt.sm_ceiling_of_entry[entry];
    share = ceiling && (!share || share > ceiling) ? ceiling : share;
    return vgpu_config()->policy == VGPU_POLICY_DISABLE || share >= 100 ? 0 : share;
}

/* The yielder: a thread that hears the arbiter daemon while the program is
 * not launching (a notebook between cells), and gives back a turn someone
 * waits for once its work is done (vgpu_pacer_idle_check). It never calls
 * the driver, and takes a device's lock only when no launch holds it. */
static void *yielder(void *arg)
{
    (void)arg;
    uint64_t recheck[VGPU_MAX_DEVICES] = {0};
    for (;;) {
        struct pollfd fds[VGPU_MAX_DEVICES];
        int entry_of[VGPU_MAX_DEVICES], n = 0;
        uint64_t now = mono_ns(), next = now + 100000000ull;
        for (int e = 0; e < VGPU_MAX_DEVICES; e++) {
            struct vgpu_arbd *c = &g_device[e].remote;
            if (!atomic_load_explicit(&g_device[e].capped, memory_order_acquire) || c->state < VGPU_ARBD_S_HELLO ||
                c->fd < 0)
                continue;
            fds[n] = (struct pollfd){c->fd, POLLIN, 0};
            entry_of[n++] = e;
            if (recheck[e] && recheck[e] < next)
                next = recheck[e];
            /* The launching thread may have read the daemon's request itself
             * and then stopped launching: look again soon while one stands. */
            if (c->holding && (c->waiting || c->yield) && now + 1000000u < next)
                next = now + 1000000u;
        }
        if (n == 0) {
            struct timespec ts = {0, 50000000};
            nanosleep(&ts, NULL);
            continue;
        }
        uint64_t wait = next > now ? next - now : 0;
        struct timespec ts = {(time_t)(wait / 1000000000u), (long)(wait % 1000000000u)};
        ppoll(fds, (nfds_t)n, &ts, NULL);
        for (int i = 0; i < n; i++) {
            int e = entry_of[i];
            now = mono_ns();
            struct vgpu_arbd *c = &g_device[e].remote;
            int asked = c->holding && (c->waiting || c->yield);
            if (!(fds[i].revents & POLLIN) && !(recheck[e] && now >= recheck[e]) && !asked)
                continue;
            if (pthread_mutex_trylock(&g_device[e].lock) != 0) {
                /* A launch is in the pacer: it reads the daemon itself. */
                struct timespec brief = {0, 500000};
                nanosleep(&brief, NULL);
                continue;
            }
            recheck[e] = vgpu_pacer_idle_check(&g_device[e].pacer, mono_ns());
            pthread_mutex_unlock(&g_device[e].lock);
        }
    }
    return NULL;
}

static void start_yielder(void)
{
    pthread_t t;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the program's signals are not its business */
    if (pthread_create(&t, NULL, yielder, NULL) == 0)
        pthread_detach(t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void configure(int entry)
{
    struct device *d = &g_device[entry];
    uint32_t share = share_of(entry);
    if (share == 0)
        return;
    if (!vgpu_real.cuCtxSynchronize || !vgpu_real.cuEventSynchronize) {
        vgpu_fail("the CUDA driver lacks cuCtxSynchronize or cuEventSynchronize, which the compute share needs");
        return;
    }
    char err[512];
    int fd;
    unsigned char uuid[16];
    struct vgpu_arbiter *arb;
    vgpu_region_device_uuid(vgpu_rt.region.map, entry, uuid);
    if (vgpu_arbiter_open(vgpu_config()->arbiter_dir, vgpu_config()->arbiter_default, uuid, vgpu_mapping_lost, &arb,
                          &fd, err, sizeof err) != 0) {
        vgpu_fail(err);
        return;
    }
    int me = vgpu_arbiter_join(arb, fd, share, mono_ns());
    if (me < 0) {
        vgpu_fail("the GPU arbiter has no free tenant slot");
        return;
    }
    int force = vgpu_config()->policy == VGPU_POLICY_FORCE;
    vgpu_pacer_init(&d->pacer, share, force, vgpu_config()->share_period_ns, arb, me);
    vgpu_arbd_init(&d->remote, vgpu_config()->arbiter_socket, uuid, share, force);
    if (d->remote.state != VGPU_ARBD_S_OFF) {
        /* The first turn should already be the daemon's: wait a little for
         * its welcome (once per process and GPU; a daemon that is down
         * answers at once, one that hangs costs at most this). */
        uint64_t start = mono_ns();
        while (vgpu_arbd_pump(&d->remote, mono_ns()) == VGPU_ARBD_S_HELLO && mono_ns() - start < 100000000ull)
            vgpu_arbd_wait(&d->remote, mono_ns(), mono_ns() + 5000000ull);
        vgpu_pacer_use_remote(&d->pacer, &d->remote);
    }
    if (force && vgpu_config()->power_aware) {
        vgpu_power_meter_open(&d->power, uuid);
        d->power_aware = d->power.usable;
    }
    pthread_mutex_init(&d->lock, NULL);
    atomic_store_explicit(&d->capped, 1, memory_order_release);
    if (d->remote.state != VGPU_ARBD_S_OFF)
        pthread_once(&g_yielder_once, start_yielder);
    VGPU_DEBUG("compute share %u%% (%s) on device entry %d, quantum %llu us", share, force ? "force" : "default",
               entry, (unsigned long long)(d->pacer.quantum / 1000u));
}

static struct device *device_of(int entry)
{
    if (!atomic_load_explicit(&g_configured[entry], memory_order_acquire)) {
        pthread_mutex_lock(&g_configure_lock);
        if (!atomic_load(&g_configured[entry])) {
            configure(entry);
            atomic_store_explicit(&g_configured[entry], 1, memory_order_release);
        }
        pthread_mutex_unlock(&g_configure_lock);
    }
    return &g_device[entry];
}

/* A process that started with no cap is given one (its kernel's sub-slice
 * was re-divided): it joins the GPU's arbiter now. */
static struct device *capped_later(int entry)
{
    pthread_mutex_lock(&g_configure_lock);
    if (!atomic_load(&g_device[entry].capped))
        configure(entry);
    pthread_mutex_unlock(&g_configure_lock);
    return &g_device[entry];
}

static int capturing(CUstream stream, int per_thread)
{
    cu_fn_cuStreamIsCapturing query = per_thread ? vgpu_real.cuStreamIsCapturing_ptsz : vgpu_real.cuStreamIsCapturing;
    CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
    return query && query(stream, &status) == CUDA_SUCCESS && status != CU_STREAM_CAPTURE_STATUS_NONE;
}

static cu_fn_cuEventRecord event_record_fn(int per_thread)
{
    return per_thread ? vgpu_real.cuEventRecord_ptsz : vgpu_real.cuEventRecord;
}

/* Records *event (made with `flags` on first use) on a stream. If that
 * fails, the event belonged to a context that is gone (a device reset) or is
 * not this launch's: one is made in the current context and recorded
 * instead. 0 on success. */
static int record_event(CUevent *event, unsigned int flags, CUstream stream, int per_thread)
{
    cu_fn_cuEventRecord record = event_record_fn(per_thread);
    if (!record || !vgpu_real.cuEventCreate)
        return -1;
    if (*event && record(*event, stream) == CUDA_SUCCESS)
        return 0;
    CUevent fresh = NULL;
    if (vgpu_real.cuEventCreate(&fresh, flags) == CUDA_SUCCESS && record(fresh, stream) == CUDA_SUCCESS) {
        if (*event && vgpu_real.cuEventDestroy_v2)
            vgpu_real.cuEventDestroy_v2(*event);
        *event = fresh;
        return 0;
    }
    if (fresh && vgpu_real.cuEventDestroy_v2)
        vgpu_real.cuEventDestroy_v2(fresh);
    return -1;
}

/* Records the turn's begin event before its first launch. */
static void time_turn(struct device *d, CUstream stream, int per_thread)
{
    d->turn_timed = 0;
    if (d->timing_broken || capturing(stream, per_thread))
        return;
    if (!vgpu_real.cuEventElapsedTime || record_event(&d->turn_begin, 0, stream, per_thread) != 0) {
        d->timing_broken = 1;
        VGPU_WARN("cannot record a timed CUDA event: turns will be charged by host time");
        return;
    }
    d->turn_stream = stream;
    d->turn_per_thread = per_thread;
    d->turn_timed = 1;
}

/* The GPU's span of the turn being drained, in ns, or 0 if it was not
 * timed; call after the drain. */
static uint64_t turn_gpu_span(struct device *d, int end_recorded)
{
    int timed = d->turn_timed && end_recorded;
    d->turn_timed = 0;
    float ms = 0;
    if (!timed || vgpu_real.cuEventElapsedTime(&ms, d->turn_begin, d->turn_end) != CUDA_SUCCESS || !(ms > 0))
        return 0;
    return (uint64_t)((double)ms * 1e6);
}

/* Carries out the pacer's decisions until it says go; returns 0 instead if
 * the launch goes into a capturing stream. Such a launch only records into
 * a graph (it is paced when the graph is launched), and draining or waiting
 * now would break the capture. Asking the driver costs about as much as the
 * rest of the launch path, so it is asked only when the pacer wants more
 * than a go. */
static int gate(struct device *d, CUstream stream, int per_thread)
{
    struct vgpu_pacer *p = &d->pacer;
    vgpu_pacer_set_charge_scale(p, atomic_load_explicit(&d->charge_scale, memory_order_relaxed));
    for (int asked = 0;;) {
        uint64_t now = mono_ns();
        struct vgpu_pacer_decision next = vgpu_pacer_before_launch(p, now);
        if (next.action != VGPU_PACE_GO && !asked) {
            asked = 1;
            if (capturing(stream, per_thread))
                return 0; /* the decision is abandoned: the pacer asks again at the next launch */
        }
        switch (next.action) {
        case VGPU_PACE_GO:
            if (p->acquired && vgpu_config()->gpu_timed_turns)
                time_turn(d, stream, per_thread);
            else if (d->turn_timed && (stream != d->turn_stream || per_thread != d->turn_per_thread))
                d->turn_timed = 0; /* a second stream: its work is not between the events */
            atomic_store_explicit(&d->busy_ns, p->busy_ns, memory_order_relaxed);
            return 1;
        case VGPU_PACE_SLEEP:
            if (p->remote && p->remote->state >= VGPU_ARBD_S_HELLO) {
                vgpu_arbd_wait(p->remote, now, next.until); /* the daemon's grant ends it early */
            } else if (next.until <= now + 100000u) {
                sched_yield(); /* a turn is about to change hands */
            } else {
                struct timespec ts = {(time_t)(next.until / 1000000000u), (long)(next.until % 1000000000u)};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            }
            break;
        case VGPU_PACE_DRAIN: {
            /* This launch's stream was just found not capturing, and a timed
             * turn has launched on this stream alone. */
            int end_recorded = d->turn_timed && stream == d->turn_stream && per_thread == d->turn_per_thread &&
                               record_event(&d->turn_end, 0, stream, per_thread) == 0;
            vgpu_real.cuCtxSynchronize();
            uint64_t end = mono_ns();
            vgpu_pacer_drained(p, end, turn_gpu_span(d, end_recorded));
            atomic_store_explicit(&d->busy_ns, p->busy_ns, memory_order_relaxed);
            break;
        }
        case VGPU_PACE_WAIT_MARKER:
            vgpu_real.cuEventSynchronize(d->marker);
            vgpu_pacer_marker_done(p, mono_ns());
            break;
        }
    }
}

static void record_marker(struct device *d, CUstream stream, int per_thread)
{
    if (d->marker_broken || !vgpu_pacer_want_marker(&d->pacer) || capturing(stream, per_thread))
        return;
    if (record_event(&d->marker, CU_EVENT_DISABLE_TIMING, stream, per_thread) == 0) {
        vgpu_pacer_marker_recorded(&d->pacer);
        return;
    }
    /* Without markers a lone process under `default` could queue far more
     * than a quantum: say so. */
    d->marker_broken = 1;
    VGPU_WARN("cannot record a CUDA event: turns will be bounded by time only");
}

CUresult vgpu_launch_enter(CUstream stream, int per_thread, struct vgpu_launch *l)
{
    CUresult r = vgpu_ready();
    if (r != CUDA_SUCCESS)
        return r;
    l->paced = 0;
    l->entry = atomic_load_explicit(&g_single_entry, memory_order_relaxed);
    if (l->entry < 0 && vgpu_current_entry(&l->entry) != CUDA_SUCCESS) {
        l->entry = -1;
        return CUDA_SUCCESS; /* no context: the driver will say so */
    }
    atomic_fetch_add_explicit(&g_launches[l->entry], 1, memory_order_relaxed);
    struct device *d = device_of(l->entry);
    /* Read at every launch (two loads from the mapped region): a kernel's
     * sub-slice may be re-divided while it runs. */
    uint32_t share = share_of(l->entry);
    if (!atomic_load_explicit(&d->capped, memory_order_acquire)) {
        if (share == 0)
            return CUDA_SUCCESS;
        /* A cap that could not be set up (no turn file) has failed closed:
         * this launch must not run uncapped either. */
        if (!atomic_load_explicit(&capped_later(l->entry)->capped, memory_order_acquire))
            return vgpu_is_ready() ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
    }
    pthread_mutex_lock(&d->lock);
    uint32_t now_share = share ? share : 100; /* a cap lifted: turns that never wait */
    if (d->remote.state != VGPU_ARBD_S_OFF && now_share != d->remote.claim && !d->pacer.holding) {
        /* The sub-slice was re-divided: the daemon must hear the new claim
         * (it can only lower the slice's share). Rejoin with it. */
        int warned = d->remote.warned;
        vgpu_arbd_forget(&d->remote);
        d->remote.claim = now_share;
        d->remote.warned = warned;
    }
    if (d->remote.state == VGPU_ARBD_S_UP && d->remote.share < now_share)
        now_share = d->remote.share; /* the trusted slice's share, as the daemon granted it */
    if (now_share != d->pacer.share) {
        vgpu_pacer_set_share(&d->pacer, now_share, vgpu_config()->share_period_ns);
        vgpu_arbiter_set_share(d->pacer.arb, d->pacer.me, now_share);
    }
    l->paced = gate(d, stream, per_thread);
    if (!l->paced)
        pthread_mutex_unlock(&d->lock);
    return CUDA_SUCCESS;
}

void vgpu_launch_exit(const struct vgpu_launch *l, CUstream stream, int per_thread, CUresult r)
{
    if (!l->paced)
        return;
    struct device *d = &g_device[l->entry];
    if (r == CUDA_SUCCESS)
        record_marker(d, stream, per_thread);
    pthread_mutex_unlock(&d->lock);
}

/* At info level, what the pacer did: enough to see why a share came out as it did. */
__attribute__((destructor)) static void report(void)
{
    if (!vgpu_log_enabled(VGPU_LOG_INFO))
        return;
    for (int e = 0; e < VGPU_MAX_DEVICES; e++) {
        const struct vgpu_pacer *p = &g_device[e].pacer;
        if (!g_device[e].capped)
            continue;
        VGPU_INFO("compute share %u%%: %llu turns, %.3f s in turns, %llu drains, %llu extensions, "
                  "%llu displaced, %llu paused, %.1f us per launch, charge scale %.3f",
                  p->share, (unsigned long long)p->turns, (double)p->busy_ns / 1e9, (unsigned long long)p->drains,
                  (unsigned long long)p->extensions, (unsigned long long)p->displaced,
                  (unsigned long long)p->paused, (double)p->per_launch / 1e3,
                  p->charge_scale / 1024.0);
        if (vgpu_config()->gpu_timed_turns)
            VGPU_INFO("turns charged by the GPU's span: %llu, their edges left out %.1f us each on average",
                      (unsigned long long)p->timed, p->timed ? (double)p->edges_ns / 1e3 / (double)p->timed : 0.0);
        const struct vgpu_power_meter *m = &g_device[e].power;
        if (g_device[e].power_aware)
            VGPU_INFO("power: %.0f W at rest, %.0f W taken between turns, limit %.0f W; last window %.0f W at "
                      "%.1f%% duty",
                      m->open_w, m->idle_w, m->limit_w, m->last_avg_w, 100.0 * m->last_duty);
    }
}
