/* Configuration and cross-process usage counters; see fake_state.h. */
#define _GNU_SOURCE
#include "fake_state.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sched.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The state is shared between processes through plain memory, which is only
 * sound if these atomics are implemented without locks. */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "int atomics must be lock-free");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "long long atomics must be lock-free");

/* ---- configuration ------------------------------------------------------ */

static struct fake_config g_config;
static pthread_once_t g_config_once = PTHREAD_ONCE_INIT;

static void warn_env(const char *var, const char *value, const char *what)
{
    fprintf(stderr, "fake cuda: ignoring %s=\"%s\": %s\n", var, value, what);
}

/* Parse "<digits>[k|m|g|t]" (binary multiples) from *p up to a ',' or the
 * end, advancing *p. Returns false on anything else or on overflow. */
static bool parse_size(const char **p, unsigned long long *out)
{
    const char *s = *p;
    unsigned long long v = 0;
    if (!isdigit((unsigned char)*s))
        return false;
    while (isdigit((unsigned char)*s)) {
        unsigned digit = (unsigned)(*s - '0');
        if (v > (ULLONG_MAX - digit) / 10)
            return false;
        v = v * 10 + digit;
        s++;
    }
    unsigned shift = 0;
    switch (tolower((unsigned char)*s)) {
    case 'k': shift = 10; break;
    case 'm': shift = 20; break;
    case 'g': shift = 30; break;
    case 't': shift = 40; break;
    default: break;
    }
    if (shift) {
        if (v > (ULLONG_MAX >> shift))
            return false;
        v <<= shift;
        s++;
    }
    if (*s != '\0' && *s != ',')
        return false;
    *p = s;
    *out = v;
    return true;
}

static void parse_device_count(struct fake_config *c)
{
    const char *v = getenv("FAKE_CUDA_DEVICE_COUNT");
    c->device_count = 1;
    if (!v)
        return;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < 0) {
        warn_env("FAKE_CUDA_DEVICE_COUNT", v, "not a count");
        return;
    }
    if (n > FAKE_MAX_DEVICES) {
        warn_env("FAKE_CUDA_DEVICE_COUNT", v, "more than 8 devices, using 8");
        n = FAKE_MAX_DEVICES;
    }
    c->device_count = (int)n;
}

/* "SIZE" or "SIZE,SIZE,...": one size per device; devices past the end of
 * the list get the last size listed. */
static void parse_device_memory(struct fake_config *c)
{
    for (int i = 0; i < FAKE_MAX_DEVICES; i++)
        c->memory[i] = FAKE_DEFAULT_DEVICE_MEMORY;
    const char *v = getenv("FAKE_CUDA_DEVICE_MEMORY");
    if (!v)
        return;
    unsigned long long sizes[FAKE_MAX_DEVICES];
    int n = 0;
    const char *p = v;
    for (;;) {
        unsigned long long size;
        if (!parse_size(&p, &size)) {
            warn_env("FAKE_CUDA_DEVICE_MEMORY", v, "expected sizes like 85899345920 or 80g, comma separated");
            return;
        }
        if (n < FAKE_MAX_DEVICES)
            sizes[n++] = size;
        if (*p == '\0')
            break;
        p++; /* the ',' */
    }
    for (int i = 0; i < FAKE_MAX_DEVICES; i++)
        c->memory[i] = sizes[i < n ? i : n - 1];
}

static void parse_context_size(struct fake_config *c)
{
    const char *v = getenv("FAKE_CUDA_CONTEXT_SIZE");
    c->context_size = FAKE_DEFAULT_CONTEXT_SIZE;
    if (!v)
        return;
    const char *p = v;
    unsigned long long size;
    if (!parse_size(&p, &size) || *p) {
        warn_env("FAKE_CUDA_CONTEXT_SIZE", v, "not a size");
        return;
    }
    c->context_size = size;
}

static void parse_dead_free(struct fake_config *c)
{
    const char *v = getenv("FAKE_CUDA_DEAD_FREE_MS");
    c->dead_free_ns = 0;
    if (!v)
        return;
    char *end;
    errno = 0;
    long ms = strtol(v, &end, 10);
    if (errno || end == v || *end || ms < 1 || ms > 60000) {
        warn_env("FAKE_CUDA_DEAD_FREE_MS", v, "expected milliseconds from 1 to 60000");
        return;
    }
    c->dead_free_ns = (unsigned long long)ms * 1000000ull;
}

static void load_config(void)
{
    parse_device_count(&g_config);
    parse_device_memory(&g_config);
    parse_context_size(&g_config);
    parse_dead_free(&g_config);
    const char *path = getenv("FAKE_CUDA_STATE");
    if (path && *path) {
        /* Keep a copy: the program may change its environment later. */
        g_config.state_path = strdup(path);
        if (!g_config.state_path) {
            fprintf(stderr, "fake cuda: out of memory reading FAKE_CUDA_STATE\n");
            abort();
        }
    }
}

const struct fake_config *fake_config(void)
{
    pthread_once(&g_config_once, load_config);
    return &g_config;
}

bool fake_valid_physical(int physical)
{
    return physical >= 0 && physical < fake_config()->device_count;
}

/* ---- the state block ---------------------------------------------------- */

static struct fake_shared g_private_state; /* used when FAKE_CUDA_STATE is unset */
static struct fake_shared *g_state;
static pthread_once_t g_state_once = PTHREAD_ONCE_INIT;

static _Noreturn void state_file_failure(const char *path, const char *step)
{
    /* A silent fallback to private state would make cross-process tests fail
     * in confusing ways; stop loudly instead. */
    fprintf(stderr, "fake cuda: FAKE_CUDA_STATE=%s: %s: %s\n", path, step, strerror(errno));
    abort();
}

/*
 * Open or create the state file and map it. Any number of processes may do
 * this at once: O_CREAT without O_EXCL lets all of them open the same file,
 * and the file is only ever grown to the fixed size (never shrunk, never
 * written), so a late ftruncate cannot wipe counters an earlier process has
 * already updated; the bytes it adds are zeros, i.e. "empty".
 */
static struct fake_shared *map_state_file(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        state_file_failure(path, "open");
    struct stat st;
    if (fstat(fd, &st) != 0)
        state_file_failure(path, "fstat");
    if ((size_t)st.st_size < sizeof(struct fake_shared) &&
        ftruncate(fd, (off_t)sizeof(struct fake_shared)) != 0)
        state_file_failure(path, "ftruncate");
    void *m = mmap(NULL, sizeof(struct fake_shared), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        state_file_failure(path, "mmap");
    close(fd); /* the mapping keeps the file referenced */
    return m;
}

static void load_state(void)
{
    const char *path = fake_config()->state_path;
    g_state = path ? map_state_file(path) : &g_private_state;
}

struct fake_shared *fake_state(void)
{
    pthread_once(&g_state_once, load_state);
    return g_state;
}

/* ---- UUIDs -------------------------------------------------------------- */

void fake_uuid_bytes(int physical, unsigned char out[16])
{
    static const unsigned char pattern[16] = {0xfa, 0xce, 0x00, 0x00, 0x10, 0x20, 0x30, 0x40,
                                              0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0};
    memcpy(out, pattern, sizeof pattern);
    out[3] = (unsigned char)physical;
}

void fake_uuid_string(int physical, char out[FAKE_UUID_STRLEN + 1])
{
    unsigned char b[16];
    fake_uuid_bytes(physical, b);
    snprintf(out, FAKE_UUID_STRLEN + 1,
             "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}

/* ---- the lock over every change of usage (fake_state.h) ------------------ */

static unsigned long long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* Stores a journaled change: the device's total and the entry's usage. */
static void apply(struct fake_shared *s, const struct fake_journal *j)
{
    atomic_store(&s->dev[j->device].used, j->device_used);
    if (j->entry >= 0)
        atomic_store(&s->proc[j->entry].used[j->device], j->entry_used);
}

static void state_lock(struct fake_shared *s)
{
    if (atomic_load(&s->lock_state) != 2) {
        int unset = 0;
        if (atomic_compare_exchange_strong(&s->lock_state, &unset, 1)) {
            pthread_mutexattr_t attr;
            pthread_mutexattr_init(&attr);
            pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
            pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
            pthread_mutex_init(&s->lock, &attr);
            pthread_mutexattr_destroy(&attr);
            atomic_store(&s->lock_state, 2);
        } else {
            while (atomic_load(&s->lock_state) != 2)
                sched_yield();
        }
    }
    if (pthread_mutex_lock(&s->lock) == EOWNERDEAD) {
        /* Its holder died in the middle of a change: finish it. */
        if (atomic_load(&s->journal.pending))
            apply(s, &s->journal);
        atomic_store(&s->journal.pending, 0);
        pthread_mutex_consistent(&s->lock);
    }
}

static void state_unlock(struct fake_shared *s) { pthread_mutex_unlock(&s->lock); }

/* Moves bytes (+ or -) between nothing and a device, through an entry (or
 * none, -1), journaled. The caller holds the lock and has checked the sums. */
static void change(struct fake_shared *s, int entry, int device, unsigned long long device_used,
                   unsigned long long entry_used)
{
    struct fake_journal *j = &s->journal;
    j->entry = entry;
    j->device = device;
    j->device_used = device_used;
    j->entry_used = entry_used;
    atomic_store(&j->pending, 1);
    apply(s, j);
    atomic_store(&j->pending, 0);
}

/* ---- per-process table -------------------------------------------------- */

bool fake_pid_alive(int pid)
{
    /* EPERM means it exists but belongs to someone else. Zombies count as
     * alive until reaped; by then a normal exit has released its usage. */
    return kill(pid, 0) == 0 || errno != ESRCH;
}

static unsigned long long sub_floor(unsigned long long a, unsigned long long b) { return a > b ? a - b : 0; }

/* Move an entry's usage back out of the device counters. The caller holds
 * the lock and owns the entry exclusively (its pid field is -1 or the
 * caller's own pid). */
static unsigned long long drain_entry(struct fake_shared *s, struct fake_proc_entry *e)
{
    unsigned long long total = 0;
    int index = (int)(e - s->proc);
    for (int d = 0; d < FAKE_MAX_DEVICES; d++) {
        unsigned long long bytes = atomic_load(&e->used[d]);
        if (bytes) {
            change(s, index, d, sub_floor(atomic_load(&s->dev[d].used), bytes), 0);
            total += bytes;
        }
    }
    atomic_store(&e->dead_since_ns, 0);
    return total;
}

/* Which entry this process owns, cached. The cache is keyed by pid so that a
 * forked child looks up (and claims) its own entry. */
static pthread_mutex_t g_slot_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_slot_pid;
static int g_slot = -1;

/* Bytes this process charged while the table was full, so without an entry.
 * Guarded by g_slot_lock; g_unlisted_pid keeps a forked child from
 * inheriting its parent's. */
static int g_unlisted_pid;
static unsigned long long g_unlisted[FAKE_MAX_DEVICES];

static unsigned long long *unlisted_locked(int physical)
{
    int me = (int)getpid();
    if (g_unlisted_pid != me) {
        memset(g_unlisted, 0, sizeof g_unlisted);
        g_unlisted_pid = me;
    }
    return &g_unlisted[physical];
}

static int find_own_slot(struct fake_shared *s, int me)
{
    for (int i = 0; i < FAKE_MAX_PROCS; i++)
        if (atomic_load(&s->proc[i].pid) == me)
            return i;
    return -1;
}

static int claim_slot(struct fake_shared *s, int me)
{
    /* Free entries first, so that a dead process's usage stays visible (and
     * reapable) for as long as there is room. */
    for (int i = 0; i < FAKE_MAX_PROCS; i++) {
        int expected = 0;
        if (atomic_compare_exchange_strong(&s->proc[i].pid, &expected, me))
            return i;
    }
    for (int i = 0; i < FAKE_MAX_PROCS; i++) {
        int pid = atomic_load(&s->proc[i].pid);
        if (pid > 0 && !fake_pid_alive(pid) &&
            atomic_compare_exchange_strong(&s->proc[i].pid, &pid, me)) {
            drain_entry(s, &s->proc[i]);
            return i;
        }
    }
    return -1;
}

/* This process's entry, claimed on first use if claim is set. NULL when the
 * table is full: usage is then still charged to the device, just not listed
 * per process. */
static struct fake_proc_entry *own_entry(struct fake_shared *s, bool claim)
{
    int me = (int)getpid();
    pthread_mutex_lock(&g_slot_lock);
    if (g_slot_pid != me || g_slot < 0 || atomic_load(&s->proc[g_slot].pid) != me) {
        g_slot = find_own_slot(s, me);
        if (g_slot < 0 && claim)
            g_slot = claim_slot(s, me);
        g_slot_pid = me;
    }
    int slot = g_slot;
    pthread_mutex_unlock(&g_slot_lock);
    return slot < 0 ? NULL : &s->proc[slot];
}

/* ---- charging ----------------------------------------------------------- */

static void raise_high_water(struct fake_device_counters *d, unsigned long long value)
{
    unsigned long long hw = atomic_load(&d->high_water);
    while (hw < value && !atomic_compare_exchange_weak(&d->high_water, &hw, value)) {
    }
}

static void free_due_locked(struct fake_shared *s);

static bool charge_locked(struct fake_shared *s, int physical, unsigned long long bytes)
{
    unsigned long long capacity = fake_config()->memory[physical];
    unsigned long long used = atomic_load(&s->dev[physical].used);
    if (bytes > capacity || used > capacity - bytes)
        return false;
    struct fake_proc_entry *e = own_entry(s, true);
    if (e) {
        change(s, (int)(e - s->proc), physical, used + bytes, atomic_load(&e->used[physical]) + bytes);
    } else {
        change(s, -1, physical, used + bytes, 0);
        pthread_mutex_lock(&g_slot_lock);
        *unlisted_locked(physical) += bytes;
        pthread_mutex_unlock(&g_slot_lock);
    }
    raise_high_water(&s->dev[physical], used + bytes);
    return true;
}

/* Charges bytes to another process's entry (claimed for it if it has none),
 * as if that process had allocated them: how tests make the driver list a
 * process that never loaded the fake, such as one that escaped libvgpu. */
bool fake_charge_for_pid(struct fake_shared *s, int physical, int pid, unsigned long long bytes)
{
    if (!fake_valid_physical(physical) || pid <= 0)
        return false;
    state_lock(s);
    unsigned long long capacity = fake_config()->memory[physical];
    unsigned long long used = atomic_load(&s->dev[physical].used);
    int slot = find_own_slot(s, pid);
    if (slot < 0)
        slot = claim_slot(s, pid);
    bool ok = slot >= 0 && bytes <= capacity && used <= capacity - bytes;
    if (ok) {
        change(s, slot, physical, used + bytes, atomic_load(&s->proc[slot].used[physical]) + bytes);
        raise_high_water(&s->dev[physical], used + bytes);
    }
    state_unlock(s);
    return ok;
}

bool fake_charge(struct fake_shared *s, int physical, unsigned long long bytes)
{
    if (!fake_valid_physical(physical))
        return false;
    state_lock(s);
    /* The driver frees dead processes' memory on its own schedule, whoever
     * asks: at every charge, it is done for those due. */
    if (fake_config()->dead_free_ns)
        free_due_locked(s);
    bool ok = charge_locked(s, physical, bytes);
    state_unlock(s);
    return ok;
}

/*
 * A process never gives back more than it has charged: the bytes come off its
 * own entry (then its unlisted bytes) first, and only what was found there
 * comes off the device. So a free that runs after the process's usage was
 * released at exit (say, from another library's destructor) or after its
 * entry was reaped changes nothing, instead of eating other processes' usage.
 */
void fake_uncharge(struct fake_shared *s, int physical, unsigned long long bytes)
{
    if (!fake_valid_physical(physical))
        return;
    state_lock(s);
    struct fake_proc_entry *e = own_entry(s, false);
    unsigned long long used = atomic_load(&s->dev[physical].used);
    if (e) {
        unsigned long long mine = atomic_load(&e->used[physical]);
        unsigned long long take = mine < bytes ? mine : bytes;
        change(s, (int)(e - s->proc), physical, sub_floor(used, take), mine - take);
        bytes -= take;
        used = atomic_load(&s->dev[physical].used);
    }
    if (bytes) {
        pthread_mutex_lock(&g_slot_lock);
        unsigned long long *u = unlisted_locked(physical);
        unsigned long long more = *u < bytes ? *u : bytes;
        *u -= more;
        pthread_mutex_unlock(&g_slot_lock);
        if (more)
            change(s, -1, physical, sub_floor(used, more), 0);
    }
    state_unlock(s);
}

void fake_release_own_usage(struct fake_shared *s)
{
    state_lock(s);
    pthread_mutex_lock(&g_slot_lock);
    for (int d = 0; d < FAKE_MAX_DEVICES; d++) {
        unsigned long long *u = unlisted_locked(d);
        if (*u)
            change(s, -1, d, sub_floor(atomic_load(&s->dev[d].used), *u), 0);
        *u = 0;
    }
    pthread_mutex_unlock(&g_slot_lock);
    struct fake_proc_entry *e = own_entry(s, false);
    if (e) {
        drain_entry(s, e);
        int me = (int)getpid();
        atomic_compare_exchange_strong(&e->pid, &me, 0);
    }
    state_unlock(s);
}

/* Frees a dead entry: -1 marks it as ours while draining, so that a
 * process claiming free entries cannot take it half-drained. */
static unsigned long long free_dead_entry(struct fake_shared *s, struct fake_proc_entry *e, int pid)
{
    if (!atomic_compare_exchange_strong(&e->pid, &pid, -1))
        return 0;
    unsigned long long bytes = drain_entry(s, e);
    atomic_store(&e->pid, 0);
    return bytes;
}

unsigned long long fake_reap_dead(struct fake_shared *s)
{
    unsigned long long total = 0;
    state_lock(s);
    for (int i = 0; i < FAKE_MAX_PROCS; i++) {
        struct fake_proc_entry *e = &s->proc[i];
        int pid = atomic_load(&e->pid);
        if (pid > 0 && !fake_pid_alive(pid))
            total += free_dead_entry(s, e, pid);
    }
    state_unlock(s);
    return total;
}

static void free_due_locked(struct fake_shared *s)
{
    unsigned long long delay = fake_config()->dead_free_ns;
    unsigned long long now = mono_ns();
    for (int i = 0; i < FAKE_MAX_PROCS; i++) {
        struct fake_proc_entry *e = &s->proc[i];
        int pid = atomic_load(&e->pid);
        if (pid <= 0 || fake_pid_alive(pid))
            continue;
        unsigned long long since = atomic_load(&e->dead_since_ns);
        if (since == 0)
            atomic_store(&e->dead_since_ns, now);
        else if (now - since >= delay)
            free_dead_entry(s, e, pid);
    }
}

void fake_free_dead_after_delay(struct fake_shared *s)
{
    if (!fake_config()->dead_free_ns)
        return;
    state_lock(s);
    free_due_locked(s);
    state_unlock(s);
}
