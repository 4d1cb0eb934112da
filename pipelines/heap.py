"""A worker's heap that does not grow with the number of images it has seen.

A stage-1 worker allocates and frees image-sized byte strings all run long: each encoded image (tens to
hundreds of KB) is read from its shard, passed through the rules, written to a work file and to Parquet.
glibc's malloc serves blocks that size from its heap once its dynamic mmap threshold has risen past
them (it rises to the largest block freed, up to 32 MB), and a heap left full of freed holes of varying
sizes is seldom handed back, so the process's memory creeps up with the run. With the threshold pinned
at 64 KB (mallopt M_MMAP_THRESHOLD, which also stops the dynamic rise), every block that large is a
mapping of its own, returned to the system when it is freed; small objects stay on the heap.

Measured with bench/stage1.py on the portable runner (SDK worker's peak PSS, 20,000 -> 60,000 pairs):
0.83 -> 0.97 GB with glibc's default, 0.76 -> 0.82 GB with the threshold pinned (BENCHMARKS.md). Where
the C library is not glibc (macOS, musl) this does nothing.
"""

import ctypes
import ctypes.util
import logging

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 64 << 10
log = logging.getLogger("heap")


def map_large_blocks(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Pin glibc's mmap threshold for this process; False where the C library has no such setting."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        pinned = hasattr(libc, "gnu_get_libc_version") and libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1
    except OSError:
        pinned = False
    if not pinned:
        log.debug("the C library is not glibc: malloc's mmap threshold left as it is")
    return pinned
