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

#include <pthread.h>
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
 * the file gets zeros, and the one thing that needs initialising (the lock)
 * is set up by its first user.
 *
 * Every change of usage (a device's total and a process's entry together)
 * is made under one process-shared, robust mutex, with the values it is
 * about to store written first to a journal: a process killed half way
 * through leaves the journal, and the next one to take the lock (which the
 * kernel hands over as EOWNERDEAD) stores those values again. So the books
 * stay exact however often processes are SIGKILLed, which the stress test
 * of libvgpu relies on. Reads (NVML, cuMemGetInfo) take no lock.
 */
struct fake_proc_entry {
    _Atomic int pid; /* 0 = free, -1 = being reclaimed, else the owner */
    _Atomic unsigned long long used[FAKE_MAX_DEVICES];
    /* CLOCK_MONOTONIC ns at which the fake first found the owner dead (0: not
     * yet): its memory is freed FAKE_CUDA_DEAD_FREE_MS later. */
    _Atomic unsigned long long dead_since_ns;
};

/* One change in progress: the values to store, replayed if its maker died. */
struct fake_journal {
    _Atomic int pending;
    int entry; /* -1: none (bytes charged while the process table was full) */
    int device;
    unsigned long long device_used;
    unsigned long long entry_used;
};

struct fake_device_counters {
    _Atomic unsigned long long used;       /* bytes charged now, all processes */
    _Atomic unsigned long long high_water; /* max of used since last reset */
};

struct fake_shared {
    struct fake_device_counters dev[FAKE_MAX_DEVICES];
    struct fake_proc_entry proc[FAKE_MAX_PROCS];
    _Atomic int lock_state; /* 0 = not set up, 1 = being set up, 2 = ready */
    pthread_mutex_t lock;   /* robust and process-shared */
    struct fake_journal journal;
};

struct fake_config {
    int device_count;                              /* physical devices */
    unsigned long long memory[FAKE_MAX_DEVICES];   /* bytes per physical device */
    unsigned long long context_size;               /* bytes a context occupies */
    const char *state_path;                        /* NULL: process-private state */
    unsigned long long dead_free_ns;               /* 0: a dead process's memory stays until reaped */
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
/* Charges bytes on behalf of another process (test control). */
bool fake_charge_for_pid(struct fake_shared *s, int physical, int pid, unsigned long long bytes);

/* Drop everything this process still has charged (its exit). */
void fake_release_own_usage(struct fake_shared *s);

/* Release the usage of entries whose process no longer exists. */
unsigned long long fake_reap_dead(struct fake_shared *s);

/* The driver tearing down dead processes: with FAKE_CUDA_DEAD_FREE_MS set,
 * frees the memory of processes found dead at least that long ago (and
 * notes when others are first found dead). The fake does this whenever it
 * is asked about memory or charges any (NVML, cuMemGetInfo, allocations of
 * any process), so a dead process's memory stays listed and charged until
 * then. */
void fake_free_dead_after_delay(struct fake_shared *s);

/* kill(pid, 0) probe: false only when the process certainly does not exist. */
bool fake_pid_alive(int pid);

#endif
