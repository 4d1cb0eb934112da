"""Files for the formats, local or remote (gs://, s3://, hdfs://), through pyarrow's filesystems: the
formats read data sets without importing Beam (DESIGN.md: a format never imports Beam)."""

import fnmatch
import io
import os
import posixpath
import tarfile
from collections.abc import Iterator

import pyarrow.fs as pafs


def _resolve(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def open_file(path: str, compression: str | None = "detect"):
    """A binary file object for reading: by default a .gz, .bz2 or .zst file is decompressed on the fly
    (a stream); with compression=None the file as stored, seekable (Parquet and tar readers need that)."""
    fs, inner = _resolve(path)
    raw = fs.open_input_file(inner) if compression is None else fs.open_input_stream(inner, compression=compression)
    return io.BufferedReader(raw)  # full io semantics: readline, iteration, peek


def exists(path: str) -> bool:
    fs, inner = _resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, inner = _resolve(path)
    return fs.get_file_info(inner).type == pafs.FileType.Directory


def join(folder: str, *names: str) -> str:
    return posixpath.join(folder, *names) if "://" in folder else os.path.join(folder, *names)


def list_files(folder: str, pattern: str) -> list[str]:
    """The files directly in `folder` whose names match `pattern` (e.g. "*.json"), sorted by path."""
    fs, inner = _resolve(folder)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner))
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = sorted(info.base_name for info in infos if info.type == pafs.FileType.File and fnmatch.fnmatch(info.base_name, pattern))
    return [join(folder, name) for name in names]


def tar_samples(f) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of a tar stream, members grouped by key as webdataset does:
    the key is the member's path up to the first dot of its file name, the extension is lowercased."""
    key, members = None, {}
    with tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            head, _, ext = member.name.rpartition("/")
            stem, _, ext = ext.partition(".")
            name = f"{head}/{stem}" if head else stem
            if name != key and key is not None:
                yield key, members
                members = {}
            key = name
            members[ext.lower()] = tar.extractfile(member).read()
    if key is not None:
        yield key, members
