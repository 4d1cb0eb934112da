"""formats/files.py: reading Parquet files of images without holding them whole; creating files as Arrow streams;
webdataset tars read in place or as a stream; a file read through once dropped from the page cache."""

import ctypes
import gzip
import io
import os
import tarfile
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from formats.files import create_file, drop_cached, open_file, parquet_file, tar_samples

GROUP_BYTES = 2 << 20  # per row group: 20 rows of 100 KB
GROUPS = 10


def test_parquet_file_holds_one_row_group_at_a_time(tmp_path):
    path = str(tmp_path / "images.parquet")
    schema = pa.schema([("image", pa.binary())])
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for _ in range(GROUPS):
            writer.write_table(pa.table({"image": [os.urandom(GROUP_BYTES // 20) for _ in range(20)]}, schema))
    tracemalloc.start()
    try:
        with open_file(path, compression=None) as f:
            rows = sum(batch.num_rows for batch in parquet_file(f).iter_batches(batch_size=20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == 20 * GROUPS
    assert peak < 3 * GROUP_BYTES  # pyarrow's default (pre_buffer) kept all ten row groups: over 20 MB


def test_create_file_makes_its_folder_and_is_an_arrow_stream(tmp_path):
    path = tmp_path / "new" / "folder" / "rows.parquet.partial-1"
    with create_file(str(path)) as out:
        assert isinstance(out, pa.NativeFile)  # Arrow writes into it without a Python file object
        out.write(b"written as it is")  # no compression guessed from the name
    assert path.read_bytes() == b"written as it is"


class Stream(io.RawIOBase):
    """A file that cannot seek, as a pipe or a download stream."""

    def __init__(self, data: bytes):
        self.inner = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        return self.inner.readinto(buffer)


def webdataset_tar(samples: dict[str, dict[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_tar_samples_are_the_same_in_place_and_as_a_stream(tmp_path):
    samples = {"shard/000": {"jpg": os.urandom(150_000), "txt": b"a red bus"}, "shard/001": {"jpg": os.urandom(70_000), "json": b"{}"}}
    data = webdataset_tar(samples)
    (tmp_path / "s.tar").write_bytes(data)
    (tmp_path / "s.tar.gz").write_bytes(gzip.compress(data))
    for name in ("s.tar", "s.tar.gz"):
        with open_file(str(tmp_path / name), compression=None) as f:
            assert f.seekable() and dict(tar_samples(f)) == samples
        stream = io.BufferedReader(Stream((tmp_path / name).read_bytes()))
        assert not stream.seekable() and dict(tar_samples(stream)) == samples


def cached_pages(path: str) -> int:
    """How many of a file's pages are in the page cache (mincore on a mapping never touched)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    size, page = os.path.getsize(path), os.sysconf("SC_PAGE_SIZE")
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
    finally:
        os.close(fd)
    pages = (ctypes.c_ubyte * ((size + page - 1) // page))()
    try:
        assert libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), pages) == 0
    finally:
        libc.munmap(ctypes.c_void_p(address), ctypes.c_size_t(size))
    return sum(p & 1 for p in pages)


def filesystem_type(path: str) -> str:
    mounts = [line.split()[1:3] for line in open("/proc/mounts")]
    return max((m for m in mounts if path.startswith(m[0])), key=lambda m: len(m[0]))[1]


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or not os.path.exists("/proc/mounts"), reason="Linux only: posix_fadvise, /proc/mounts")
def test_drop_cached_frees_a_files_clean_pages(tmp_path):
    if filesystem_type(str(tmp_path)) == "tmpfs":
        pytest.skip("a tmpfs file lives in memory: there is no cache to drop")
    path = str(tmp_path / "shard.tar")
    with open(path, "wb") as f:
        f.write(os.urandom(4 << 20))
        f.flush()
        os.fsync(f.fileno())  # written back: clean pages, which the kernel can drop
    with open(path, "rb") as f:
        assert len(f.read()) == 4 << 20
    assert cached_pages(path) == (4 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert drop_cached(path) is True
    assert cached_pages(path) == 0
    with open(path, "rb") as f:
        assert len(f.read()) == 4 << 20  # the file itself is untouched


def test_drop_cached_acts_on_local_files_only(tmp_path):
    (tmp_path / "here.tar").write_bytes(b"x")
    assert drop_cached(f"file://{tmp_path}/here.tar") is True  # a local file named by URI is local
    assert drop_cached("gs://bucket/shard.tar") is False
    assert drop_cached(str(tmp_path / "gone.tar")) is False
