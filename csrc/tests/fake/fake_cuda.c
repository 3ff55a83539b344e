/*
 * A fake libcuda.so.1: just enough of the CUDA driver API, with real
 * bookkeeping of device memory, for libvgpu's hooks to be exercised without a
 * GPU. See README.md for what is modelled.
 *
 * Two kinds of state:
 *  - device usage (bytes charged per physical device, per process), which
 *    lives in struct fake_shared (fake_state.c) and may be shared between
 *    processes through FAKE_CUDA_STATE;
 *  - process-local bookkeeping (contexts, allocations, pools), guarded by one
 *    mutex, g_lock. Speed does not matter here; being obviously right does.
 */
#define _GNU_SOURCE
#include "fake_abi_ext.h"
#include "fake_control.h"
#include "fake_state.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define VMM_GRANULARITY (2ULL << 20) /* what every current GPU reports */
#define PITCH_ALIGNMENT 512ULL
/* Bigger single allocations fail with OUT_OF_MEMORY even if the device is
 * configured larger: the backing is reserved address space, and 1 TiB of it
 * is plenty for any test. */
#define MAX_BACKING (1ULL << 40)
/* Under strict overcommit (vm.overcommit_memory=2) a large read/write
 * mapping may be refused even with MAP_NORESERVE; then only this much of an
 * allocation is made writable and the rest is inaccessible address space. */
#define FALLBACK_WRITABLE (1ULL << 20)
#define CTX_STACK_DEPTH 64
#define ALLOC_BUCKETS 256

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- initialisation and device ordinals --------------------------------- */

/* cuInit is per process: a forked child must call it again (a real driver
 * does not survive fork either), and then starts with no contexts and no
 * allocations of its own. 0 = never initialised. */
static _Atomic int g_init_pid;

/* CUDA ordinal -> physical device, from CUDA_VISIBLE_DEVICES at cuInit. */
static int g_visible[FAKE_MAX_DEVICES];
static int g_visible_count;

static bool initialized(void)
{
    return atomic_load(&g_init_pid) == (int)getpid();
}

#define REQUIRE_INIT()                                                                     \
    do {                                                                                   \
        if (!initialized())                                                                \
            return CUDA_ERROR_NOT_INITIALIZED;                                             \
    } while (0)

/* The physical device behind an ordinal, or -1. Only valid after cuInit;
 * g_visible is written before g_init_pid is published. */
static int physical_of(CUdevice ordinal)
{
    return ordinal >= 0 && ordinal < g_visible_count ? g_visible[ordinal] : -1;
}

static bool all_digits(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* One CUDA_VISIBLE_DEVICES entry -> physical device, or -1 if invalid.
 * Entries are an index or a UUID "GPU-..." which, as with the real driver,
 * may be abbreviated to any prefix that names exactly one device. */
static int resolve_visible_entry(const char *s, size_t len)
{
    int n = fake_config()->device_count;
    if (all_digits(s, len)) {
        if (len > 2)
            return -1;
        int index = atoi(s);
        return index < n ? index : -1;
    }
    if (len <= 4 || strncmp(s, "GPU-", 4) != 0)
        return -1; /* also MIG-... : the fake has no MIG instances */
    int match = -1;
    for (int i = 0; i < n; i++) {
        char uuid[FAKE_UUID_STRLEN + 1];
        fake_uuid_string(i, uuid);
        if (len <= FAKE_UUID_STRLEN && strncasecmp(s, uuid, len) == 0) {
            if (match >= 0)
                return -1; /* ambiguous prefix */
            match = i;
        }
    }
    return match;
}

/* Unset: every device in order. Otherwise the listed devices in the listed
 * order, stopping at the first invalid or repeated entry (the real driver
 * silently drops the rest, so "" and "-1" both hide every device). */
static void parse_visible_devices(void)
{
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    int n = fake_config()->device_count;
    g_visible_count = 0;
    if (!cvd) {
        for (int i = 0; i < n; i++)
            g_visible[g_visible_count++] = i;
        return;
    }
    const char *p = cvd;
    while (g_visible_count < n) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char entry[64];
        /* trim surrounding blanks */
        while (len && isspace((unsigned char)*p)) {
            p++;
            len--;
        }
        while (len && isspace((unsigned char)p[len - 1]))
            len--;
        if (len >= sizeof entry)
            break;
        memcpy(entry, p, len);
        entry[len] = '\0';
        int phys = resolve_visible_entry(entry, len);
        if (phys < 0)
            break;
        for (int i = 0; i < g_visible_count; i++)
            if (g_visible[i] == phys)
                phys = -1;
        if (phys < 0)
            break;
        g_visible[g_visible_count++] = phys;
        if (!comma)
            break;
        p = comma + 1;
    }
}

/* ---- contexts ----------------------------------------------------------- */

struct CUctx_st {
    struct CUctx_st *next_created; /* registry of cuCtxCreate'd contexts */
    int ordinal;
    int physical;
    bool primary;
    /* Charged and usable. Read without g_lock by launches; other threads may
     * still hold a destroyed context as current, so context objects are
     * never freed (they stay reachable from g_created or g_primary). */
    _Atomic bool alive;
    unsigned refcount; /* primary contexts only */
};

static struct CUctx_st g_primary[FAKE_MAX_DEVICES]; /* by ordinal */
static struct CUctx_st *g_created;

/* The per-thread context stack; its top is the current context. */
static _Thread_local struct CUctx_st *t_ctx_stack[CTX_STACK_DEPTH];
static _Thread_local int t_ctx_depth;

static struct CUctx_st *ctx_top(void)
{
    return t_ctx_depth ? t_ctx_stack[t_ctx_depth - 1] : NULL;
}

/* The current context if it is still alive, else NULL. */
static struct CUctx_st *ctx_current(void)
{
    struct CUctx_st *c = ctx_top();
    return c && atomic_load(&c->alive) ? c : NULL;
}

static bool ctx_push(struct CUctx_st *c)
{
    if (t_ctx_depth == CTX_STACK_DEPTH)
        return false;
    t_ctx_stack[t_ctx_depth++] = c;
    return true;
}

/* Whether c is a live context of this process (never dereferences c unless
 * it is one of ours). Caller holds g_lock. */
static bool ctx_valid_locked(CUcontext c)
{
    if (!c)
        return false;
    for (int i = 0; i < FAKE_MAX_DEVICES; i++)
        if (c == &g_primary[i])
            return atomic_load(&c->alive);
    for (struct CUctx_st *k = g_created; k; k = k->next_created)
        if (k == c)
            return atomic_load(&c->alive);
    return false;
}

static void release_ctx_allocations_locked(struct CUctx_st *ctx);
static void release_ctx_events_locked(struct CUctx_st *ctx);

/* Destroying a context frees everything allocated in it and its events, as
 * the real driver does, and gives back the context's own footprint. Caller
 * holds g_lock. */
static void ctx_deactivate_locked(struct CUctx_st *c)
{
    atomic_store(&c->alive, false);
    release_ctx_allocations_locked(c);
    release_ctx_events_locked(c);
    fake_uncharge(fake_state(), c->physical, fake_config()->context_size);
}

static CUresult ctx_create(CUcontext *pctx, CUdevice dev)
{
    REQUIRE_INIT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    int phys = physical_of(dev);
    if (phys < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    struct CUctx_st *c = calloc(1, sizeof *c);
    if (!c)
        return CUDA_ERROR_OUT_OF_MEMORY;
    c->ordinal = dev;
    c->physical = phys;
    pthread_mutex_lock(&g_lock);
    if (t_ctx_depth == CTX_STACK_DEPTH ||
        !fake_charge(fake_state(), phys, fake_config()->context_size)) {
        pthread_mutex_unlock(&g_lock);
        free(c);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    atomic_store(&c->alive, true);
    c->next_created = g_created;
    g_created = c;
    ctx_push(c);
    pthread_mutex_unlock(&g_lock);
    *pctx = c;
    return CUDA_SUCCESS;
}

CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    (void)flags;
    return ctx_create(pctx, dev);
}

CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    (void)flags;
    return ctx_create(pctx, dev);
}

CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int numParams,
                        unsigned int flags, CUdevice dev)
{
    (void)flags;
    if (initialized() && (numParams < 0 || (numParams > 0 && !params)))
        return CUDA_ERROR_INVALID_VALUE;
    return ctx_create(pctx, dev);
}

CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags,
                        CUdevice dev)
{
    (void)params;
    (void)flags;
    return ctx_create(pctx, dev);
}

static CUresult ctx_destroy(CUcontext ctx)
{
    REQUIRE_INIT();
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_lock);
    /* Primary contexts are only released through cuDevicePrimaryCtx*. */
    if (!ctx_valid_locked(ctx) || ctx->primary) {
        pthread_mutex_unlock(&g_lock);
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    ctx_deactivate_locked(ctx);
    pthread_mutex_unlock(&g_lock);
    if (ctx_top() == ctx)
        t_ctx_depth--;
    return CUDA_SUCCESS;
}

CUresult cuCtxDestroy(CUcontext ctx)
{
    return ctx_destroy(ctx);
}

CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    return ctx_destroy(ctx);
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    REQUIRE_INIT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (physical_of(dev) < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    struct CUctx_st *c = &g_primary[dev];
    pthread_mutex_lock(&g_lock);
    if (c->refcount == 0) {
        /* First retain: the context comes into existence on the device. */
        if (!fake_charge(fake_state(), c->physical, fake_config()->context_size)) {
            pthread_mutex_unlock(&g_lock);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        atomic_store(&c->alive, true);
    }
    c->refcount++;
    pthread_mutex_unlock(&g_lock);
    *pctx = c;
    return CUDA_SUCCESS;
}

static CUresult primary_release(CUdevice dev)
{
    REQUIRE_INIT();
    if (physical_of(dev) < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    struct CUctx_st *c = &g_primary[dev];
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&g_lock);
    if (c->refcount == 0)
        rc = CUDA_ERROR_INVALID_CONTEXT;
    else if (--c->refcount == 0)
        ctx_deactivate_locked(c);
    pthread_mutex_unlock(&g_lock);
    return rc;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice dev)
{
    return primary_release(dev);
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    return primary_release(dev);
}

static CUresult primary_reset(CUdevice dev)
{
    REQUIRE_INIT();
    if (physical_of(dev) < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    struct CUctx_st *c = &g_primary[dev];
    pthread_mutex_lock(&g_lock);
    if (c->refcount > 0) {
        c->refcount = 0;
        ctx_deactivate_locked(c);
    }
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxReset(CUdevice dev)
{
    return primary_reset(dev);
}

CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev)
{
    return primary_reset(dev);
}

/* NULL pops the top (no-op on an empty stack); anything else replaces the
 * top, or becomes the only entry of an empty stack. */
CUresult cuCtxSetCurrent(CUcontext ctx)
{
    REQUIRE_INIT();
    if (!ctx) {
        if (t_ctx_depth)
            t_ctx_depth--;
        return CUDA_SUCCESS;
    }
    pthread_mutex_lock(&g_lock);
    bool valid = ctx_valid_locked(ctx);
    pthread_mutex_unlock(&g_lock);
    if (!valid)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (t_ctx_depth)
        t_ctx_stack[t_ctx_depth - 1] = ctx;
    else
        ctx_push(ctx);
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    REQUIRE_INIT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = ctx_top();
    return CUDA_SUCCESS;
}

CUresult cuCtxPushCurrent_v2(CUcontext ctx)
{
    REQUIRE_INIT();
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_lock);
    bool valid = ctx_valid_locked(ctx);
    pthread_mutex_unlock(&g_lock);
    if (!valid)
        return CUDA_ERROR_INVALID_CONTEXT;
    return ctx_push(ctx) ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuCtxPopCurrent_v2(CUcontext *pctx)
{
    REQUIRE_INIT();
    if (!t_ctx_depth)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct CUctx_st *c = t_ctx_stack[--t_ctx_depth];
    if (pctx)
        *pctx = c;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice *dev)
{
    REQUIRE_INIT();
    if (!dev)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUctx_st *c = ctx_current();
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    *dev = c->ordinal;
    return CUDA_SUCCESS;
}

/* ---- the GPU timeline -------------------------------------------------- */

/*
 * Each physical device has one FIFO timeline per process: a launch occupies
 * it for a fixed GPU duration after whatever was queued before it, so that
 * busy_until = max(now, busy_until) + duration. Streams are not told apart
 * (everything is one queue), nothing blocks the launching thread, and other
 * processes' work does not delay this one's. Times are CLOCK_MONOTONIC ns.
 * Durations come from FAKE_CUDA_LAUNCH_NS and FAKE_CUDA_GRAPH_LAUNCH_NS,
 * read at load; the default 0 makes every launch complete at once.
 * FAKE_CUDA_START_NS (default 0) is how long an idle GPU takes to reach
 * what is queued on it, launch or event: a real GPU's edge at a turn's start.
 */
struct timeline {
    unsigned long long busy_until; /* when the last queued work completes */
    unsigned long long enqueued;   /* GPU time of all work queued so far */
};

static pthread_mutex_t g_timeline_lock = PTHREAD_MUTEX_INITIALIZER;
static struct timeline g_timeline[FAKE_MAX_DEVICES]; /* by physical device */
static unsigned long long g_launch_ns, g_graph_launch_ns, g_start_ns;

static unsigned long long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

static void sleep_until(unsigned long long t)
{
    struct timespec ts = {(time_t)(t / 1000000000ULL), (long)(t % 1000000000ULL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* A duration in ns from the environment; unset, empty or malformed is 0. */
static unsigned long long env_ns(const char *name, unsigned long long fallback)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return fallback;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno || *end || !isdigit((unsigned char)*v) || n > 3600ULL * 1000000000ULL) {
        fprintf(stderr, "fake cuda: ignoring %s=\"%s\": expected nanoseconds, at most an hour\n",
                name, v);
        return fallback;
    }
    return n;
}

static void read_timeline_config(void)
{
    g_launch_ns = env_ns("FAKE_CUDA_LAUNCH_NS", 0);
    g_graph_launch_ns = env_ns("FAKE_CUDA_GRAPH_LAUNCH_NS", g_launch_ns);
    g_start_ns = env_ns("FAKE_CUDA_START_NS", 0);
}

/* Queue `duration` of work on a device; returns when it will be done. */
static unsigned long long timeline_enqueue(int physical, unsigned long long duration)
{
    unsigned long long now = mono_ns();
    pthread_mutex_lock(&g_timeline_lock);
    struct timeline *t = &g_timeline[physical];
    t->busy_until = (t->busy_until > now ? t->busy_until : now + g_start_ns) + duration;
    t->enqueued += duration;
    unsigned long long done = t->busy_until;
    pthread_mutex_unlock(&g_timeline_lock);
    return done;
}

/* When everything queued on a device so far will be done (at least now). */
static unsigned long long timeline_tail(int physical)
{
    unsigned long long now = mono_ns();
    pthread_mutex_lock(&g_timeline_lock);
    unsigned long long until = g_timeline[physical].busy_until;
    pthread_mutex_unlock(&g_timeline_lock);
    return until > now ? until : now;
}

static void timeline_reset(void)
{
    pthread_mutex_lock(&g_timeline_lock);
    memset(g_timeline, 0, sizeof g_timeline);
    pthread_mutex_unlock(&g_timeline_lock);
}

/* Waits for all work queued on the current context's device, by any thread
 * of this process. */
CUresult cuCtxSynchronize(void)
{
    REQUIRE_INIT();
    struct CUctx_st *c = ctx_current();
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    sleep_until(timeline_tail(c->physical));
    return CUDA_SUCCESS;
}

/* ---- events ------------------------------------------------------------- */

/* An event completes when the work queued on its device before it was
 * recorded is done; one never recorded counts as complete, as in CUDA. It
 * belongs to the context it was created in and goes away with it. */
struct CUevent_st {
    struct CUevent_st *next; /* registry, for handle validation */
    struct CUctx_st *ctx;    /* the context it was created in */
    int physical;            /* that context's device */
    bool recorded;
    bool timing; /* created without CU_EVENT_DISABLE_TIMING */
    unsigned long long done_at;
};

static struct CUevent_st *g_events;

#define EVENT_FLAGS \
    ((unsigned)(CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS))

/* Destroying a context destroys its events: their handles become unknown. */
static void release_ctx_events_locked(struct CUctx_st *ctx)
{
    struct CUevent_st **pp = &g_events;
    while (*pp) {
        struct CUevent_st *e = *pp;
        if (e->ctx == ctx) {
            *pp = e->next;
            free(e);
        } else {
            pp = &e->next;
        }
    }
}

static bool event_valid_locked(CUevent e)
{
    for (struct CUevent_st *k = g_events; k; k = k->next)
        if (k == e)
            return true;
    return false;
}

CUresult cuEventCreate(CUevent *event, unsigned int flags)
{
    REQUIRE_INIT();
    if (!event || (flags & ~EVENT_FLAGS))
        return CUDA_ERROR_INVALID_VALUE;
    struct CUctx_st *c = ctx_current();
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct CUevent_st *e = calloc(1, sizeof *e);
    if (!e)
        return CUDA_ERROR_OUT_OF_MEMORY;
    e->ctx = c;
    e->physical = c->physical;
    e->timing = !(flags & CU_EVENT_DISABLE_TIMING);
    pthread_mutex_lock(&g_lock);
    e->next = g_events;
    g_events = e;
    pthread_mutex_unlock(&g_lock);
    *event = e;
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy_v2(CUevent event)
{
    REQUIRE_INIT();
    pthread_mutex_lock(&g_lock);
    struct CUevent_st **pp = &g_events;
    while (*pp && *pp != event)
        pp = &(*pp)->next;
    struct CUevent_st *found = *pp;
    if (found)
        *pp = found->next;
    pthread_mutex_unlock(&g_lock);
    if (!found)
        return CUDA_ERROR_INVALID_HANDLE;
    free(found);
    return CUDA_SUCCESS;
}

/* The stream is not looked at: the device has one queue. An event is
 * queued like work that takes no time. */
static CUresult event_record(CUevent event)
{
    REQUIRE_INIT();
    pthread_mutex_lock(&g_lock);
    CUresult rc = CUDA_ERROR_INVALID_HANDLE;
    if (event_valid_locked(event)) {
        event->done_at = timeline_enqueue(event->physical, 0);
        event->recorded = true;
        rc = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

CUresult cuEventRecord(CUevent event, CUstream stream)
{
    (void)stream;
    return event_record(event);
}

CUresult cuEventRecord_ptsz(CUevent event, CUstream stream)
{
    (void)stream;
    return event_record(event);
}

/* When the event completes (0 if never recorded), or false if unknown. */
static bool event_done_at(CUevent event, unsigned long long *at)
{
    pthread_mutex_lock(&g_lock);
    bool valid = event_valid_locked(event);
    if (valid)
        *at = event->recorded ? event->done_at : 0;
    pthread_mutex_unlock(&g_lock);
    return valid;
}

CUresult cuEventQuery(CUevent event)
{
    REQUIRE_INIT();
    unsigned long long at;
    if (!event_done_at(event, &at))
        return CUDA_ERROR_INVALID_HANDLE;
    return mono_ns() >= at ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

CUresult cuEventSynchronize(CUevent event)
{
    REQUIRE_INIT();
    unsigned long long at;
    if (!event_done_at(event, &at))
        return CUDA_ERROR_INVALID_HANDLE;
    sleep_until(at);
    return CUDA_SUCCESS;
}

/* The time between two timed events, both complete, as CUDA answers it. */
CUresult cuEventElapsedTime(float *ms, CUevent start, CUevent end)
{
    REQUIRE_INIT();
    if (!ms)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_lock);
    bool valid = event_valid_locked(start) && event_valid_locked(end) && start->recorded && end->recorded &&
                 start->timing && end->timing;
    unsigned long long from = valid ? start->done_at : 0, to = valid ? end->done_at : 0;
    pthread_mutex_unlock(&g_lock);
    if (!valid)
        return CUDA_ERROR_INVALID_HANDLE;
    unsigned long long now = mono_ns();
    if (now < from || now < to)
        return CUDA_ERROR_NOT_READY;
    *ms = (float)(((double)to - (double)from) / 1e6);
    return CUDA_SUCCESS;
}

/* ---- stream capture ----------------------------------------------------- */

/* The fake has no stream capture: no stream is ever capturing. */
static CUresult stream_is_capturing(CUstreamCaptureStatus *status)
{
    REQUIRE_INIT();
    if (!status)
        return CUDA_ERROR_INVALID_VALUE;
    *status = CU_STREAM_CAPTURE_STATUS_NONE;
    return CUDA_SUCCESS;
}

CUresult cuStreamIsCapturing(CUstream stream, CUstreamCaptureStatus *status)
{
    (void)stream;
    return stream_is_capturing(status);
}

CUresult cuStreamIsCapturing_ptsz(CUstream stream, CUstreamCaptureStatus *status)
{
    (void)stream;
    return stream_is_capturing(status);
}

/* ---- allocation table --------------------------------------------------- */

/* How an allocation may be freed: each free entry point accepts one kind. */
enum alloc_kind {
    ALLOC_LINEAR, /* cuMemAlloc*, cuMemAllocManaged, cuMemAlloc*Async */
    ALLOC_ARRAY,
    ALLOC_MIPMAP,
    ALLOC_VMM, /* cuMemCreate handles */
};

struct fake_alloc {
    struct fake_alloc *next;
    uintptr_t key;            /* the device pointer, or this record's address for handles */
    enum alloc_kind kind;
    int physical;             /* the device charged */
    unsigned long long bytes; /* what was charged */
    void *map;                /* backing of linear memory, else NULL */
    size_t map_len;
    struct CUctx_st *ctx;     /* freed along with this context; NULL for VMM */
};

static struct fake_alloc *g_allocs[ALLOC_BUCKETS];

static size_t bucket_of(uintptr_t key)
{
    /* Device pointers are page aligned, record addresses 16-byte aligned. */
    return (size_t)((key >> 4) ^ (key >> 12) ^ (key >> 20)) % ALLOC_BUCKETS;
}

static void *map_backing(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED)
        return p;
    p = mmap(NULL, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    size_t writable = bytes < FALLBACK_WRITABLE ? bytes : FALLBACK_WRITABLE;
    if (mprotect(p, writable, PROT_READ | PROT_WRITE) != 0) {
        munmap(p, bytes);
        return NULL;
    }
    return p;
}

/* Charge, back (if linear) and record an allocation. OUT_OF_MEMORY leaves
 * everything unchanged. Caller holds g_lock. */
static CUresult record_allocation_locked(enum alloc_kind kind, int physical, struct CUctx_st *ctx,
                                         unsigned long long bytes, struct fake_alloc **out)
{
    if (kind == ALLOC_LINEAR && bytes > MAX_BACKING)
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct fake_alloc *rec = calloc(1, sizeof *rec);
    if (!rec)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (!fake_charge(fake_state(), physical, bytes)) {
        free(rec);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (kind == ALLOC_LINEAR) {
        rec->map = map_backing((size_t)bytes);
        if (!rec->map) {
            fake_uncharge(fake_state(), physical, bytes);
            free(rec);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        rec->map_len = (size_t)bytes;
        rec->key = (uintptr_t)rec->map;
    } else {
        rec->key = (uintptr_t)rec; /* opaque handle, unique while live */
    }
    rec->kind = kind;
    rec->physical = physical;
    rec->bytes = bytes;
    rec->ctx = ctx;
    size_t b = bucket_of(rec->key);
    rec->next = g_allocs[b];
    g_allocs[b] = rec;
    *out = rec;
    return CUDA_SUCCESS;
}

/* Remove and return the live allocation (key, kind), or NULL. */
static struct fake_alloc *unlink_allocation_locked(uintptr_t key, enum alloc_kind kind)
{
    for (struct fake_alloc **pp = &g_allocs[bucket_of(key)]; *pp; pp = &(*pp)->next) {
        struct fake_alloc *rec = *pp;
        if (rec->key == key && rec->kind == kind) {
            *pp = rec->next;
            return rec;
        }
    }
    return NULL;
}

/* Give back a record's memory and charge. uncharge is false only for
 * records a forked child inherited: those bytes are its parent's. */
static void destroy_record(struct fake_alloc *rec, bool uncharge)
{
    if (rec->map)
        munmap(rec->map, rec->map_len);
    if (uncharge)
        fake_uncharge(fake_state(), rec->physical, rec->bytes);
    free(rec);
}

static CUresult free_allocation(uintptr_t key, enum alloc_kind kind, CUresult unknown)
{
    REQUIRE_INIT();
    pthread_mutex_lock(&g_lock);
    struct fake_alloc *rec = unlink_allocation_locked(key, kind);
    pthread_mutex_unlock(&g_lock);
    if (!rec)
        return unknown;
    destroy_record(rec, true);
    return CUDA_SUCCESS;
}

static void release_ctx_allocations_locked(struct CUctx_st *ctx)
{
    for (size_t b = 0; b < ALLOC_BUCKETS; b++) {
        struct fake_alloc **pp = &g_allocs[b];
        while (*pp) {
            struct fake_alloc *rec = *pp;
            if (rec->ctx == ctx) {
                *pp = rec->next;
                destroy_record(rec, true);
            } else {
                pp = &rec->next;
            }
        }
    }
}

/* An allocation charged to the current context's device. */
static CUresult alloc_in_current_ctx(enum alloc_kind kind, unsigned long long bytes,
                                     struct fake_alloc **out)
{
    pthread_mutex_lock(&g_lock);
    struct CUctx_st *c = ctx_current();
    CUresult rc = c ? record_allocation_locked(kind, c->physical, c, bytes, out)
                    : CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_unlock(&g_lock);
    return rc;
}

/* ---- linear memory ------------------------------------------------------ */

static CUresult alloc_linear(CUdeviceptr *dptr, size_t bytes)
{
    REQUIRE_INIT();
    if (!dptr || bytes == 0)
        return CUDA_ERROR_INVALID_VALUE;
    struct fake_alloc *rec;
    CUresult rc = alloc_in_current_ctx(ALLOC_LINEAR, bytes, &rec);
    if (rc == CUDA_SUCCESS)
        *dptr = (CUdeviceptr)rec->key;
    return rc;
}

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    return alloc_linear(dptr, bytesize);
}

CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t width, size_t height,
                            unsigned int elementSize)
{
    REQUIRE_INIT();
    if (!dptr || !pPitch || width == 0 || height == 0)
        return CUDA_ERROR_INVALID_VALUE;
    /* The real driver only takes these element sizes. */
    if (elementSize != 4 && elementSize != 8 && elementSize != 16)
        return CUDA_ERROR_INVALID_VALUE;
    if (width > SIZE_MAX - (PITCH_ALIGNMENT - 1))
        return CUDA_ERROR_OUT_OF_MEMORY;
    size_t pitch = (width + PITCH_ALIGNMENT - 1) / PITCH_ALIGNMENT * PITCH_ALIGNMENT;
    size_t bytes;
    if (__builtin_mul_overflow(pitch, height, &bytes))
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = alloc_linear(dptr, bytes);
    if (rc == CUDA_SUCCESS)
        *pPitch = pitch;
    return rc;
}

CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    REQUIRE_INIT();
    if (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST)
        return CUDA_ERROR_INVALID_VALUE;
    /* Counted as device memory: what matters to a memory slice. */
    return alloc_linear(dptr, bytesize);
}

CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    return free_allocation((uintptr_t)dptr, ALLOC_LINEAR, CUDA_ERROR_INVALID_VALUE);
}

/* Stream-ordered allocation happens immediately; the stream is ignored. */
CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream stream)
{
    (void)stream;
    return alloc_linear(dptr, bytesize);
}

CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream stream)
{
    (void)stream;
    return alloc_linear(dptr, bytesize);
}

CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream)
{
    (void)stream;
    return cuMemFree_v2(dptr);
}

CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream)
{
    (void)stream;
    return cuMemFree_v2(dptr);
}

/* ---- memory pools ------------------------------------------------------- */

/* A pool is only a validity token: allocations from it are charged to the
 * current context's device like any other, and survive the pool's
 * destruction (the real driver defers it until they are freed). */
struct CUmemPoolHandle_st {
    struct CUmemPoolHandle_st *next;
};

static struct CUmemPoolHandle_st *g_pools;

static bool pool_valid_locked(CUmemoryPool pool)
{
    for (struct CUmemPoolHandle_st *p = g_pools; p; p = p->next)
        if (p == pool)
            return true;
    return false;
}

CUresult cuMemPoolCreate(CUmemoryPool *pool, const void *props)
{
    REQUIRE_INIT();
    if (!pool || !props)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUmemPoolHandle_st *p = calloc(1, sizeof *p);
    if (!p)
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&g_lock);
    p->next = g_pools;
    g_pools = p;
    pthread_mutex_unlock(&g_lock);
    *pool = p;
    return CUDA_SUCCESS;
}

CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    REQUIRE_INIT();
    pthread_mutex_lock(&g_lock);
    struct CUmemPoolHandle_st **pp = &g_pools;
    while (*pp && *pp != pool)
        pp = &(*pp)->next;
    struct CUmemPoolHandle_st *found = *pp;
    if (found)
        *pp = found->next;
    pthread_mutex_unlock(&g_lock);
    if (!found)
        return CUDA_ERROR_INVALID_VALUE;
    free(found);
    return CUDA_SUCCESS;
}

static CUresult alloc_from_pool(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool)
{
    REQUIRE_INIT();
    pthread_mutex_lock(&g_lock);
    bool valid = pool_valid_locked(pool);
    pthread_mutex_unlock(&g_lock);
    if (!valid)
        return CUDA_ERROR_INVALID_VALUE;
    return alloc_linear(dptr, bytes);
}

CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                 CUstream stream)
{
    (void)stream;
    return alloc_from_pool(dptr, bytesize, pool);
}

CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                      CUstream stream)
{
    (void)stream;
    return alloc_from_pool(dptr, bytesize, pool);
}

/* ---- arrays ------------------------------------------------------------- */

static unsigned format_bytes(CUarray_format format)
{
    switch (format) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8:
        return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF:
        return 2;
    default: /* 32-bit formats, and whatever else: close enough for a fake */
        return 4;
    }
}

static size_t at_least_1(size_t v)
{
    return v ? v : 1;
}

/* w * h * d * element size * channels, false on overflow. */
static bool texels_bytes(size_t w, size_t h, size_t d, CUarray_format format, unsigned channels,
                         unsigned long long *out)
{
    unsigned long long v = (unsigned long long)format_bytes(format) * channels;
    return !__builtin_mul_overflow(v, w, &v) && !__builtin_mul_overflow(v, h, &v) &&
           !__builtin_mul_overflow(v, d, &v) && (*out = v, true);
}

static bool valid_channels(unsigned channels)
{
    return channels == 1 || channels == 2 || channels == 4;
}

/* Layers of a cubemap: 6 faces, or 6 per layer when also layered. */
static bool valid_cubemap(const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    if (d->Width != d->Height)
        return false;
    if (d->Flags & CUDA_ARRAY3D_LAYERED)
        return d->Depth > 0 && d->Depth % 6 == 0;
    return d->Depth == 6;
}

static CUresult create_array(enum alloc_kind kind, unsigned long long bytes, uintptr_t *handle)
{
    struct fake_alloc *rec;
    CUresult rc = alloc_in_current_ctx(kind, bytes, &rec);
    if (rc == CUDA_SUCCESS)
        *handle = rec->key;
    return rc;
}

CUresult cuArrayCreate_v2(CUarray *arr, const CUDA_ARRAY_DESCRIPTOR *desc)
{
    REQUIRE_INIT();
    if (!arr || !desc || desc->Width == 0 || !valid_channels(desc->NumChannels))
        return CUDA_ERROR_INVALID_VALUE;
    unsigned long long bytes;
    if (!texels_bytes(desc->Width, at_least_1(desc->Height), 1, desc->Format, desc->NumChannels,
                      &bytes))
        return CUDA_ERROR_OUT_OF_MEMORY;
    uintptr_t handle;
    CUresult rc = create_array(ALLOC_ARRAY, bytes, &handle);
    if (rc == CUDA_SUCCESS)
        *arr = (CUarray)handle;
    return rc;
}

CUresult cuArray3DCreate_v2(CUarray *arr, const CUDA_ARRAY3D_DESCRIPTOR *desc)
{
    REQUIRE_INIT();
    if (!arr || !desc || desc->Width == 0 || !valid_channels(desc->NumChannels))
        return CUDA_ERROR_INVALID_VALUE;
    if ((desc->Flags & CUDA_ARRAY3D_CUBEMAP) && !valid_cubemap(desc))
        return CUDA_ERROR_INVALID_VALUE;
    unsigned long long bytes;
    if (!texels_bytes(desc->Width, at_least_1(desc->Height), at_least_1(desc->Depth), desc->Format,
                      desc->NumChannels, &bytes))
        return CUDA_ERROR_OUT_OF_MEMORY;
    uintptr_t handle;
    CUresult rc = create_array(ALLOC_ARRAY, bytes, &handle);
    if (rc == CUDA_SUCCESS)
        *arr = (CUarray)handle;
    return rc;
}

CUresult cuArrayDestroy(CUarray arr)
{
    return free_allocation((uintptr_t)arr, ALLOC_ARRAY, CUDA_ERROR_INVALID_HANDLE);
}

static size_t halve(size_t v, unsigned level)
{
    return at_least_1(v >> level);
}

static unsigned floor_log2(size_t v)
{
    unsigned l = 0;
    while (v >>= 1)
        l++;
    return l;
}

/*
 * Sum of the levels. Width, height and (for a plain 3D array) depth halve
 * per level with a floor of 1; the depth of a layered or cubemap array is a
 * layer count and stays. Like the real driver, levels beyond a 1x1x1 level
 * are clamped away.
 */
static bool mipmap_bytes(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned levels,
                         unsigned long long *out)
{
    bool layers_in_depth = d->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP);
    size_t layers = layers_in_depth ? at_least_1(d->Depth) : 1;
    size_t depth = layers_in_depth ? 1 : at_least_1(d->Depth);
    size_t largest = d->Width;
    if (d->Height > largest)
        largest = d->Height;
    if (depth > largest)
        largest = depth;
    unsigned max_levels = floor_log2(largest) + 1;
    if (levels > max_levels)
        levels = max_levels;

    unsigned long long total = 0;
    for (unsigned l = 0; l < levels; l++) {
        unsigned long long level_bytes;
        if (!texels_bytes(halve(d->Width, l), d->Height ? halve(d->Height, l) : 1,
                          halve(depth, l), d->Format, d->NumChannels, &level_bytes) ||
            __builtin_mul_overflow(level_bytes, layers, &level_bytes) ||
            __builtin_add_overflow(total, level_bytes, &total))
            return false;
    }
    *out = total;
    return true;
}

CUresult cuMipmappedArrayCreate(CUmipmappedArray *arr, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                unsigned int levels)
{
    REQUIRE_INIT();
    if (!arr || !desc || levels == 0 || desc->Width == 0 || !valid_channels(desc->NumChannels))
        return CUDA_ERROR_INVALID_VALUE;
    if ((desc->Flags & CUDA_ARRAY3D_CUBEMAP) && !valid_cubemap(desc))
        return CUDA_ERROR_INVALID_VALUE;
    unsigned long long bytes;
    if (!mipmap_bytes(desc, levels, &bytes))
        return CUDA_ERROR_OUT_OF_MEMORY;
    uintptr_t handle;
    CUresult rc = create_array(ALLOC_MIPMAP, bytes, &handle);
    if (rc == CUDA_SUCCESS)
        *arr = (CUmipmappedArray)handle;
    return rc;
}

CUresult cuMipmappedArrayDestroy(CUmipmappedArray arr)
{
    return free_allocation((uintptr_t)arr, ALLOC_MIPMAP, CUDA_ERROR_INVALID_HANDLE);
}

/* ---- virtual memory management ------------------------------------------ */

/* Physical memory on the device named by prop->location, whatever context is
 * current (none needed). Not tied to a context, so only cuMemRelease frees it. */
CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                     const CUmemAllocationProp *prop, unsigned long long flags)
{
    REQUIRE_INIT();
    if (!handle || !prop || flags != 0 || size == 0 || size % VMM_GRANULARITY != 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
        prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    int phys = physical_of(prop->location.id);
    if (phys < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    struct fake_alloc *rec;
    pthread_mutex_lock(&g_lock);
    CUresult rc = record_allocation_locked(ALLOC_VMM, phys, NULL, size, &rec);
    pthread_mutex_unlock(&g_lock);
    if (rc == CUDA_SUCCESS)
        *handle = (CUmemGenericAllocationHandle)rec->key;
    return rc;
}

CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    return free_allocation((uintptr_t)handle, ALLOC_VMM, CUDA_ERROR_INVALID_VALUE);
}

/* ---- legacy 32-bit entry points ----------------------------------------- */

/* The real driver has not served these since 64-bit pointers arrived;
 * anything calling them is a bug the tests should see. */
CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize)
{
    (void)dptr;
    (void)bytesize;
    REQUIRE_INIT();
    return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pPitch, unsigned int width,
                         unsigned int height, unsigned int elementSize)
{
    (void)dptr;
    (void)pPitch;
    (void)width;
    (void)height;
    (void)elementSize;
    REQUIRE_INIT();
    return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuMemFree(CUdeviceptr_v1 dptr)
{
    (void)dptr;
    REQUIRE_INIT();
    return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuMemGetInfo(unsigned int *free_bytes, unsigned int *total_bytes)
{
    (void)free_bytes;
    (void)total_bytes;
    REQUIRE_INIT();
    return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice dev)
{
    (void)bytes;
    (void)dev;
    REQUIRE_INIT();
    return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuArrayCreate(CUarray *arr, const void *desc_v1)
{
    (void)arr;
    (void)desc_v1;
    REQUIRE_INIT();
    return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuArray3DCreate(CUarray *arr, const void *desc_v1)
{
    (void)arr;
    (void)desc_v1;
    REQUIRE_INIT();
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* ---- what programs are told --------------------------------------------- */

/* Free memory is global: every process sharing the state counts. */
CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes)
{
    REQUIRE_INIT();
    if (!free_bytes || !total_bytes)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUctx_st *c = ctx_current();
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    unsigned long long total = fake_config()->memory[c->physical];
    fake_free_dead_after_delay(fake_state());
    unsigned long long used = atomic_load(&fake_state()->dev[c->physical].used);
    *total_bytes = (size_t)total;
    *free_bytes = (size_t)(used < total ? total - used : 0);
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    REQUIRE_INIT();
    if (!bytes)
        return CUDA_ERROR_INVALID_VALUE;
    int phys = physical_of(dev);
    if (phys < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    *bytes = (size_t)fake_config()->memory[phys];
    return CUDA_SUCCESS;
}

/* ---- devices ------------------------------------------------------------ */

CUresult cuInit(unsigned int flags)
{
    if (flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    int me = (int)getpid();
    if (atomic_load(&g_init_pid) == me)
        return CUDA_SUCCESS;
    pthread_mutex_lock(&g_lock);
    if (atomic_load(&g_init_pid) != me) {
        if (atomic_load(&g_init_pid) != 0) {
            /* A forked child: what it inherited belongs to its parent. */
            for (int i = 0; i < FAKE_MAX_DEVICES; i++) {
                atomic_store(&g_primary[i].alive, false);
                g_primary[i].refcount = 0;
            }
            for (struct CUctx_st *c = g_created; c; c = c->next_created)
                atomic_store(&c->alive, false);
            for (size_t b = 0; b < ALLOC_BUCKETS; b++) {
                while (g_allocs[b]) {
                    struct fake_alloc *rec = g_allocs[b];
                    g_allocs[b] = rec->next;
                    destroy_record(rec, false);
                }
            }
            while (g_pools) {
                struct CUmemPoolHandle_st *p = g_pools;
                g_pools = p->next;
                free(p);
            }
            while (g_events) {
                struct CUevent_st *e = g_events;
                g_events = e->next;
                free(e);
            }
            timeline_reset(); /* the parent's work is not on this process's timeline */
        }
        parse_visible_devices();
        for (int i = 0; i < g_visible_count; i++) {
            g_primary[i].ordinal = i;
            g_primary[i].physical = g_visible[i];
            g_primary[i].primary = true;
        }
        atomic_store(&g_init_pid, me); /* publishes g_visible */
    }
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

/* Like the real driver, usable before cuInit. */
CUresult cuDriverGetVersion(int *version)
{
    if (!version)
        return CUDA_ERROR_INVALID_VALUE;
    const char *v = getenv("FAKE_CUDA_DRIVER_VERSION");
    *version = v && *v ? atoi(v) : 13000;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count)
{
    REQUIRE_INIT();
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    *count = g_visible_count;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *dev, int ordinal)
{
    REQUIRE_INIT();
    if (!dev)
        return CUDA_ERROR_INVALID_VALUE;
    if (physical_of(ordinal) < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    *dev = ordinal;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    REQUIRE_INIT();
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (physical_of(dev) < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "%s", FAKE_DEVICE_NAME); /* truncates like the driver */
    return CUDA_SUCCESS;
}

static CUresult device_uuid(CUuuid *uuid, CUdevice dev)
{
    REQUIRE_INIT();
    if (!uuid)
        return CUDA_ERROR_INVALID_VALUE;
    int phys = physical_of(dev);
    if (phys < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    fake_uuid_bytes(phys, uuid->bytes);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev)
{
    return device_uuid(uuid, dev);
}

CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev)
{
    return device_uuid(uuid, dev);
}

/* ---- errors ------------------------------------------------------------- */

static const struct {
    CUresult code;
    const char *name;
    const char *text;
} g_errors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static CUresult describe_error(CUresult error, const char **str, bool name)
{
    if (!str)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof g_errors / sizeof g_errors[0]; i++) {
        if (g_errors[i].code == error) {
            *str = name ? g_errors[i].name : g_errors[i].text;
            return CUDA_SUCCESS;
        }
    }
    *str = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult cuGetErrorName(CUresult error, const char **str)
{
    return describe_error(error, str, true);
}

CUresult cuGetErrorString(CUresult error, const char **str)
{
    return describe_error(error, str, false);
}

/* ---- launches ----------------------------------------------------------- */

enum launch_entry {
    LAUNCH_KERNEL,
    LAUNCH_KERNEL_PTSZ,
    LAUNCH_KERNEL_EX,
    LAUNCH_KERNEL_EX_PTSZ,
    LAUNCH_COOPERATIVE,
    LAUNCH_COOPERATIVE_PTSZ,
    LAUNCH_GRAPH,
    LAUNCH_GRAPH_PTSZ,
    LAUNCH_ENTRIES
};

static const char *const g_launch_names[LAUNCH_ENTRIES] = {
    [LAUNCH_KERNEL] = "cuLaunchKernel",
    [LAUNCH_KERNEL_PTSZ] = "cuLaunchKernel_ptsz",
    [LAUNCH_KERNEL_EX] = "cuLaunchKernelEx",
    [LAUNCH_KERNEL_EX_PTSZ] = "cuLaunchKernelEx_ptsz",
    [LAUNCH_COOPERATIVE] = "cuLaunchCooperativeKernel",
    [LAUNCH_COOPERATIVE_PTSZ] = "cuLaunchCooperativeKernel_ptsz",
    [LAUNCH_GRAPH] = "cuGraphLaunch",
    [LAUNCH_GRAPH_PTSZ] = "cuGraphLaunch_ptsz",
};

static _Atomic unsigned long long g_launches[LAUNCH_ENTRIES];

/* handle_ok: the function/graph (and config) argument is non-NULL;
 * bad_handle: the error to give when it is not. */
static CUresult launch(enum launch_entry entry, bool handle_ok, CUresult bad_handle)
{
    REQUIRE_INIT();
    if (!handle_ok)
        return bad_handle;
    struct CUctx_st *c = ctx_current();
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    bool graph = entry == LAUNCH_GRAPH || entry == LAUNCH_GRAPH_PTSZ;
    timeline_enqueue(c->physical, graph ? g_graph_launch_ns : g_launch_ns);
    atomic_fetch_add(&g_launches[entry], 1);
    return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                        CUstream stream, void **params, void **extra)
{
    (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shmem;
    (void)stream, (void)params, (void)extra;
    return launch(LAUNCH_KERNEL, f != NULL, CUDA_ERROR_INVALID_VALUE);
}

CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                             unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                             CUstream stream, void **params, void **extra)
{
    (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shmem;
    (void)stream, (void)params, (void)extra;
    return launch(LAUNCH_KERNEL_PTSZ, f != NULL, CUDA_ERROR_INVALID_VALUE);
}

CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
{
    (void)params, (void)extra;
    return launch(LAUNCH_KERNEL_EX, config && f, CUDA_ERROR_INVALID_VALUE);
}

CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params,
                               void **extra)
{
    (void)params, (void)extra;
    return launch(LAUNCH_KERNEL_EX_PTSZ, config && f, CUDA_ERROR_INVALID_VALUE);
}

CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                   unsigned int bx, unsigned int by, unsigned int bz,
                                   unsigned int shmem, CUstream stream, void **params)
{
    (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shmem;
    (void)stream, (void)params;
    return launch(LAUNCH_COOPERATIVE, f != NULL, CUDA_ERROR_INVALID_VALUE);
}

CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                                        unsigned int gz, unsigned int bx, unsigned int by,
                                        unsigned int bz, unsigned int shmem, CUstream stream,
                                        void **params)
{
    (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shmem;
    (void)stream, (void)params;
    return launch(LAUNCH_COOPERATIVE_PTSZ, f != NULL, CUDA_ERROR_INVALID_VALUE);
}

CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream)
{
    (void)stream;
    return launch(LAUNCH_GRAPH, exec != NULL, CUDA_ERROR_INVALID_HANDLE);
}

CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream stream)
{
    (void)stream;
    return launch(LAUNCH_GRAPH_PTSZ, exec != NULL, CUDA_ERROR_INVALID_HANDLE);
}

/* ---- cuGetProcAddress --------------------------------------------------- */

typedef void (*generic_fn)(void);

/*
 * Which export a base name resolves to, by the caller's CUDA version: the
 * variant with the highest `since` not above it, or, under
 * CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, the _ptsz variant where one
 * exists. `fn` is the export's own address (-Wl,-Bsymbolic keeps it from
 * resolving to an interposer such as an LD_PRELOADed libvgpu), so the
 * result equals what dlsym on this library gives.
 */
struct proc_entry {
    const char *base;
    generic_fn fn;
    int since;
    bool ptsz;
};

#define PROC(base, fn, since) {base, (generic_fn)&fn, since, false}
#define PROC_PTSZ(base, fn, since) {base, (generic_fn)&fn, since, true}

static const struct proc_entry g_procs[] = {
    PROC("cuInit", cuInit, 2000),
    PROC("cuDriverGetVersion", cuDriverGetVersion, 2020),
    PROC("cuGetErrorName", cuGetErrorName, 6000),
    PROC("cuGetErrorString", cuGetErrorString, 6000),
    PROC("cuGetProcAddress", cuGetProcAddress, 11030),
    PROC("cuGetProcAddress", cuGetProcAddress_v2, 12000),
    /* devices */
    PROC("cuDeviceGetCount", cuDeviceGetCount, 2000),
    PROC("cuDeviceGet", cuDeviceGet, 2000),
    PROC("cuDeviceGetName", cuDeviceGetName, 2000),
    PROC("cuDeviceGetUuid", cuDeviceGetUuid, 9020),
    PROC("cuDeviceGetUuid", cuDeviceGetUuid_v2, 11040),
    PROC("cuDeviceTotalMem", cuDeviceTotalMem, 2000),
    PROC("cuDeviceTotalMem", cuDeviceTotalMem_v2, 3020),
    /* contexts */
    PROC("cuDevicePrimaryCtxRetain", cuDevicePrimaryCtxRetain, 7000),
    PROC("cuDevicePrimaryCtxRelease", cuDevicePrimaryCtxRelease, 7000),
    PROC("cuDevicePrimaryCtxRelease", cuDevicePrimaryCtxRelease_v2, 11000),
    PROC("cuDevicePrimaryCtxReset", cuDevicePrimaryCtxReset, 7000),
    PROC("cuDevicePrimaryCtxReset", cuDevicePrimaryCtxReset_v2, 11000),
    PROC("cuCtxCreate", cuCtxCreate, 2000),
    PROC("cuCtxCreate", cuCtxCreate_v2, 3020),
    PROC("cuCtxCreate", cuCtxCreate_v3, 11040),
    PROC("cuCtxCreate", cuCtxCreate_v4, 12050),
    PROC("cuCtxDestroy", cuCtxDestroy, 2000),
    PROC("cuCtxDestroy", cuCtxDestroy_v2, 4000),
    PROC("cuCtxSetCurrent", cuCtxSetCurrent, 4000),
    PROC("cuCtxGetCurrent", cuCtxGetCurrent, 4000),
    PROC("cuCtxPushCurrent", cuCtxPushCurrent_v2, 4000),
    PROC("cuCtxPopCurrent", cuCtxPopCurrent_v2, 4000),
    PROC("cuCtxGetDevice", cuCtxGetDevice, 2000),
    PROC("cuCtxSynchronize", cuCtxSynchronize, 2000),
    /* events and streams */
    PROC("cuEventCreate", cuEventCreate, 2000),
    PROC("cuEventDestroy", cuEventDestroy_v2, 4000),
    PROC("cuEventRecord", cuEventRecord, 2000),
    PROC_PTSZ("cuEventRecord", cuEventRecord_ptsz, 7000),
    PROC("cuEventQuery", cuEventQuery, 2000),
    PROC("cuEventSynchronize", cuEventSynchronize, 2000),
    PROC("cuEventElapsedTime", cuEventElapsedTime, 2000),
    PROC("cuStreamIsCapturing", cuStreamIsCapturing, 10000),
    PROC_PTSZ("cuStreamIsCapturing", cuStreamIsCapturing_ptsz, 10000),
    /* linear memory */
    PROC("cuMemAlloc", cuMemAlloc, 2000),
    PROC("cuMemAlloc", cuMemAlloc_v2, 3020),
    PROC("cuMemAllocPitch", cuMemAllocPitch, 2000),
    PROC("cuMemAllocPitch", cuMemAllocPitch_v2, 3020),
    PROC("cuMemAllocManaged", cuMemAllocManaged, 6000),
    PROC("cuMemFree", cuMemFree, 2000),
    PROC("cuMemFree", cuMemFree_v2, 3020),
    PROC("cuMemGetInfo", cuMemGetInfo, 2000),
    PROC("cuMemGetInfo", cuMemGetInfo_v2, 3020),
    /* stream-ordered memory */
    PROC("cuMemAllocAsync", cuMemAllocAsync, 11020),
    PROC_PTSZ("cuMemAllocAsync", cuMemAllocAsync_ptsz, 11020),
    PROC("cuMemAllocFromPoolAsync", cuMemAllocFromPoolAsync, 11020),
    PROC_PTSZ("cuMemAllocFromPoolAsync", cuMemAllocFromPoolAsync_ptsz, 11020),
    PROC("cuMemFreeAsync", cuMemFreeAsync, 11020),
    PROC_PTSZ("cuMemFreeAsync", cuMemFreeAsync_ptsz, 11020),
    PROC("cuMemPoolCreate", cuMemPoolCreate, 11020),
    PROC("cuMemPoolDestroy", cuMemPoolDestroy, 11020),
    /* arrays */
    PROC("cuArrayCreate", cuArrayCreate, 2000),
    PROC("cuArrayCreate", cuArrayCreate_v2, 3020),
    PROC("cuArray3DCreate", cuArray3DCreate, 2000),
    PROC("cuArray3DCreate", cuArray3DCreate_v2, 3020),
    PROC("cuArrayDestroy", cuArrayDestroy, 2000),
    PROC("cuMipmappedArrayCreate", cuMipmappedArrayCreate, 5000),
    PROC("cuMipmappedArrayDestroy", cuMipmappedArrayDestroy, 5000),
    /* virtual memory management */
    PROC("cuMemCreate", cuMemCreate, 10020),
    PROC("cuMemRelease", cuMemRelease, 10020),
    /* launches */
    PROC("cuLaunchKernel", cuLaunchKernel, 4000),
    PROC_PTSZ("cuLaunchKernel", cuLaunchKernel_ptsz, 4000),
    PROC("cuLaunchKernelEx", cuLaunchKernelEx, 11080),
    PROC_PTSZ("cuLaunchKernelEx", cuLaunchKernelEx_ptsz, 11080),
    PROC("cuLaunchCooperativeKernel", cuLaunchCooperativeKernel, 9000),
    PROC_PTSZ("cuLaunchCooperativeKernel", cuLaunchCooperativeKernel_ptsz, 9000),
    PROC("cuGraphLaunch", cuGraphLaunch, 10000),
    PROC_PTSZ("cuGraphLaunch", cuGraphLaunch_ptsz, 10000),
};

#define N_PROCS (sizeof g_procs / sizeof g_procs[0])

static bool has_ptsz_variant(const char *base)
{
    for (size_t i = 0; i < N_PROCS; i++)
        if (g_procs[i].ptsz && strcmp(g_procs[i].base, base) == 0)
            return true;
    return false;
}

/* Like the real driver, usable before cuInit (cudart fetches cuInit itself
 * through it). */
static CUresult get_proc_address(const char *symbol, void **pfn, int cudaVersion,
                                 cuuint64_t flags, CUdriverProcAddressQueryResult *status)
{
    CUdriverProcAddressQueryResult result = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    CUresult rc = CUDA_ERROR_NOT_FOUND;
    const struct proc_entry *best = NULL;

    if (pfn)
        *pfn = NULL;
    if (!symbol || !pfn ||
        (flags & ~(cuuint64_t)(CU_GET_PROC_ADDRESS_LEGACY_STREAM |
                               CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM))) {
        rc = CUDA_ERROR_INVALID_VALUE;
        goto out;
    }
    bool want_ptsz =
        (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && has_ptsz_variant(symbol);
    for (size_t i = 0; i < N_PROCS; i++) {
        const struct proc_entry *e = &g_procs[i];
        if (strcmp(e->base, symbol) != 0)
            continue;
        result = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT; /* the name exists */
        if (e->ptsz == want_ptsz && e->since <= cudaVersion && (!best || e->since > best->since))
            best = e;
    }
    if (best) {
        *pfn = (void *)best->fn;
        result = CU_GET_PROC_ADDRESS_SUCCESS;
        rc = CUDA_SUCCESS;
    }
out:
    if (status)
        *status = result;
    return rc;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    return get_proc_address(symbol, pfn, cudaVersion, flags, NULL);
}

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *symbolStatus)
{
    return get_proc_address(symbol, pfn, cudaVersion, flags, symbolStatus);
}

/* ---- test control ------------------------------------------------------- */

unsigned long long fake_cuda_device_used(int physical)
{
    return fake_valid_physical(physical) ? atomic_load(&fake_state()->dev[physical].used) : 0;
}

unsigned long long fake_cuda_high_water(int physical)
{
    return fake_valid_physical(physical) ? atomic_load(&fake_state()->dev[physical].high_water)
                                         : 0;
}

void fake_cuda_reset_high_water(int physical)
{
    if (!fake_valid_physical(physical))
        return;
    struct fake_device_counters *d = &fake_state()->dev[physical];
    atomic_store(&d->high_water, atomic_load(&d->used));
}

unsigned long long fake_cuda_launch_count(void)
{
    unsigned long long total = 0;
    for (int i = 0; i < LAUNCH_ENTRIES; i++)
        total += atomic_load(&g_launches[i]);
    return total;
}

unsigned long long fake_cuda_launch_count_by_name(const char *entry_point)
{
    for (int i = 0; entry_point && i < LAUNCH_ENTRIES; i++)
        if (strcmp(g_launch_names[i], entry_point) == 0)
            return atomic_load(&g_launches[i]);
    return 0;
}

unsigned long long fake_cuda_busy_ns(int physical)
{
    if (!initialized() || !fake_valid_physical(physical))
        return 0;
    pthread_mutex_lock(&g_timeline_lock);
    unsigned long long v = g_timeline[physical].enqueued;
    pthread_mutex_unlock(&g_timeline_lock);
    return v;
}

unsigned long long fake_cuda_busy_until(int physical)
{
    if (!initialized() || !fake_valid_physical(physical))
        return 0;
    pthread_mutex_lock(&g_timeline_lock);
    unsigned long long v = g_timeline[physical].busy_until;
    pthread_mutex_unlock(&g_timeline_lock);
    return v;
}

int fake_cuda_physical_of_ordinal(int ordinal)
{
    return initialized() ? physical_of(ordinal) : -1;
}

unsigned long long fake_cuda_reap_dead(void)
{
    return fake_reap_dead(fake_state());
}

int fake_cuda_charge_pid(int physical, int pid, unsigned long long bytes)
{
    return fake_charge_for_pid(fake_state(), physical, pid, bytes) ? 0 : -1;
}

struct fake_shared *fake_cuda_private_state(void)
{
    return fake_config()->state_path ? NULL : fake_state();
}

/* Read the configuration (and map the state file) at load, so that a bad
 * FAKE_CUDA_STATE stops the program before it does anything. */
__attribute__((constructor)) static void fake_cuda_load(void)
{
    fake_state();
    read_timeline_config();
}

/* A process that exits gives its device memory back, as with the real
 * driver. Processes that die without running destructors are handled by
 * fake_cuda_reap_dead() and by slot reuse. */
__attribute__((destructor)) static void fake_cuda_unload(void)
{
    fake_release_own_usage(fake_state());
}
