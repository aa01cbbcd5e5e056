"""Keep freed memory for reuse instead of handing it back to the OS at once (glibc only).

glibc's malloc serves large blocks with fresh ``mmap`` pages and trims the heap as soon as its free top
exceeds a few megabytes. A PyTorch CPU loop that allocates tens of megabytes of intermediate tensors
per batch (training, batched occlusion) then page-faults on every batch; on a virtual machine each
fault is expensive (measured here: 30,000 to 100,000 faults and up to 40 % of the time of one fast
occlusion run at N = 1,500). PyTorch's CPU performance guide suggests jemalloc or tcmalloc for the
same reason; this module gets most of the effect from glibc itself with two ``mallopt`` settings.

It is an application's choice, made once at start (the ``nucleograph`` command and the benchmark
scripts call :func:`retain_freed_memory`), never by library functions. ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` in the environment take precedence: then nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's ceiling for the mmap threshold on 64-bit systems (4 MiB * sizeof(long))
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def retain_freed_memory(trim_threshold: int = 512 * 1024 * 1024) -> bool:
    """Serve blocks up to 32 MiB from the heap and keep up to ``trim_threshold`` bytes of freed heap.

    Returns True when the settings were applied (Linux with glibc, no ``MALLOC_*`` override).
    """
    if not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
