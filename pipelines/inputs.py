"""Resolve `--input SOURCE=PATH_OR_GLOB` into a named source, its layout and its files, before a pipeline starts.

Layouts, told apart by the files found (a folder means every file in it):
- `webdataset`: img2dataset's webdataset output: `.tar` shards (their `.parquet` and `_stats.json`
  siblings are read beside them, not as inputs);
- `img2dataset-parquet`: img2dataset's parquet output: `.parquet` files with the image bytes in a
  `jpg` (or `png`, `webp`) column and a `status` column;
- `manifest`: `.csv`, `.tsv`, `.jsonl` or other `.parquet` files with a caption column and an image
  column holding a local path or a file:// URL.
Their readers are formats/sources/img2dataset.py and formats/sources/manifest.py. Paths go through
formats/files.py (pyarrow's filesystems), so gs:// and s3:// work as they do for the readers.
"""

from dataclasses import dataclass

import pyarrow.parquet as pq

from cli.usage import UsageError
from formats.files import match, open_file
from formats.sources import manifest
from formats.sources.img2dataset import IMG2DATASET_PARQUET, WEBDATASET, is_img2dataset_parquet

MANIFEST = "manifest"


@dataclass(frozen=True)
class Input:
    """One --input: its source name, layout, the path or glob given, and the files the launcher found
    there (for the checks and counts before the run; the pipeline lists them again itself)."""

    source: str
    layout: str
    path: str
    files: tuple[str, ...]


def parse_input_spec(spec: str) -> tuple[str, str]:
    """'laion-en=/data/laion/*.tar' -> ('laion-en', '/data/laion/*.tar')."""
    source, sep, path = spec.partition("=")
    if not sep or not source or not path:
        raise UsageError(f"--input {spec!r}: expected SOURCE=PATH_OR_GLOB, e.g. laion-en=/data/laion/")
    return source, path


def _parquet_layout(files: list[str]) -> str:
    """img2dataset's parquet output or a manifest, by the schema of the first readable file."""
    for path in files:
        try:
            with open_file(path, compression=None) as f:
                names = pq.read_schema(f).names
        except Exception:  # not Parquet: its reader records the file as a reject
            continue
        return IMG2DATASET_PARQUET if is_img2dataset_parquet(names) else MANIFEST
    return MANIFEST


def layout_files(files: list[str], layout: str) -> tuple[str, ...]:
    """The files of a listing that a layout's reader takes."""
    return tuple(f for f in files if f.endswith(".tar" if layout == WEBDATASET else manifest.SUFFIXES))


def list_input(path: str, layout: str) -> tuple[str, ...]:
    """The files of an input, listed where the pipeline runs (a worker), so that the job graph holds
    the path, not the list (500,000 shards would be about 40 MB of graph)."""
    return layout_files(match(path), layout)


def resolve_input(spec: str) -> Input:
    """The source, layout and files of one --input, or a UsageError saying what is wrong."""
    source, path = parse_input_spec(spec)
    try:
        files = match(path)
    except (OSError, ValueError) as e:  # a scheme pyarrow has no filesystem for, or a bucket it cannot list
        raise UsageError(f"--input {source}: cannot list {path}: {e}") from None
    if not files:
        raise UsageError(f"--input {source}: nothing matches {path}")
    tars = layout_files(files, WEBDATASET)
    if tars:
        return Input(source, WEBDATASET, path, tars)
    usable = layout_files(files, MANIFEST)
    if not usable:
        raise UsageError(f"--input {source}: no .tar, .parquet, .csv, .tsv or .jsonl file in {path}")
    if all(f.endswith(".parquet") for f in usable) and _parquet_layout(usable) == IMG2DATASET_PARQUET:
        return Input(source, IMG2DATASET_PARQUET, path, usable)
    return Input(source, MANIFEST, path, usable)
