/*
 * Cost of one cuMemAlloc_v2 + cuMemFree_v2 pair, the way a program linked to
 * the driver pays it. Run it twice, with and without libvgpu preloaded
 * (bench/alloc_free.sh does both in one go), and compare.
 *
 *   alloc_free [BYTES] [PAIRS] [REPEATS]
 * Prints the median nanoseconds per pair over REPEATS runs of PAIRS pairs.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "driver_abi.h"

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define NEED(call)                                                                                \
    do {                                                                                          \
        CUresult r_ = (call);                                                                     \
        if (r_ != CUDA_SUCCESS) {                                                                 \
            fprintf(stderr, "%s failed: %d\n", #call, r_);                                        \
            return 1;                                                                             \
        }                                                                                         \
    } while (0)

int main(int argc, char **argv)
{
    size_t bytes = argc > 1 ? strtoull(argv[1], NULL, 10) : (1u << 20);
    int pairs = argc > 2 ? atoi(argv[2]) : 20000;
    int repeats = argc > 3 ? atoi(argv[3]) : 7;
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
    if (!cuda) {
        fprintf(stderr, "no libcuda.so.1: %s\n", dlerror());
        return 1;
    }
    cu_fn_cuInit init = (cu_fn_cuInit)dlsym(cuda, "cuInit");
    cu_fn_cuDevicePrimaryCtxRetain retain = (cu_fn_cuDevicePrimaryCtxRetain)dlsym(cuda, "cuDevicePrimaryCtxRetain");
    CUresult (*set_current)(CUcontext) = (CUresult(*)(CUcontext))dlsym(cuda, "cuCtxSetCurrent");
    cu_fn_cuMemAlloc_v2 alloc = (cu_fn_cuMemAlloc_v2)dlsym(cuda, "cuMemAlloc_v2");
    cu_fn_cuMemFree_v2 release = (cu_fn_cuMemFree_v2)dlsym(cuda, "cuMemFree_v2");
    CUcontext ctx;
    NEED(init(0));
    NEED(retain(&ctx, 0));
    NEED(set_current(ctx));
    double *runs = calloc((size_t)repeats, sizeof *runs);
    CUdeviceptr p;
    for (int w = 0; w < 1000; w++) {
        NEED(alloc(&p, bytes));
        NEED(release(p));
    }
    for (int r = 0; r < repeats; r++) {
        double t0 = now_ns();
        for (int i = 0; i < pairs; i++) {
            NEED(alloc(&p, bytes));
            NEED(release(p));
        }
        runs[r] = (now_ns() - t0) / pairs;
    }
    qsort(runs, (size_t)repeats, sizeof *runs, cmp);
    printf("%.1f\n", runs[repeats / 2]);
    return 0;
}
