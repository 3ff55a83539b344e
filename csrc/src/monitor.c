#include "monitor.h"

#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "limiter.h"
#include "log.h"
#include "real_driver.h"
#include "region.h"
#include "runtime.h"

#define PERIOD_NS 500000000ull

static int g_started;

static uint64_t clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The compute share of an uncapped process, which the pacer does not time:
 * NVML's per-process SM utilization since the last look, in 1/10000. -1
 * when NVML cannot say (no NVML, or this process is in a PID namespace NVML
 * does not see into, which reads as no samples: 0). */
struct nvml_view {
    int state; /* 0 not tried, 1 usable, -1 not usable */
    nvmlDevice_t dev;
    unsigned long long last_seen_us;
};

static int64_t nvml_share(int entry, struct nvml_view *v)
{
    static nvmlProcessUtilizationSample_t samples[256];
    if (v->state == 0) {
        unsigned char uuid[16];
        vgpu_region_device_uuid(vgpu_rt.region.map, entry, uuid);
        v->state = vgpu_real_nvml_device(uuid, &v->dev) == 0 && vgpu_real.nvmlDeviceGetProcessUtilization ? 1 : -1;
    }
    if (v->state < 0)
        return -1;
    unsigned int count = 256;
    nvmlReturn_t r = vgpu_real.nvmlDeviceGetProcessUtilization(v->dev, samples, &count, v->last_seen_us);
    if (r == NVML_ERROR_NOT_FOUND)
        return 0; /* no process used the GPU since the last look */
    if (r != NVML_SUCCESS)
        return -1;
    uint64_t sum = 0, n = 0;
    for (unsigned int i = 0; i < count && i < 256; i++) {
        if (samples[i].timeStamp > v->last_seen_us)
            v->last_seen_us = samples[i].timeStamp;
        if (samples[i].pid == (unsigned int)getpid()) {
            sum += samples[i].smUtil;
            n++;
        }
    }
    return n ? (int64_t)(sum * 100 / n) : 0;
}

static void *run(void *arg)
{
    (void)arg;
    uint64_t last_busy[VGPU_MAX_DEVICES] = {0};
    struct nvml_view views[VGPU_MAX_DEVICES] = {{0}};
    uint64_t last = clock_ns(CLOCK_MONOTONIC);
    for (;;) {
        struct timespec pause = {0, (long)PERIOD_NS};
        nanosleep(&pause, NULL);
        if (!vgpu_is_ready())
            continue;
        struct vgpu_proc *me = &vgpu_rt.region.map->procs[vgpu_rt.region.slot];
        uint64_t now = clock_ns(CLOCK_MONOTONIC);
        uint64_t elapsed = now > last ? now - last : 1;
        for (int e = 0; e < VGPU_MAX_DEVICES; e++) {
            atomic_store_explicit(&me->launches[e], vgpu_limiter_launches(e), memory_order_relaxed);
            uint64_t busy = vgpu_limiter_busy_ns(e);
            int64_t share = (int64_t)((busy - last_busy[e]) * 10000u / elapsed);
            if (!vgpu_limiter_capped(e) && vgpu_limiter_active(e))
                share = nvml_share(e, &views[e]);
            if (share >= 0)
                atomic_store_explicit(&me->sm_share[e], (uint32_t)(share > 10000 ? 10000 : share),
                                      memory_order_relaxed);
            last_busy[e] = busy;
            vgpu_limiter_sample_power(e, now);
        }
        atomic_store_explicit(&me->updated_ns, clock_ns(CLOCK_REALTIME), memory_order_release);
        last = now;
    }
    return NULL;
}

void vgpu_monitor_start(void)
{
    if (g_started)
        return;
    g_started = 1;
    /* Signals are the program's business: this thread takes none. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* NVML runs on this thread (initialisation, process queries): give it a
     * normal stack; untouched pages cost nothing. */
    pthread_attr_setstacksize(&attr, 2 * 1024 * 1024);
    if (pthread_create(&thread, &attr, run, NULL) != 0)
        VGPU_WARN("cannot start the statistics thread; usage in the region will not be refreshed");
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

void vgpu_monitor_reset_after_fork(void) { g_started = 0; }
