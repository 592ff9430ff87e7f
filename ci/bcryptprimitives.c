/*
 * Test-only stand-in for bcryptprimitives.dll, for running the Windows test
 * binaries under Wine 8.0 (scripts/windows-check). Never ship this.
 *
 * Rust's std (>= 1.78) imports ProcessPrng from bcryptprimitives.dll, which
 * Wine 8.0 lacks, so every Rust exe fails to start there (c0000135). This DLL
 * exports ProcessPrng and fills the buffer with RtlGenRandom
 * (advapi32!SystemFunction036).
 *
 * Build: x86_64-w64-mingw32-gcc -O2 -shared -o bcryptprimitives.dll \
 *            bcryptprimitives.c -ladvapi32
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length); /* RtlGenRandom */

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > (SIZE_T)(256u << 20) ? (256u << 20) : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
