"""A worker's heap that does not grow with the number of images it has seen.

A stage-1 worker allocates and frees image-sized byte strings all run long: each encoded image (tens to
hundreds of KB) is read from its shard, passed through the rules, written to a work file and to Parquet.
glibc's malloc serves blocks that size from its heap once its dynamic mmap threshold has risen past
them (it rises to the largest block freed, up to 32 MB), and a heap left full of freed holes of varying
sizes is seldom handed back, so the process's memory creeps up with the run. With the threshold pinned
at 64 KB (mallopt M_MMAP_THRESHOLD, which also stops the dynamic rise), every block that large is a
mapping of its own, returned to the system when it is freed; small objects stay on the heap.

Arrow's buffers (a row group of images being read, filtered or written: several MB each, a few copies
per row group) come from Arrow's own pool. arrow_pool_for_images() asks for jemalloc, which pyarrow's
wheels carry: it reuses freed pages for the next row group and returns what stays unused after about a
second, so a worker holds a bounded working set. The pyarrow wheels' default, mimalloc, kept more than
250 MB of freed image tables in a fresh process; glibc's malloc (the system pool) returns each buffer at
once, but then every row group's buffers are new mappings, faulted in page by page: 190 page faults per
input pair, and a third of the run's time spent in the kernel. Arrow reads the choice from the
environment once, when pyarrow is imported, so the command line calls it before anything imports
pyarrow, and the worker processes it starts inherit it; workers started elsewhere (a cluster's, a worker
pool) need ARROW_DEFAULT_MEMORY_POOL=jemalloc in their own environment (README, Scale). A pyarrow built
without jemalloc warns and keeps its default.

Measured with bench/stage1.py on the portable runner (SDK worker's peak PSS, 20,000 -> 60,000 pairs):
0.83 -> 0.97 GB with glibc's default, 0.76 -> 0.82 GB with the threshold pinned (BENCHMARKS.md). Stage 1
in-process, 100,000 photo-like pairs, one core: with Arrow on the system pool 166 s, 18.8 million page
faults, 0.44 GB peak RSS; on jemalloc 122 s, 3.8 million, 0.54 GB (0.46 GB at 20,000 pairs). Where the C
library is not glibc (macOS, musl) the threshold is left as it is.
"""

import ctypes
import ctypes.util
import logging
import os

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 64 << 10
ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL"  # read by Arrow when pyarrow is imported
IMAGE_POOL = "jemalloc"
log = logging.getLogger("heap")


def arrow_pool_for_images() -> None:
    """Ask for Arrow's jemalloc pool in this process and the processes it starts, unless a pool is named
    already. Takes effect only where pyarrow is not imported yet."""
    os.environ.setdefault(ARROW_POOL, IMAGE_POOL)


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
