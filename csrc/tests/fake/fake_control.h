/*
 * Test-control functions exported by the fake libcuda.so.1 (see README.md).
 *
 * They read or reset the fake's bookkeeping so that tests can check what the
 * interception library really did underneath, e.g. that an allocation it
 * refused never reached the driver. "physical" is the fake device index
 * 0..FAKE_CUDA_DEVICE_COUNT-1 (what NVML calls the index), "ordinal" is a
 * CUDA device ordinal after CUDA_VISIBLE_DEVICES.
 *
 * Link against the fake (libcuda.so) or look the names up with dlsym.
 */
#ifndef FAKE_CONTROL_H
#define FAKE_CONTROL_H

#ifdef __cplusplus
extern "C" {
#endif

/* The fake is built with -fvisibility=hidden; this keeps these exported. */
#define FAKE_CONTROL_API __attribute__((visibility("default")))

/* Bytes currently charged to a physical device by all processes sharing the
 * state (allocations plus context overhead); 0 for an invalid index. */
FAKE_CONTROL_API unsigned long long fake_cuda_device_used(int physical);

/* Largest fake_cuda_device_used() value seen since start or the last reset. */
FAKE_CONTROL_API unsigned long long fake_cuda_high_water(int physical);

/* Restart high-water tracking from the device's current usage. */
FAKE_CONTROL_API void fake_cuda_reset_high_water(int physical);

/* Kernel and graph launches that reached the fake in this process, all
 * entry points together. */
FAKE_CONTROL_API unsigned long long fake_cuda_launch_count(void);

/* Launches through one exported entry point, by its exact exported name
 * ("cuLaunchKernel_ptsz", "cuGraphLaunch", ...); 0 for any other name. */
FAKE_CONTROL_API unsigned long long fake_cuda_launch_count_by_name(const char *entry_point);

/* The GPU timeline (README.md, "GPU time"): each launch occupies its device for
 * FAKE_CUDA_LAUNCH_NS (graphs: FAKE_CUDA_GRAPH_LAUNCH_NS), after the work
 * this process queued before it.
 *
 * fake_cuda_busy_ns: GPU time (ns) of all the work this process has queued
 * on a physical device so far, finished or not. Over a window that starts
 * before the first of some launches and ends once they are drained
 * (cuCtxSynchronize), its growth divided by the window's length is the
 * fraction of the time the device was busy with them.
 *
 * fake_cuda_busy_until: the CLOCK_MONOTONIC time (ns) at which the work
 * queued on the device so far completes; in the past (or 0) when idle.
 *
 * Both are 0 for an invalid index, and before this process's cuInit. */
FAKE_CONTROL_API unsigned long long fake_cuda_busy_ns(int physical);
FAKE_CONTROL_API unsigned long long fake_cuda_busy_until(int physical);

/* Physical device behind a CUDA ordinal in this process, or -1 if the ordinal
 * is not visible or cuInit has not run yet (CUDA_VISIBLE_DEVICES is applied
 * at cuInit, as by the real driver). */
FAKE_CONTROL_API int fake_cuda_physical_of_ordinal(int ordinal);

/* Give back the usage still recorded for processes that died without
 * exiting normally (SIGKILL, _exit), as the real driver does when a process
 * goes away. Returns the bytes released, all devices together. A process
 * that exits normally releases its own usage in a destructor. */
FAKE_CONTROL_API unsigned long long fake_cuda_reap_dead(void);

/* Charge bytes on a physical device to another process, listed under its pid
 * (by NVML's process queries) as if it had allocated them; the usage is
 * released like any process's: when it exits it is found dead and reaped.
 * Returns 0, or -1 if the device is full, the index or pid invalid, or the
 * process table full. */
FAKE_CONTROL_API int fake_cuda_charge_pid(int physical, int pid, unsigned long long bytes);

#ifdef __cplusplus
}
#endif

#endif
