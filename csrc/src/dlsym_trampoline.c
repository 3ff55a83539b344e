/*
 * libvgpu's dlsym.
 *
 * Programs that dlopen libcuda.so.1 and look its entry points up with dlsym
 * (cudart, PyTorch, pynvml through ctypes, nvidia-smi) would bypass the
 * LD_PRELOADed wrappers, so dlsym itself is overridden and answers driver
 * names with the wrappers (vgpu_dlsym_hooked, in hooks.c).
 *
 * dlsym(RTLD_NEXT, name) must keep its meaning: "the next definition after
 * the object that called me". glibc finds "me" from its return address, so a
 * C wrapper that called glibc would make every RTLD_NEXT lookup relative to
 * libvgpu instead of the caller, and profilers that chain to the driver this
 * way would skip the wrappers. RTLD_NEXT is therefore handled by a tail jump
 * that leaves the caller's return address in place, which C cannot promise;
 * hence these few lines of assembly.
 */
#include <dlfcn.h>
#include <string.h>
#include <unistd.h>

#define VGPU_HIDDEN __attribute__((visibility("hidden")))

/* Read by the assembly below; written once, by vgpu_resolve_real_dlsym. */
VGPU_HIDDEN void *vgpu_real_dlsym_ptr;

/* Runs before any sanitizer runtime may be ready (sanitizers themselves
 * call dlsym(RTLD_NEXT, ...) while starting up), so it is not instrumented. */
VGPU_HIDDEN __attribute__((no_sanitize("address", "undefined"))) void *vgpu_resolve_real_dlsym(void)
{
    void *found = __atomic_load_n(&vgpu_real_dlsym_ptr, __ATOMIC_ACQUIRE);
    if (found)
        return found;
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0"};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0] && !found; i++)
        found = dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    if (!found) {
        static const char msg[] = "libvgpu: fatal: cannot find the C library's dlsym\n";
        ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)ignored;
        _exit(127);
    }
    __atomic_store_n(&vgpu_real_dlsym_ptr, found, __ATOMIC_RELEASE);
    return found;
}

#if defined(__x86_64__)
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym, @function\n"
        "dlsym:\n"
        "    cmpq $-1, %rdi\n" /* RTLD_NEXT is ((void *) -1) */
        "    je 1f\n"
        "    jmp vgpu_dlsym_hooked\n"
        "1:  movq vgpu_real_dlsym_ptr(%rip), %rax\n"
        "    testq %rax, %rax\n"
        "    jz 2f\n"
        "    jmp *%rax\n"
        "2:  pushq %rdi\n"
        "    pushq %rsi\n"
        "    subq $8, %rsp\n" /* keep the stack 16-byte aligned for the call */
        "    call vgpu_resolve_real_dlsym\n"
        "    addq $8, %rsp\n"
        "    popq %rsi\n"
        "    popq %rdi\n"
        "    jmp *%rax\n"
        ".size dlsym, .-dlsym\n");
#elif defined(__aarch64__)
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym, %function\n"
        "dlsym:\n"
        "    cmn x0, #1\n"
        "    b.eq 1f\n"
        "    b vgpu_dlsym_hooked\n"
        "1:  adrp x16, vgpu_real_dlsym_ptr\n"
        "    ldr x16, [x16, :lo12:vgpu_real_dlsym_ptr]\n"
        "    cbz x16, 2f\n"
        "    br x16\n"
        "2:  stp x29, x30, [sp, #-32]!\n"
        "    stp x0, x1, [sp, #16]\n"
        "    bl vgpu_resolve_real_dlsym\n"
        "    mov x16, x0\n"
        "    ldp x0, x1, [sp, #16]\n"
        "    ldp x29, x30, [sp], #32\n"
        "    br x16\n"
        ".size dlsym, .-dlsym\n");
#else
#error "libvgpu's dlsym trampoline supports x86-64 and aarch64"
#endif
