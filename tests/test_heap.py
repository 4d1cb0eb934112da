"""pipelines/heap.py: with glibc's mmap threshold pinned, image-sized blocks are mappings of their own
instead of growing the heap, even after a larger block was freed (which raises glibc's own threshold);
the command line puts Arrow on jemalloc. Each case runs in a fresh process, so the heap starts the
same."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.heap import map_large_blocks

MAPPED_AFTER_A_LARGE_FREE = """
import ctypes
from pipelines.heap import map_large_blocks

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if PIN:
    map_large_blocks()
large = bytearray(8 << 20)
del large  # glibc's default now serves blocks up to 8 MB from the heap
before = libc.mallinfo2().hblks
images = [bytearray(300_000) for _ in range(10)]
print(libc.mallinfo2().hblks - before)
"""


def mapped_images(pin: bool) -> int:
    """How many of ten 300 KB blocks malloc mapped apart, in a fresh process."""
    code = f"PIN = {pin}\n{MAPPED_AFTER_A_LARGE_FREE}"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc >= 2.33 only (mallinfo2)")
def test_image_sized_blocks_are_mapped_apart_once_the_threshold_is_pinned():
    assert map_large_blocks()
    assert mapped_images(pin=False) == 0
    assert mapped_images(pin=True) == 10


def arrow_pool(env: dict, command_line: bool = True) -> str:
    """Arrow's default pool in a fresh process that loaded pyarrow, after the command line or alone."""
    code = f"{'import beam_runner; ' if command_line else ''}import pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    env = {name: value for name, value in os.environ.items() if name != "ARROW_DEFAULT_MEMORY_POOL"} | env
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=root).stdout.strip()


def test_the_command_line_puts_arrow_on_jemalloc_unless_a_pool_is_named():
    assert arrow_pool({}) == "jemalloc"
    assert arrow_pool({"ARROW_DEFAULT_MEMORY_POOL": "system"}) == "system"
    assert arrow_pool({}, command_line=False) == "mimalloc"  # the pyarrow wheels' own
