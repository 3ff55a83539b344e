#!/usr/bin/env python3
"""Samples GPU 0's energy counter, SM clock and power every few ms until killed.

    python3 energy_sampler.py OUT.csv [PERIOD_MS]

Rows: monotonic seconds, total energy mJ, SM clock MHz, power mW. NVML is
opened through ctypes so nothing beyond the driver is needed.
"""
import ctypes
import signal
import sys
import time

nvml = ctypes.CDLL("libnvidia-ml.so.1")
nvml.nvmlInit_v2()
dev = ctypes.c_void_p()
nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(dev))
energy, clock, power = ctypes.c_ulonglong(), ctypes.c_uint(), ctypes.c_uint()
period = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.005
running = True
signal.signal(signal.SIGTERM, lambda *_: globals().__setitem__("running", False))
with open(sys.argv[1], "w") as out:
    while running:
        nvml.nvmlDeviceGetTotalEnergyConsumption(dev, ctypes.byref(energy))
        nvml.nvmlDeviceGetClockInfo(dev, 1, ctypes.byref(clock))  # NVML_CLOCK_SM
        nvml.nvmlDeviceGetPowerUsage(dev, ctypes.byref(power))
        out.write(f"{time.monotonic():.6f},{energy.value},{clock.value},{power.value}\n")
        time.sleep(period)
