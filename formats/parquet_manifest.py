"""FOLDER/_manifest.json: what the trainer needs from the Parquet footers of an output folder, in one
small JSON file, so that starting a run does not open every file's footer (on an object store, one
request per file).

    {"format": "parquet-manifest/1",
     "files": {"part-00000-of-00004.parquet": {"row_groups": [4096, 4096, 1203],
                                               "columns": ["uid", "task", "input_ids", ...],
                                               "dialects": ["qwen-vl"]}, ...}}

row_groups: rows per row group, in order; columns: the file's column names; dialects: the token
dialects of its rows (formats/dialects.py), from the `dialect` column's row-group statistics where
written, else read from the column; files written before that column are Qwen-VL.

pipelines/stage2.py writes it into packed/ once at the end of a run (`write_manifest`, after every
file is in place; a new run removes the old one first). model/data.py reads it through `layouts`:
a file the manifest of its folder lists takes the manifest's entry, any other file its own footer, so a
missing or partial manifest only costs time. A file rewritten after its manifest with fewer rows is
caught when its row group is read (model/data.py: "the file changed").
"""

from __future__ import annotations

import json
import os
import posixpath

import pyarrow.parquet as pq

from formats.files import _resolve, exists, join, list_files, open_file

MANIFEST = "_manifest.json"
FORMAT = "parquet-manifest/1"
DEFAULT_DIALECT = "qwen-vl"  # files written before the dialect column


def _dialects(path: str, meta: pq.FileMetaData) -> list[str]:
    """The token dialects of a file's rows: its `dialect` column's values, from the row groups'
    statistics where written, else read; files written before the column are Qwen-VL."""
    names = meta.schema.to_arrow_schema().names
    if "dialect" not in names:
        return [DEFAULT_DIALECT]
    column = names.index("dialect")
    found: set[str] = set()
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max:
            with open_file(path, compression=None) as f:
                values = pq.read_table(f, columns=["dialect"]).column("dialect").drop_null().unique().to_pylist()
            return sorted(values) or [DEFAULT_DIALECT]
        found |= {stats.min, stats.max}
    return sorted(found) or [DEFAULT_DIALECT]


def file_layout(path: str) -> dict:
    """One file's manifest entry, from its footer."""
    with open_file(path, compression=None) as f:
        meta = pq.ParquetFile(f).metadata
    return {
        "row_groups": [meta.row_group(g).num_rows for g in range(meta.num_row_groups)],
        "columns": meta.schema.to_arrow_schema().names,
        "dialects": _dialects(path, meta),
    }


def write_manifest(folder: str) -> str | None:
    """Write FOLDER/_manifest.json for the *.parquet files directly in `folder` (written beside it, then
    renamed into place); returns its path, or None when the folder holds no Parquet file (nothing
    written)."""
    files = list_files(folder, "*.parquet")
    if not files:
        return None
    record = {"format": FORMAT, "files": {_name(path): file_layout(path) for path in files}}
    path = join(folder, MANIFEST)
    fs, inner = _resolve(path)
    partial = inner + ".partial"
    with fs.open_output_stream(partial) as f:
        f.write((json.dumps(record, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    fs.move(partial, inner)
    return path


def read_manifest(folder: str) -> dict[str, dict] | None:
    """{file name: entry} of FOLDER/_manifest.json, or None when there is none (a ValueError when it is
    not a manifest of this format)."""
    path = join(folder, MANIFEST)
    if not exists(path):
        return None
    with open_file(path, compression=None) as f:
        record = json.loads(f.read().decode("utf-8"))
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} manifest (format {record.get('format') if isinstance(record, dict) else None!r})")
    return record["files"]


def _name(path: str) -> str:
    return posixpath.basename(path) if "://" in path else os.path.basename(path)


def _folder(path: str) -> str:
    return posixpath.dirname(path) if "://" in path else os.path.dirname(path)


def layouts(files: list[str]) -> tuple[list[dict], int]:
    """Each file's entry, in the order given: from the manifest of its folder where it lists the file,
    else from the file's footer; and how many footers were opened."""
    manifests: dict[str, dict | None] = {}
    out, opened = [], 0
    for path in files:
        folder = _folder(path)
        if folder not in manifests:
            manifests[folder] = read_manifest(folder or ".")
        entry = (manifests[folder] or {}).get(_name(path))
        if entry is None:
            entry, opened = file_layout(path), opened + 1
        out.append(entry)
    return out, opened
