"""Code that tests run inside a Jupyter kernel over the fake driver."""
import textwrap

# The fake driver reached through ctypes (so through dlsym, and libvgpu's
# wrappers), one context, and alloc(mib) -> CUresult, keeping what it got.
ALLOCATOR = textwrap.dedent("""
    import ctypes
    _cu = ctypes.CDLL("libcuda.so.1")
    assert _cu.cuInit(0) == 0
    _dev, _ctx = ctypes.c_int(), ctypes.c_void_p()
    assert _cu.cuDeviceGet(ctypes.byref(_dev), 0) == 0
    assert _cu.cuDevicePrimaryCtxRetain(ctypes.byref(_ctx), _dev) == 0
    assert _cu.cuCtxSetCurrent(_ctx) == 0
    _held = []
    def alloc(mib):
        p = ctypes.c_uint64()
        r = _cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(mib << 20))
        if r == 0:
            _held.append(p)
        return r
""")


def holding_and_launching(mib: int) -> str:
    """Holds mib MiB, then launches GPU work from a thread every 0.1 s with no cell running:
    a kernel busy on the GPU though idle to Jupyter."""
    return textwrap.dedent(f"""
        assert alloc({mib}) == 0
        import threading, time
        _buf = ctypes.create_string_buffer(8)
        _f = ctypes.c_void_p(ctypes.addressof(_buf))
        def _work():
            while True:
                _cu.cuLaunchKernel(_f, 1, 1, 1, 1, 1, 1, 0, None, None, None)
                time.sleep(0.1)
        threading.Thread(target=_work, daemon=True).start()
    """)
