/*
 * A fake libnvidia-ml.so.1 reporting the fake devices' memory from the same
 * counters the fake libcuda.so.1 charges (see README.md).
 *
 * NVML knows nothing of CUDA_VISIBLE_DEVICES: it always lists every physical
 * device, and its index is the physical index.
 */
#define _GNU_SOURCE
#include "fake_abi_ext.h"
#include "fake_state.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

/* Device handles point at these; the index is the physical device. */
struct nvmlDevice_st {
    unsigned index;
};

static struct nvmlDevice_st g_devices[FAKE_MAX_DEVICES] = {{0}, {1}, {2}, {3},
                                                           {4}, {5}, {6}, {7}};

/* nvmlInit/nvmlShutdown nest, as in the real library. */
static _Atomic int g_init_count;

#define REQUIRE_INIT()                                                                     \
    do {                                                                                   \
        if (atomic_load(&g_init_count) <= 0)                                               \
            return NVML_ERROR_UNINITIALIZED;                                               \
    } while (0)

/*
 * The counters to report. With FAKE_CUDA_STATE both fakes map the same file.
 * Without it, each library has a private block; then borrow the fake
 * libcuda's block if it is loaded in this process, so that a single process
 * still sees NVML agree with what it allocated through CUDA. Looked up until
 * found, since libcuda may be loaded after NVML; the dlopen reference keeps
 * it loaded for as long as its block is used.
 */
static struct fake_shared *nvml_state(void)
{
    static _Atomic(struct fake_shared *) borrowed;
    if (fake_config()->state_path)
        return fake_state();
    struct fake_shared *s = atomic_load(&borrowed);
    if (s)
        return s;
    void *cuda = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
    if (cuda) {
        struct fake_shared *(*get)(void) =
            (struct fake_shared * (*)(void)) dlsym(cuda, "fake_cuda_private_state");
        s = get ? get() : NULL;
        if (!s) {
            dlclose(cuda); /* a real libcuda, or one using a state file */
        } else {
            struct fake_shared *expected = NULL;
            if (!atomic_compare_exchange_strong(&borrowed, &expected, s))
                dlclose(cuda); /* another thread got there first */
            return s;
        }
    }
    return fake_state();
}

/* The physical index behind a handle, or -1 if it is not one of ours. */
static int device_index(nvmlDevice_t device)
{
    for (int i = 0; i < fake_config()->device_count; i++)
        if (device == &g_devices[i])
            return i;
    return -1;
}

nvmlReturn_t nvmlInit_v2(void)
{
    fake_config();
    atomic_fetch_add(&g_init_count, 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit(void)
{
    return nvmlInit_v2();
}

/* What nvidia-ml-py (pynvml) calls. */
nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    return nvmlInit_v2();
}

nvmlReturn_t nvmlShutdown(void)
{
    int n = atomic_load(&g_init_count);
    do {
        if (n <= 0)
            return NVML_ERROR_UNINITIALIZED;
    } while (!atomic_compare_exchange_weak(&g_init_count, &n, n - 1));
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    REQUIRE_INIT();
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned)fake_config()->device_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *count)
{
    return nvmlDeviceGetCount_v2(count);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    REQUIRE_INIT();
    if (!device || index >= (unsigned)fake_config()->device_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &g_devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    REQUIRE_INIT();
    if (!uuid || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < fake_config()->device_count; i++) {
        char s[FAKE_UUID_STRLEN + 1];
        fake_uuid_string(i, s);
        if (strcasecmp(s, uuid) == 0) {
            *device = &g_devices[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    REQUIRE_INIT();
    int i = device_index(device);
    if (i < 0 || !index)
        return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned)i;
    return NVML_SUCCESS;
}

/* Copy a string out NVML-style: all of it or INSUFFICIENT_SIZE. */
static nvmlReturn_t copy_out(char *buf, unsigned int length, const char *s)
{
    size_t need = strlen(s) + 1;
    if (length < need)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, s, need);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    REQUIRE_INIT();
    int i = device_index(device);
    if (i < 0 || !uuid)
        return NVML_ERROR_INVALID_ARGUMENT;
    char s[FAKE_UUID_STRLEN + 1];
    fake_uuid_string(i, s);
    return copy_out(uuid, length, s);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    REQUIRE_INIT();
    if (device_index(device) < 0 || !name)
        return NVML_ERROR_INVALID_ARGUMENT;
    return copy_out(name, length, FAKE_DEVICE_NAME);
}

/* total, and used clamped to it (a smaller FAKE_CUDA_DEVICE_MEMORY in one
 * process than in another must not make free wrap). */
static void memory_of(int i, unsigned long long *total, unsigned long long *used)
{
    *total = fake_config()->memory[i];
    fake_free_dead_after_delay(nvml_state());
    *used = atomic_load(&nvml_state()->dev[i].used);
    if (*used > *total)
        *used = *total;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    REQUIRE_INIT();
    int i = device_index(device);
    if (i < 0 || !memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long total, used;
    memory_of(i, &total, &used);
    memory->total = total;
    memory->used = used;
    memory->free = total - used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    REQUIRE_INIT();
    int i = device_index(device);
    if (i < 0 || !memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long total, used;
    memory_of(i, &total, &used);
    memory->total = total;
    memory->reserved = 0; /* the fake keeps nothing back for the driver */
    memory->used = used;
    memory->free = total - used;
    return NVML_SUCCESS;
}

/* Processes with memory on the device: entries of the per-process table
 * with nonzero usage there, dead ones included until the driver has freed
 * their memory (fake_free_dead_after_delay, fake_cuda_reap_dead). Standard
 * NVML sizing protocol. */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos)
{
    REQUIRE_INIT();
    int dev = device_index(device);
    if (dev < 0 || !count)
        return NVML_ERROR_INVALID_ARGUMENT;

    struct fake_shared *s = nvml_state();
    fake_free_dead_after_delay(s);
    nvmlProcessInfo_t found[FAKE_MAX_PROCS];
    unsigned n = 0;
    for (int i = 0; i < FAKE_MAX_PROCS; i++) {
        int pid = atomic_load(&s->proc[i].pid);
        unsigned long long used = atomic_load(&s->proc[i].used[dev]);
        if (pid <= 0 || used == 0)
            continue;
        found[n].pid = (unsigned)pid;
        found[n].usedGpuMemory = used;
        found[n].gpuInstanceId = NVML_VALUE_NOT_AVAILABLE;
        found[n].computeInstanceId = NVML_VALUE_NOT_AVAILABLE;
        n++;
    }
    if (*count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (n > 0 && !infos)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (n > 0)
        memcpy(infos, found, n * sizeof found[0]);
    *count = n;
    return NVML_SUCCESS;
}

/* Power: a GPU that draws a constant FAKE_NVML_POWER_W watts (default 100)
 * from the moment the library is loaded, reports FAKE_NVML_IDLE_W (default
 * the same) as its current power, and is limited to FAKE_NVML_POWER_LIMIT_W
 * (default 700). Enough to drive libvgpu's power-headroom arithmetic. */
static double env_number(const char *name, double fallback)
{
    const char *v = getenv(name);
    return v && *v ? atof(v) : fallback;
}

static struct timespec g_loaded;

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *mj)
{
    REQUIRE_INIT();
    if (device_index(device) < 0 || !mj)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double ms = (double)(now.tv_sec - g_loaded.tv_sec) * 1e3 + (double)(now.tv_nsec - g_loaded.tv_nsec) / 1e6;
    *mj = (unsigned long long)(ms * env_number("FAKE_NVML_POWER_W", 100.0)); /* W x ms = mJ */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *mw)
{
    REQUIRE_INIT();
    if (device_index(device) < 0 || !mw)
        return NVML_ERROR_INVALID_ARGUMENT;
    *mw = (unsigned int)(env_number("FAKE_NVML_IDLE_W", env_number("FAKE_NVML_POWER_W", 100.0)) * 1000.0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *mw)
{
    REQUIRE_INIT();
    if (device_index(device) < 0 || !mw)
        return NVML_ERROR_INVALID_ARGUMENT;
    *mw = (unsigned int)(env_number("FAKE_NVML_POWER_LIMIT_W", 700.0) * 1000.0);
    return NVML_SUCCESS;
}

/* Per-process utilization: one sample, stamped now, for each process that
 * has memory on the device, all at FAKE_NVML_SM_UTIL percent (default 0).
 * NVML's protocol: NOT_FOUND when there is no sample newer than last_seen_us,
 * INSUFFICIENT_SIZE with the count needed when the buffer is too small. */
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, nvmlProcessUtilizationSample_t *samples,
                                             unsigned int *count, unsigned long long last_seen_us)
{
    REQUIRE_INIT();
    if (device_index(device) < 0 || !count)
        return NVML_ERROR_INVALID_ARGUMENT;
    /* The real library uses a few hundred KiB of stack here; so does this,
     * so that a caller on a small thread stack crashes in CI, not on a GPU. */
    volatile unsigned char deep[256 * 1024];
    for (size_t i = 0; i < sizeof deep; i += 4096)
        deep[i] = (unsigned char)i;
    nvmlProcessInfo_t procs[FAKE_MAX_PROCS];
    unsigned int n = FAKE_MAX_PROCS;
    nvmlReturn_t r = nvmlDeviceGetComputeRunningProcesses_v3(device, &n, procs);
    if (r != NVML_SUCCESS)
        return r;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    unsigned long long stamp = (unsigned long long)now.tv_sec * 1000000ull + (unsigned long long)now.tv_nsec / 1000u;
    if (n == 0 || stamp <= last_seen_us)
        return NVML_ERROR_NOT_FOUND;
    if (!samples || *count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned int util = (unsigned int)env_number("FAKE_NVML_SM_UTIL", 0.0);
    for (unsigned int i = 0; i < n; i++)
        samples[i] = (nvmlProcessUtilizationSample_t){procs[i].pid, stamp, util, 0, 0, 0};
    *count = n;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_UNKNOWN: return "Unknown Error";
    default: return "Unknown Error";
    }
}

/* Read the configuration (and map the state file) at load. */
__attribute__((constructor)) static void fake_nvml_load(void)
{
    fake_state();
    clock_gettime(CLOCK_MONOTONIC, &g_loaded);
}
