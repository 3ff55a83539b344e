#!/usr/bin/env python3
"""Samples GPU 0's instant power (NVML field 186) every millisecond until killed,
then prints its distribution: under a duty-cycled cap the samples split into
an "on" and an "off" group.

    python3 instant_power.py OUT.txt
"""
import ctypes
import signal
import statistics
import sys
import time


class Value(ctypes.Union):
    _fields_ = [("d", ctypes.c_double), ("ui", ctypes.c_uint), ("ul", ctypes.c_ulong),
                ("ull", ctypes.c_ulonglong), ("sll", ctypes.c_longlong)]


class FieldValue(ctypes.Structure):
    _fields_ = [("fieldId", ctypes.c_uint), ("scopeId", ctypes.c_uint), ("timestamp", ctypes.c_longlong),
                ("latencyUsec", ctypes.c_longlong), ("valueType", ctypes.c_int), ("nvmlReturn", ctypes.c_int),
                ("value", Value)]


nvml = ctypes.CDLL("libnvidia-ml.so.1")
nvml.nvmlInit_v2()
dev = ctypes.c_void_p()
nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(dev))
field = FieldValue(fieldId=186)
samples, stamps = [], []
running = True
signal.signal(signal.SIGTERM, lambda *_: globals().__setitem__("running", False))
while running:
    nvml.nvmlDeviceGetFieldValues(dev, 1, ctypes.byref(field))
    if field.nvmlReturn == 0:
        samples.append(field.value.ui / 1000.0)
        stamps.append(field.timestamp)
    time.sleep(0.001)
busy = [s for s in samples if s > 150]
q = statistics.quantiles(busy, n=20) if len(busy) > 20 else []
distinct = len(set(stamps))
with open(sys.argv[1], "w") as out:
    out.write(f"samples {len(samples)} distinct timestamps {distinct} over {len(samples)/1000:.1f}s; "
              f">150W: {len(busy)}; p5/p25/p50/p75/p95 of those: "
              + " ".join(f"{q[i]:.0f}" for i in (0, 4, 9, 14, 18)) + "\n" if q else "too few\n")
