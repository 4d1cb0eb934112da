"""Manifests: a list of image-text pairs with each image's path, read into stage-1 RawPairs.

A manifest is a `.csv`, `.tsv`, `.jsonl` or `.parquet` file (not img2dataset's parquet output). Its
columns, the first one present winning: caption `caption`, `text`, `TEXT`; image `image`, `image_path`,
`path`, `filepath`, `file`; key `key`, `id` (else FILE:ROW); url `url`, `URL`. A relative image path is
relative to the manifest's folder; file:// URLs are local paths; http(s) URLs are rejected (nothing
downloads at run time: fetch them with img2dataset first). A line that is not a JSON object, an image
that cannot be read and a file that cannot be parsed each become a RawPair carrying a Reject. Each pair
costs one read of its image file; the manifest is streamed, never held whole.
"""

import csv
import io
import json
import posixpath
from collections.abc import Iterator

from formats import reasons
from formats.files import join, open_file
from formats.pair import RawPair, Reject
from formats.sources.records import error_text, file_name
from formats.sources.img2dataset import caption_bytes, file_reject, parquet_batches

SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
CAPTION_COLUMNS = ("caption", "text", "TEXT")
PATH_COLUMNS = ("image", "image_path", "path", "filepath", "file")
KEY_COLUMNS = ("key", "id")
URL_COLUMNS = ("url", "URL")


def _rows(path: str) -> Iterator[dict | Reject]:
    """Rows of a CSV, TSV, JSONL or Parquet manifest as dicts; a JSONL line that is not an object -> Reject."""
    if path.endswith(".parquet"):
        for batch in parquet_batches(path, CAPTION_COLUMNS + PATH_COLUMNS + KEY_COLUMNS + URL_COLUMNS, as_bytes=CAPTION_COLUMNS):
            yield from batch
        return
    with open_file(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
        if path.endswith(".jsonl"):
            for number, line in enumerate(text, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    row = None
                    problem = f"line {number}: not JSON ({e})"
                else:
                    problem = f"line {number}: not a JSON object"
                yield row if isinstance(row, dict) else Reject(reasons.MEMBER_UNREADABLE, problem)
        else:
            yield from csv.DictReader(text, delimiter="\t" if path.endswith(".tsv") else ",")


def _first(row: dict, names: tuple[str, ...]):
    return next((row[n] for n in names if row.get(n) is not None), None)


def _read_image(manifest: str, location: str) -> bytes | Reject:
    """The bytes of a manifest's image path (relative to the manifest, or file://), or a Reject."""
    if location.startswith("file://"):
        location = location[len("file://") :]
    elif location.startswith(("http://", "https://")):
        return Reject(reasons.IMAGE_UNREADABLE, f"{location}: not a local file (download it with img2dataset first)")
    elif "://" not in location and not location.startswith("/"):
        location = join(posixpath.dirname(manifest) or ".", location)
    try:
        with open_file(location, compression=None) as f:
            return f.read()
    except Exception as e:  # pyarrow raises OSError subclasses, or ValueError for a path it cannot take
        return Reject(reasons.IMAGE_UNREADABLE, f"{location}: {error_text(e)}")


def read_manifest(source: str, path: str) -> Iterator[RawPair]:
    """Pairs listed in one manifest file; each image is read from its path."""
    rows = 0
    try:
        for row in _rows(path):
            key = f"{file_name(path)}:{rows}"
            rows += 1
            if isinstance(row, Reject):
                yield RawPair(source, key, None, None, None, row)
                continue
            key = str(_first(row, KEY_COLUMNS) or key)
            location = _first(row, PATH_COLUMNS)
            pair = RawPair(source, key, _first(row, URL_COLUMNS), caption_bytes(_first(row, CAPTION_COLUMNS)), None)
            image = _read_image(path, str(location)) if location is not None else None
            if isinstance(image, Reject):
                pair.reject = image
            else:
                pair.image = image
            yield pair
    except Exception as e:  # an unreadable file, or a Parquet manifest that is not Parquet
        yield file_reject(source, path, reasons.SHARD_UNREADABLE, f"read {rows} rows, then {error_text(e)}")
        return
    if rows == 0:
        yield file_reject(source, path, reasons.SHARD_EMPTY, "no rows")
