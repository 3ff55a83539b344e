/*
 * A dead process's share returns to its slice only once the driver has
 * freed its memory, and promptly (vgpu_region.h, "Reclaim only what the GPU
 * has really freed").
 *
 * Run as: LD_PRELOAD=libvgpu.so test_reclaim CASE, over the fake driver with
 * FAKE_CUDA_DEAD_FREE_MS set (the fake frees a dead process's memory that
 * long after it first finds it dead, and lists it in NVML until then), and a
 * 1 GiB slice. tests/test_reclaim.py sets all of it. The fake's high-water
 * mark is what the "GPU" really held at its peak.
 *
 *   kill_and_take     A holds 700 MiB and is SIGKILLed; B asks for 700 MiB
 *                     every millisecond until it gets them.
 *   kill_and_take_unknown_pid
 *                     the same, with the dead slot's driver pid unknown (as
 *                     in a PID namespace): the reclaim waits out the grace.
 *   stress            STRESS_PROCS processes make at least STRESS_OPS random
 *                     allocations and frees each, while the parent SIGKILLs
 *                     and restarts them (at least STRESS_KILLS kills).
 */
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "fake_abi_ext.h"
#include "fake_control.h"
#include "vgpu_region.h"

#define LIMIT GiB

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static CUresult open_device(void)
{
    CUresult r = cuInit(0);
    if (r != CUDA_SUCCESS)
        return r;
    CUcontext ctx = NULL;
    if ((r = cuDevicePrimaryCtxRetain(&ctx, 0)) != CUDA_SUCCESS)
        return r;
    return cuCtxSetCurrent(ctx);
}

static struct vgpu_region *map_region(void)
{
    const char *path = getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    CHECK(path, "the test needs CUDA_DEVICE_MEMORY_SHARED_CACHE");
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0, "open %s", path);
    void *map = mmap(NULL, VGPU_REGION_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(map != MAP_FAILED, "mmap");
    close(fd);
    return map;
}

static uint64_t region_used(struct vgpu_region *r)
{
    uint64_t sum = 0;
    for (uint32_t i = 0; i < atomic_load(&r->header.proc_high); i++)
        sum += atomic_load(&r->procs[i].used[0]);
    return sum;
}

/* ---- one kill, one taker ------------------------------------------------- */

static void kill_and_take(int forget_driver_pid)
{
    int ready[2];
    CHECK(pipe(ready) == 0, "pipe");
    pid_t holder = fork();
    CHECK(holder >= 0, "fork");
    if (holder == 0) {
        CUdeviceptr p;
        CHECK_CU(open_device(), CUDA_SUCCESS);
        CHECK_CU(cuMemAlloc_v2(&p, 700 * MiB), CUDA_SUCCESS);
        CHECK(write(ready[1], "k", 1) == 1, "write");
        for (;;)
            pause();
    }
    char byte;
    CHECK(read(ready[0], &byte, 1) == 1, "the holder did not get its memory");
    CHECK_CU(open_device(), CUDA_SUCCESS);
    CUdeviceptr p;
    CHECK_CU(cuMemAlloc_v2(&p, 700 * MiB), CUDA_ERROR_OUT_OF_MEMORY);
    fake_cuda_reset_high_water(0);
    CHECK(kill(holder, SIGKILL) == 0, "kill");
    CHECK(waitpid(holder, NULL, 0) == holder, "waitpid");
    uint64_t killed = mono_ns();
    /* The fake driver learns of a death when it is next asked about memory
     * (a real one learns at once): ask now, so that its clock for freeing
     * the dead process's memory starts at the death. */
    nvmlDevice_t dev;
    nvmlMemory_t mem;
    CHECK(nvmlInit_v2() == NVML_SUCCESS && nvmlDeviceGetHandleByIndex_v2(0, &dev) == NVML_SUCCESS &&
              nvmlDeviceGetMemoryInfo(dev, &mem) == NVML_SUCCESS,
          "NVML");
    if (forget_driver_pid) {
        struct vgpu_region *r = map_region();
        for (uint32_t i = 0; i < atomic_load(&r->header.proc_high); i++)
            if (atomic_load(&r->procs[i].pid) == holder)
                atomic_store(&r->procs[i].driver_pid, 0);
    }
    CUresult got;
    uint64_t now;
    do {
        got = cuMemAlloc_v2(&p, 700 * MiB);
        now = mono_ns();
        if (got != CUDA_SUCCESS)
            usleep(1000);
    } while (got == CUDA_ERROR_OUT_OF_MEMORY && now - killed < 5000000000ull);
    CHECK_CU(got, CUDA_SUCCESS);
    uint64_t peak = fake_cuda_high_water(0);
    printf("taken %.0f ms after the kill; the GPU's peak %llu MiB for a %llu MiB slice\n",
           (double)(now - killed) / 1e6, (unsigned long long)(peak / MiB), (unsigned long long)(LIMIT / MiB));
    CHECK(peak <= LIMIT, "the GPU held %llu bytes at once, over the slice", (unsigned long long)peak);
    CHECK(now - killed < 1000000000ull, "the share came back only %.0f ms after the kill", (double)(now - killed) / 1e6);
    CHECK_CU(cuMemFree_v2(p), CUDA_SUCCESS);
}

static void case_kill_and_take(void) { kill_and_take(0); }
static void case_kill_and_take_unknown_pid(void) { kill_and_take(1); }

/* ---- the stress ---------------------------------------------------------- */

#define MAX_PROCS 64
#define HELD 8

struct board {
    _Atomic long ops[MAX_PROCS]; /* operations done by each worker, all its lives together */
    _Atomic long refused, errors, start_failures;
    _Atomic int stop;            /* the parent has done its kills: finish and exit */
};

static long env_long(const char *name, long fallback)
{
    const char *v = getenv(name);
    return v ? strtol(v, NULL, 10) : fallback;
}

/* One life of worker i: random allocations (1..48 MiB) and frees, at most
 * HELD at once, until told to stop with its quota done. */
static _Noreturn void worker(struct board *b, int i, long quota)
{
    CUresult r;
    /* The slice may be full of the others' memory (and of the dead's, until
     * the driver frees it): a context may have to wait for room. */
    while ((r = open_device()) == CUDA_ERROR_OUT_OF_MEMORY)
        usleep(500);
    if (r != CUDA_SUCCESS) {
        atomic_fetch_add(&b->start_failures, 1);
        _exit(3);
    }
    unsigned seed = (unsigned)getpid() * 2654435761u;
    CUdeviceptr held[HELD] = {0};
    int n = 0;
    while (!(atomic_load(&b->stop) && atomic_load(&b->ops[i]) >= quota)) {
        if (n > 0 && (n == HELD || rand_r(&seed) % 2)) {
            int k = (int)(rand_r(&seed) % (unsigned)n);
            if (cuMemFree_v2(held[k]) != CUDA_SUCCESS)
                atomic_fetch_add(&b->errors, 1);
            held[k] = held[--n];
        } else {
            uint64_t bytes = (1 + rand_r(&seed) % 16) * MiB;
            r = cuMemAlloc_v2(&held[n], bytes);
            if (r == CUDA_SUCCESS)
                n++;
            else if (r == CUDA_ERROR_OUT_OF_MEMORY)
                atomic_fetch_add(&b->refused, 1);
            else
                atomic_fetch_add(&b->errors, 1);
        }
        atomic_fetch_add(&b->ops[i], 1);
    }
    while (n > 0)
        cuMemFree_v2(held[--n]);
    _exit(0);
}

static void case_stress(void)
{
    int procs = (int)env_long("STRESS_PROCS", 32);
    long quota = env_long("STRESS_OPS", 10000), kills_wanted = env_long("STRESS_KILLS", 1000);
    CHECK(procs > 0 && procs <= MAX_PROCS, "STRESS_PROCS from 1 to %d", MAX_PROCS);
    struct board *b = mmap(NULL, sizeof *b, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(b != MAP_FAILED, "mmap");
    fake_cuda_reset_high_water(0);
    pid_t pid[MAX_PROCS];
    for (int i = 0; i < procs; i++) {
        pid[i] = fork();
        CHECK(pid[i] >= 0, "fork");
        if (pid[i] == 0)
            worker(b, i, quota);
    }
    /* Kills spread over the run: the k-th once the workers have done k/kills
     * of all their operations, at a random worker. */
    unsigned seed = 12345u;
    long kills = 0, restarts = 0;
    uint64_t began = mono_ns();
    for (;;) {
        long done = 0;
        for (int i = 0; i < procs; i++)
            done += atomic_load(&b->ops[i]) < quota ? atomic_load(&b->ops[i]) : quota;
        if (kills >= kills_wanted && done >= quota * procs)
            break;
        CHECK(mono_ns() - began < 600000000000ull, "the stress ran out of time: %ld kills, %ld of %ld operations",
              kills, done, quota * procs);
        if (kills >= kills_wanted || kills * quota * procs > done * kills_wanted + quota * procs / 50) {
            usleep(200);
            continue;
        }
        int i = (int)(rand_r(&seed) % (unsigned)procs);
        usleep(rand_r(&seed) % 500); /* anywhere in what it is doing */
        CHECK(kill(pid[i], SIGKILL) == 0, "kill");
        int status;
        CHECK(waitpid(pid[i], &status, 0) == pid[i], "waitpid");
        kills += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
        CHECK(!WIFEXITED(status), "worker %d exited (%d) before its quota", i, WEXITSTATUS(status));
        pid[i] = fork();
        CHECK(pid[i] >= 0, "fork");
        if (pid[i] == 0)
            worker(b, i, quota);
        restarts++;
    }
    atomic_store(&b->stop, 1);
    int failed = 0;
    for (int i = 0; i < procs; i++) {
        int status;
        CHECK(waitpid(pid[i], &status, 0) == pid[i], "waitpid");
        failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    long total = 0;
    for (int i = 0; i < procs; i++)
        total += atomic_load(&b->ops[i]);
    uint64_t peak = fake_cuda_high_water(0);
    /* The killed processes' memory is freed by the driver a little after
     * their deaths: wait for it (the fake frees it when asked about memory). */
    nvmlDevice_t dev;
    CHECK(nvmlInit_v2() == NVML_SUCCESS && nvmlDeviceGetHandleByIndex_v2(0, &dev) == NVML_SUCCESS, "NVML");
    uint64_t waited = mono_ns();
    nvmlMemory_t mem;
    while (nvmlDeviceGetMemoryInfo(dev, &mem) == NVML_SUCCESS && mem.used > 0 && mono_ns() - waited < 5000000000ull)
        usleep(1000);
    printf("%d processes, %ld operations, %ld kills (%ld restarts), %ld refused, %.1f s; the GPU's peak %llu MiB "
           "for a %llu MiB slice\n",
           procs, total, kills, restarts, (long)b->refused, (double)(mono_ns() - began) / 1e9,
           (unsigned long long)(peak / MiB), (unsigned long long)(LIMIT / MiB));
    CHECK(failed == 0 && b->start_failures == 0, "%d workers failed, %ld could not start", failed,
          (long)b->start_failures);
    CHECK(b->errors == 0, "%ld calls failed with something other than out-of-memory", (long)b->errors);
    CHECK(kills >= kills_wanted, "only %ld kills", kills);
    CHECK(b->refused > 0, "the slice was never full: the run shows nothing");
    CHECK(peak <= LIMIT, "the GPU held %llu bytes at once, over the %llu-byte slice", (unsigned long long)peak,
          (unsigned long long)LIMIT);
    CHECK(fake_cuda_device_used(0) == 0, "the GPU still holds %llu bytes", (unsigned long long)fake_cuda_device_used(0));
    /* And the slice agrees, once a process of it looks (reclaiming the dead). */
    CHECK_CU(open_device(), CUDA_SUCCESS);
    size_t free_b, total_b;
    CHECK_CU(cuMemGetInfo_v2(&free_b, &total_b), CUDA_SUCCESS);
    struct vgpu_region *r = map_region();
    uint64_t mine = fake_cuda_device_used(0); /* this process's context, all the GPU holds now */
    CHECK(region_used(r) == mine, "the slice still counts %llu bytes beside this process's %llu",
          (unsigned long long)region_used(r), (unsigned long long)mine);
    CHECK(free_b == LIMIT - mine, "free %zu of the slice", free_b);
}

static const struct test_case g_cases[] = {
    {"kill_and_take", case_kill_and_take},
    {"kill_and_take_unknown_pid", case_kill_and_take_unknown_pid},
    {"stress", case_stress},
};

int main(int argc, char **argv) { return run_case(argc, argv, g_cases, sizeof g_cases / sizeof g_cases[0]); }
