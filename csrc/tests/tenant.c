/*
 * A tenant of the fake GPU for the arbiter tests (tests/test_arbiter_tenants.py)
 * and benchmarks: runs under libvgpu (LD_PRELOAD) over the fake driver, whose
 * launches each keep the process's fake GPU busy for FAKE_CUDA_LAUNCH_NS.
 *
 *   tenant busy START END STOP   launches back to back from now until STOP
 *                                (CLOCK_MONOTONIC seconds, fractional), and
 *                                prints "busy <percent>" for the GPU time its
 *                                work took inside [START, END]
 *   tenant bursts N THINK_MS K   N bursts of K launches then cuCtxSynchronize,
 *                                THINK_MS apart, and prints
 *                                "bursts p50 <ms> p99 <ms> max <ms>"
 *
 * Every process has a GPU timeline of its own in the fake, so each tenant's
 * busy time is its own; exclusive turns are what keep their sum under 100%.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fake_abi_ext.h"
#include "fake_control.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000000u), (long)(t % 1000000000u)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static int launch(void)
{
    static int dummy;
    CUresult r = cuLaunchKernel((CUfunction)&dummy, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "tenant: launch failed: %d\n", (int)r);
        exit(3);
    }
    return 0;
}

/* GPU time of this process's work that was done by `t`. */
static uint64_t done_by(uint64_t t)
{
    uint64_t busy = fake_cuda_busy_ns(0), until = fake_cuda_busy_until(0);
    return until > t ? busy - (until - t) : busy;
}

static uint64_t seconds(const char *s) { return (uint64_t)(strtod(s, NULL) * 1e9); }

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    CUcontext ctx;
    if (argc != 5 || cuInit(0) != CUDA_SUCCESS || cuDevicePrimaryCtxRetain(&ctx, 0) != CUDA_SUCCESS ||
        cuCtxSetCurrent(ctx) != CUDA_SUCCESS) {
        fprintf(stderr, "usage: tenant busy START END STOP | tenant bursts N THINK_MS K (and a fake GPU)\n");
        return 2;
    }
    if (strcmp(argv[1], "busy") == 0) {
        uint64_t start = seconds(argv[2]), end = seconds(argv[3]), stop = seconds(argv[4]);
        uint64_t at_start = 0, at_end = 0;
        int started = 0, ended = 0;
        for (uint64_t now; (now = now_ns()) < stop;) {
            if (!started && now >= start)
                at_start = done_by(now), started = 1;
            if (!ended && now >= end)
                at_end = done_by(now), ended = 1;
            launch();
        }
        cuCtxSynchronize();
        if (!started || !ended) {
            fprintf(stderr, "tenant: the window was missed\n");
            return 3;
        }
        printf("busy %.2f\n", 100.0 * (double)(at_end - at_start) / (double)(end - start));
        return 0;
    }
    if (strcmp(argv[1], "bursts") == 0) {
        int n = atoi(argv[2]), k = atoi(argv[4]);
        uint64_t think = (uint64_t)atoi(argv[3]) * 1000000u;
        if (n < 1 || k < 1)
            return 2;
        uint64_t *lat = calloc((size_t)n, sizeof *lat);
        for (int i = 0; i < n; i++) {
            sleep_until(now_ns() + think);
            uint64_t t0 = now_ns();
            for (int j = 0; j < k; j++)
                launch();
            cuCtxSynchronize();
            lat[i] = now_ns() - t0;
            if (getenv("TENANT_VERBOSE"))
                fprintf(stderr, "burst %d: %.3f ms\n", i, (double)lat[i] / 1e6);
        }
        qsort(lat, (size_t)n, sizeof *lat, cmp);
        printf("bursts p50 %.3f p99 %.3f max %.3f\n", (double)lat[n / 2] / 1e6,
               (double)lat[(size_t)((n - 1) * 0.99)] / 1e6, (double)lat[n - 1] / 1e6);
        free(lat);
        return 0;
    }
    return 2;
}
