"""Resolve `--input SOURCE=PATH_OR_GLOB` into a named source, its layout and its files, before a pipeline starts.

Layouts, told apart by the files found (a folder means every file in it):
- `webdataset`: img2dataset's webdataset output: `.tar` shards (their `.parquet` and `_stats.json`
  siblings are read beside them, not as inputs);
- `img2dataset-parquet`: img2dataset's parquet output: `.parquet` files with the image bytes in a
  `jpg` (or `png`, `webp`) column and a `status` column;
- `manifest`: `.csv`, `.tsv`, `.jsonl` or other `.parquet` files with a caption column and an image
  column holding a local path or a file:// URL (see pipelines/readers.py for the column names).
Paths go through Beam's FileSystems, so gs:// and s3:// work where Beam has those filesystems installed.
"""

from dataclasses import dataclass

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from cli.usage import UsageError

WEBDATASET, IMG2DATASET_PARQUET, MANIFEST = "webdataset", "img2dataset-parquet", "manifest"
IMAGE_COLUMNS = ("jpg", "png", "webp")  # img2dataset names the image column after its encode format
MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Input:
    source: str
    layout: str
    files: tuple[str, ...]


def parse_input_spec(spec: str) -> tuple[str, str]:
    """'laion-en=/data/laion/*.tar' -> ('laion-en', '/data/laion/*.tar')."""
    source, sep, path = spec.partition("=")
    if not sep or not source or not path:
        raise UsageError(f"--input {spec!r}: expected SOURCE=PATH_OR_GLOB, e.g. laion-en=/data/laion/")
    return source, path


def _match(pattern: str) -> list[str]:
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # Beam raises BeamIOError, or ValueError for a scheme it has no filesystem for
        return []


def _files(path: str) -> list[str]:
    """The files a path names: a folder's files, or what a file name or glob matches."""
    return _match(path.rstrip("/") + "/") or _match(path)


def _parquet_layout(files: list[str]) -> str:
    """img2dataset's parquet output or a manifest, by the schema of the first readable file."""
    for path in files:
        try:
            with FileSystems.open(path) as f:
                names = set(pq.read_schema(f).names)
        except Exception:  # not Parquet: its reader records the file as a reject
            continue
        return IMG2DATASET_PARQUET if "status" in names and any(c in names for c in IMAGE_COLUMNS) else MANIFEST
    return MANIFEST


def resolve_input(spec: str) -> Input:
    """The source, layout and files of one --input, or a UsageError saying what is wrong."""
    source, path = parse_input_spec(spec)
    files = _files(path)
    if not files:
        raise UsageError(f"--input {source}: nothing matches {path}")
    tars = [f for f in files if f.endswith(".tar")]
    if tars:
        return Input(source, WEBDATASET, tuple(tars))
    usable = [f for f in files if f.endswith(MANIFEST_SUFFIXES)]
    if not usable:
        raise UsageError(f"--input {source}: no .tar, .parquet, .csv, .tsv or .jsonl file in {path}")
    if all(f.endswith(".parquet") for f in usable) and _parquet_layout(usable) == IMG2DATASET_PARQUET:
        return Input(source, IMG2DATASET_PARQUET, tuple(usable))
    return Input(source, MANIFEST, tuple(usable))
