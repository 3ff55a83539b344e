/*
 * Configuration and device-usage state shared by the fake libcuda.so.1 and
 * the fake libnvidia-ml.so.1.
 *
 * fake_state.c is compiled into both libraries; each gets its own copy of
 * this code and of the process-local variables, and both map the same
 * FAKE_CUDA_STATE file, so every process and both libraries see one set of
 * counters. Nothing here is exported (the libraries are built with
 * -fvisibility=hidden), except fake_cuda_private_state() from libcuda.
 */
#ifndef FAKE_STATE_H
#define FAKE_STATE_H

#include <stdatomic.h>
#include <stdbool.h>

#define FAKE_MAX_DEVICES 8
#define FAKE_MAX_PROCS 64
#define FAKE_DEFAULT_DEVICE_MEMORY (80ULL << 30)
#define FAKE_DEFAULT_CONTEXT_SIZE (64ULL << 20)
#define FAKE_DEVICE_NAME "Fake GPU"
/* "GPU-" + 32 hex digits + 4 dashes */
#define FAKE_UUID_STRLEN 40

/*
 * The layout of the FAKE_CUDA_STATE file. All-zero bytes are a valid empty
 * state, which is what makes creation race-free: whoever creates or extends
 * the file gets zeros, and there is nothing to initialise afterwards.
 * Only lock-free atomics are used, so processes never wait on each other and
 * a process dying at any point cannot leave anything locked.
 */
struct fake_proc_entry {
    _Atomic int pid; /* 0 = free, -1 = being reclaimed, else the owner */
    _Atomic unsigned long long used[FAKE_MAX_DEVICES];
};

struct fake_device_counters {
    _Atomic unsigned long long used;       /* bytes charged now, all processes */
    _Atomic unsigned long long high_water; /* max of used since last reset */
};

struct fake_shared {
    struct fake_device_counters dev[FAKE_MAX_DEVICES];
    struct fake_proc_entry proc[FAKE_MAX_PROCS];
};

struct fake_config {
    int device_count;                              /* physical devices */
    unsigned long long memory[FAKE_MAX_DEVICES];   /* bytes per physical device */
    unsigned long long context_size;               /* bytes a context occupies */
    const char *state_path;                        /* NULL: process-private state */
};

/* Environment, parsed once (first call; both libraries call it at load). */
const struct fake_config *fake_config(void);

/* This library's view of the state: the FAKE_CUDA_STATE mapping, or a
 * process-private zeroed block when the variable is unset. */
struct fake_shared *fake_state(void);

/* Exported by libcuda only: its process-private state, so that the NVML
 * fake in the same process can report the same numbers when no
 * FAKE_CUDA_STATE file is used. Returns NULL if a state file is in use. */
__attribute__((visibility("default"))) struct fake_shared *fake_cuda_private_state(void);

bool fake_valid_physical(int physical);

/* The deterministic UUID of a physical device, raw and as NVML's string. */
void fake_uuid_bytes(int physical, unsigned char out[16]);
void fake_uuid_string(int physical, char out[FAKE_UUID_STRLEN + 1]);

/* Charge bytes to a physical device on behalf of this process. Fails (and
 * changes nothing) if the device's capacity would be exceeded. */
bool fake_charge(struct fake_shared *s, int physical, unsigned long long bytes);
void fake_uncharge(struct fake_shared *s, int physical, unsigned long long bytes);

/* Drop everything this process still has charged (its exit). */
void fake_release_own_usage(struct fake_shared *s);

/* Release the usage of entries whose process no longer exists. */
unsigned long long fake_reap_dead(struct fake_shared *s);

/* kill(pid, 0) probe: false only when the process certainly does not exist. */
bool fake_pid_alive(int pid);

#endif
