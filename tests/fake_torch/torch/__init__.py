"""A stand-in for the few torch calls of bench/workloads.py's matmul shape and bench/notebook.py,
over the fake CUDA driver (csrc/tests/fake), so bench/pods.py runs end to end without a GPU.

A "matmul" is one launch of the fake driver, which keeps this process's fake
GPU busy for FAKE_CUDA_LAUNCH_NS; synchronize waits for that work as the
real driver does. Tensors carry no data: nothing here computes.
"""
import ctypes

__version__ = "0+fake"
bfloat16, float32 = "bfloat16", "float32"

_cuda = ctypes.CDLL("libcuda.so.1")  # the fake one, through LD_LIBRARY_PATH; libvgpu hooks it when preloaded
_cuda.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
_context = ctypes.c_void_p()
_function = ctypes.c_int()  # the fake accepts any function handle


def _check(what: str, result: int) -> None:
    if result != 0:
        raise RuntimeError(f"fake torch: {what} failed with CUDA error {result}")


_check("cuInit", _cuda.cuInit(0))
_check("cuDevicePrimaryCtxRetain", _cuda.cuDevicePrimaryCtxRetain(ctypes.byref(_context), 0))
_check("cuCtxSetCurrent", _cuda.cuCtxSetCurrent(_context))


class Tensor:
    """Shape-less: the stand-in only launches."""


def manual_seed(seed: int) -> None:
    del seed


def randn(*shape, device=None, dtype=None) -> Tensor:  # noqa: ANN001
    del shape, device, dtype
    return Tensor()


def randn_like(tensor: Tensor) -> Tensor:
    return Tensor()


def empty_like(tensor: Tensor) -> Tensor:
    return Tensor()


# A real driver blocks the launching thread once about a thousand launches
# wait on the GPU; the fake never does, so a lone worker would queue minutes
# of fake work before its first window ends. Launches wait for the queue here.
QUEUE_DEPTH = 256
_queued = 0


def matmul(a: Tensor, b: Tensor, out: Tensor = None) -> Tensor:  # type: ignore[assignment]
    global _queued
    _check("cuLaunchKernel", _cuda.cuLaunchKernel(ctypes.addressof(_function), 1, 1, 1, 32, 1, 1, 0, None, None, None))
    _queued += 1
    if _queued >= QUEUE_DEPTH:
        cuda.synchronize()
    return out


class cuda:  # noqa: N801 -- torch.cuda
    @staticmethod
    def synchronize() -> None:
        global _queued
        _check("cuCtxSynchronize", _cuda.cuCtxSynchronize())
        _queued = 0

    @staticmethod
    def mem_get_info() -> tuple:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        _check("cuMemGetInfo", _cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)))
        return free.value, total.value
