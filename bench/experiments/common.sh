# Sourced by the experiment scripts: the library, a slice's variables, the summaries.
# WORKLOADS overrides the worker command (a stand-in, to try a script without a GPU).
here=$(cd "$(dirname "${BASH_SOURCE[1]:-$0}")" && pwd)
lib=$(cd / && python3 -c 'import hami_kernel; print(hami_kernel.library_path())')
workloads=${WORKLOADS:-"python3 $here/../workloads.py"}

# slice_env CAP POLICY [DIR [NAME]]: a slice's variables, one word each (for `env $(slice_env ...)`):
# a 16 GiB slice at CAP% under POLICY, info-level exit report, region DIR/NAME.region and the
# arbiter in DIR (a fresh directory unless given: tenants of one GPU share one).
slice_env() {
    local dir=${3:-$(mktemp -d)} name=${4:-slice}
    echo "LD_PRELOAD=$lib CUDA_DEVICE_MEMORY_LIMIT=16g CUDA_DEVICE_SM_LIMIT=$1" \
         "GPU_CORE_UTILIZATION_POLICY=$2 LIBCUDA_LOG_LEVEL=3" \
         "CUDA_DEVICE_MEMORY_SHARED_CACHE=$dir/$name.region LIBVGPU_ARBITER_DIR=$dir"
}

# share_summary NATIVE.json RUN.json LABEL [options of share_summary.py]
share_summary() { python3 "$here/share_summary.py" "$@"; }

# limiter_report ERRFILE: the limiter's exit report (turns, power) from a run's stderr
limiter_report() { grep -ho -e "turns.*" -e "power:.*" "$1" | head -3; }
