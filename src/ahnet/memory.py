"""How the process's C allocator treats freed memory, the largest single cost of CPU training.

Every layer of a training step allocates its outputs fresh, many of them tens to hundreds of MB.
glibc serves blocks above its mmap threshold (at most 32 MB) with new mappings and returns them to
the system when freed, so the next step's tensors fault in every 4 kB page again: at the paper's
CT patch (192x192x64, batch 2) this was more than half of a training step (measured in
benchmarks/RESULTS.md). :func:`keep_freed_memory` makes malloc serve every block from its heap
and keep freed blocks for reuse: the same step took 0.36-0.55x the time, for a peak resident
memory about 1.4x higher (freed blocks are reused, never returned, and the heap fragments).
"""

from __future__ import annotations

import ctypes
import platform

#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (process-wide, for the rest of the
    process); False where the C library is not glibc (nothing changes there)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # No block from mmap (so none goes back on free), and the heap's top is not trimmed either.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
