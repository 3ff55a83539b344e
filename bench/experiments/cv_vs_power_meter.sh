#!/bin/bash
# Does the power meter's NVML sampling (every 0.5 s, on the statistics thread)
# disturb the launching thread? The same shape alone under force, with
# LIBVGPU_POWER_AWARE=1 and =0; prints each run's share, CV and windows.
# Usage: cv_vs_power_meter.sh OUTDIR SECONDS "SHAPE:SIZE:CAP ..."
exec bash "$(dirname "$0")/setting_ab.sh" "${1:?OUTDIR}" "${2:-10}" LIBVGPU_POWER_AWARE "1 0" "${3:?"SHAPE:SIZE:CAP ..."}"
