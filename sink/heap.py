"""Keep large I/O buffers in the heap (glibc malloc tuning, applied once at start-up).

Why: glibc serves each allocation of 128 KiB or more with a fresh mmap and
returns it with munmap, and trims the heap's free top past 128 KiB; a program
that reads and writes 64 KiB-1 MiB buffers in a loop (a request body through
h11's receive buffer, a tailed file's chunk) then spends its time in page
faults.  Measured here: h11 taking a body in 256 KiB reads ran at ~840 MB/s
with the defaults and ~7.7 GB/s with these settings.  Setting the thresholds
(mallopt(3), M_MMAP_THRESHOLD / M_TRIM_THRESHOLD) fixes them; the cost is that
up to TRIM_THRESHOLD of freed memory stays mapped.  No-op off glibc.
"""

from __future__ import annotations

import ctypes
import gc
import sys

MiB = 1024 * 1024
MMAP_THRESHOLD = 4 * MiB  # blocks below this come from the heap and are reused
TRIM_THRESHOLD = 32 * MiB  # free heap top kept before it is given back

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3


def keep_large_buffers_in_heap() -> bool:
    """Apply the thresholds; True if the C library took them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


class SentBodies:
    """Frees the bodies of past requests every ``every`` bytes sent.

    httpx keeps a request (body included) in a reference cycle with its
    response until the cyclic GC runs; with many appends a second, past bodies
    would pile up between its runs.  Collecting the young generations every few
    MiB sent bounds them at a cost that does not grow with the append rate."""

    def __init__(self, every: int = 8 * MiB) -> None:
        self.every = every
        self._since = 0

    def sent(self, size: int) -> None:
        self._since += size
        if self._since >= self.every:
            self._since = 0
            gc.collect(1)
