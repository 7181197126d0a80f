"""Facts about the current process that replicas report (memory), and its heap policy."""

from __future__ import annotations

import ctypes
import os
import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


#: glibc's malloc, as a model replica's process should start: one arena (every thread's
#: large tensors from the main heap, which grows without the 64 MiB limit of a thread's
#: arena), no ``mmap`` for large blocks, and freed memory kept (never trimmed), so a batch's
#: tensors reuse the pages the last batch faulted in. Read once, when the process starts.
RETAINED_HEAP_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**62),
}
# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def retain_freed_memory() -> bool:
    """:data:`RETAINED_HEAP_ENV`'s settings for this (already running) process, as far as
    ``mallopt`` can still apply them: large blocks from the heap and no trimming from now on;
    one arena only for threads whose first allocation is still to come, and only while glibc
    has made no second arena. False where the C library is not glibc (nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        # glibc only (it alone has gnu_get_libc_version): musl's mallopt is a stub.
        mallopt, _ = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(_M_MMAP_MAX, 0) == 1
    done &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    mallopt(_M_ARENA_MAX, 1)
    return bool(done)


def started_retained() -> bool:
    """Whether this process started with all of :data:`RETAINED_HEAP_ENV` (glibc read it)."""
    return all(os.environ.get(name) == value for name, value in RETAINED_HEAP_ENV.items())
