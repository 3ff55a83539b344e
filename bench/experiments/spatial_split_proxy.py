#!/usr/bin/env python3
"""What a spatial split (a green context of s% of the SMs) would give a
bandwidth-bound and a compute-bound kernel: each kernel is run on blocks
confined to k SMs (one block per SM) and on all SMs, and the throughput ratio
printed. A share of SMs is a share of throughput only when the ratio equals it.
"""
import time

import cupy

SRC = r'''
extern "C" __global__ void copy(const float4 *a, float4 *b, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        b[i] = a[i];
}
extern "C" __global__ void spin_fma(float *out, int spin) {
    float x = threadIdx.x, y = 1.0f;
    for (int i = 0; i < spin; ++i) { x = x * 0.9999f + y; y = y * 0.9999f + x; }
    out[blockIdx.x * blockDim.x + threadIdx.x] = x + y;
}
'''
mod = cupy.RawModule(code=SRC)
copy, fma = mod.get_function("copy"), mod.get_function("spin_fma")
sms = cupy.cuda.Device(0).attributes["MultiProcessorCount"]
n = (1 << 30) // 16
a, b = cupy.ones(n * 4, cupy.float32), cupy.empty(n * 4, cupy.float32)
out = cupy.empty(sms * 1024 * 8, cupy.float32)


def rate(launch, reps):
    launch(); cupy.cuda.Device(0).synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        launch()
    cupy.cuda.Device(0).synchronize()
    return reps / (time.perf_counter() - t)


print(f"{sms} SMs")
for frac in (0.1, 0.3, 0.5, 0.7):
    k = max(1, round(sms * frac))
    # Bandwidth: k blocks of 1024 threads, one per SM, against the same on all SMs.
    bw_k = rate(lambda: copy((k,), (1024,), (a, b, cupy.int64(n))), 20)
    bw_all = rate(lambda: copy((sms,), (1024,), (a, b, cupy.int64(n))), 20)
    c_k = rate(lambda: fma((k,), (1024,), (out, cupy.int32(200000))), 5)
    c_all = rate(lambda: fma((sms,), (1024,), (out, cupy.int32(200000))), 5)
    # The compute kernel's work is proportional to its block count.
    print(f"{frac:.0%} of SMs ({k}): copy throughput {bw_k / bw_all:.2f} of all SMs' "
          f"({2 * n * 16 * bw_k / 1e9:.0f} vs {2 * n * 16 * bw_all / 1e9:.0f} GB/s); "
          f"FMA work rate {c_k * k / (c_all * sms):.2f} of all SMs'")
