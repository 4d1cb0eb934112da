"""Readers: one input file -> RawPairs, for each layout of pipelines/inputs.py. Plain generators, wrapped
in Beam DoFns by pipelines/stage1.py, so each is testable on its own.

No pair is ever lost without a row: a file that cannot be read, a tar cut off in the middle, a member
missing its caption, a failed download, a manifest line that is not JSON or an image path that cannot be
read each become a RawPair carrying a Reject (formats/reasons.py), which the rules pass straight through.

Manifest columns (first one present wins): caption `caption`, `text`, `TEXT`; image `image`,
`image_path`, `path`, `filepath`, `file`; key `key`, `id` (else FILE:ROW); url `url`, `URL`. A relative
image path is relative to the manifest's folder; file:// URLs are local paths; http(s) URLs are rejected
(nothing downloads at run time: fetch them with img2dataset first).
"""

import csv
import io
import json
import posixpath
import tarfile
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from formats import reasons
from formats.pair import RawPair
from formats.pair import Reject
from formats.files import tar_samples
from pipelines.inputs import IMAGE_COLUMNS

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tiff")
CAPTION_COLUMNS = ("caption", "text", "TEXT")
PATH_COLUMNS = ("image", "image_path", "path", "filepath", "file")
KEY_COLUMNS = ("key", "id")
URL_COLUMNS = ("url", "URL")
BATCH_ROWS = 256


def _name(path: str) -> str:
    return posixpath.basename(path)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _file_reject(source: str, path: str, reason: str, detail: str) -> RawPair:
    """A row standing for a whole file whose pairs cannot be counted: its key is the file's path."""
    return RawPair(source, path, None, None, None, Reject(reason, detail))


# --- img2dataset webdataset ----------------------------------------------------------------------


def _shard_metadata(tar_path: str) -> dict[str, dict]:
    """img2dataset's per-shard parquet beside a tar: key -> its row (empty if there is none)."""
    meta_path = tar_path[: -len(".tar")] + ".parquet"
    if not FileSystems.exists(meta_path):
        return {}
    wanted = ("key", "url", "caption", "status", "error_message")
    return {row["key"]: row for batch in _parquet_batches(meta_path, wanted) for row in batch}


def _webdataset_pair(source: str, key: str, members: dict, meta: dict) -> RawPair:
    image = next((members[e] for e in IMAGE_EXTENSIONS if members.get(e) is not None), None)
    url = meta.get("url")
    if url is None and members.get("json"):
        try:
            url = json.loads(members["json"]).get("url")
        except (ValueError, AttributeError):
            url = None
    return RawPair(source, key, url, members.get("txt"), image)


def read_webdataset(source: str, path: str) -> Iterator[RawPair]:
    """Pairs of one img2dataset webdataset shard, with the failed downloads its parquet records."""
    try:
        meta = _shard_metadata(path)
    except Exception as e:  # an unreadable sidecar costs only the failed-download rows: say so, go on
        meta = {}
        yield _file_reject(source, path[: -len(".tar")] + ".parquet", reasons.SHARD_UNREADABLE, _error(e))
    seen: set[str] = set()
    cut = None
    try:
        with FileSystems.open(path) as f:
            if not f.read(1):
                if not meta:
                    yield _file_reject(source, path, reasons.SHARD_EMPTY, "empty file")
                    return
            f.seek(0)
            for key, members in tar_samples(f):
                seen.add(key)
                yield _webdataset_pair(source, key, members, meta.get(key, {}))
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        cut = _error(e)
    for key, row in meta.items():
        if key in seen:
            continue
        if row["status"] != "success":
            failed = Reject(reasons.DOWNLOAD_FAILED, str(row["error_message"]))
            yield RawPair(source, key, row["url"], row.get("caption"), None, failed)
        else:
            detail = f"not in {_name(path)}: {cut}" if cut else f"listed in the shard's parquet, not in {_name(path)}"
            seen.add(key)
            yield RawPair(source, key, row["url"], None, None, Reject(reasons.MEMBER_UNREADABLE, detail))
    if cut and not meta:
        yield _file_reject(source, path, reasons.SHARD_UNREADABLE, f"read {len(seen)} samples, then {cut}")
    elif not seen and not meta:
        yield _file_reject(source, path, reasons.SHARD_EMPTY, "no sample in the tar")


# --- img2dataset parquet -------------------------------------------------------------------------


def _parquet_batches(path: str, wanted: tuple[str, ...]) -> Iterator[list[dict]]:
    """Rows of a Parquet file in small batches, only the columns in `wanted` that it has."""
    with FileSystems.open(path) as f:
        parquet = pq.ParquetFile(f)
        columns = [c for c in parquet.schema_arrow.names if c in wanted]
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            # captions as bytes: a string column can hold bytes that are not UTF-8, which the rules reject
            for i, name in enumerate(batch.schema.names):
                if name in CAPTION_COLUMNS and pa.types.is_string(batch.schema.types[i]):
                    batch = batch.set_column(i, name, batch.column(i).cast(pa.binary()))
            yield batch.to_pylist()


def _as_bytes(value) -> bytes | None:
    return value.encode("utf-8", errors="surrogateescape") if isinstance(value, str) else value


def read_img2dataset_parquet(source: str, path: str) -> Iterator[RawPair]:
    """Pairs of one img2dataset parquet shard: image bytes in `jpg` (or `png`, `webp`); failed downloads
    are rows with a status other than success and no image."""
    wanted = ("key", "url", "caption", "status", "error_message") + IMAGE_COLUMNS
    rows = 0
    try:
        for batch in _parquet_batches(path, wanted):
            for row in batch:
                rows += 1
                key = str(row.get("key") or f"{_name(path)}:{rows - 1}")
                image = next((row[c] for c in IMAGE_COLUMNS if row.get(c) is not None), None)
                pair = RawPair(source, key, row.get("url"), _as_bytes(row.get("caption")), image)
                if row.get("status", "success") != "success":
                    pair.reject = Reject(reasons.DOWNLOAD_FAILED, str(row.get("error_message")))
                yield pair
    except Exception as e:  # pyarrow raises several types for a file that is not (or no longer) Parquet
        yield _file_reject(source, path, reasons.SHARD_UNREADABLE, f"read {rows} rows, then {_error(e)}")
        return
    if rows == 0:
        yield _file_reject(source, path, reasons.SHARD_EMPTY, "no rows")


# --- manifests -----------------------------------------------------------------------------------


def _manifest_rows(path: str) -> Iterator[dict | Reject]:
    """Rows of a CSV, TSV, JSONL or Parquet manifest as dicts; a JSONL line that is not an object -> Reject."""
    if path.endswith(".parquet"):
        for batch in _parquet_batches(path, CAPTION_COLUMNS + PATH_COLUMNS + KEY_COLUMNS + URL_COLUMNS):
            yield from batch
        return
    with FileSystems.open(path) as f:
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
        location = FileSystems.join(posixpath.dirname(manifest) or ".", location)
    try:
        with FileSystems.open(location, compression_type="uncompressed") as f:
            return f.read()
    except Exception as e:  # Beam wraps OSError in BeamIOError
        return Reject(reasons.IMAGE_UNREADABLE, f"{location}: {_error(e)}")


def read_manifest(source: str, path: str) -> Iterator[RawPair]:
    """Pairs listed in one manifest file; each image is read from its path."""
    rows = 0
    try:
        for row in _manifest_rows(path):
            key = f"{_name(path)}:{rows}"
            rows += 1
            if isinstance(row, Reject):
                yield RawPair(source, key, None, None, None, row)
                continue
            key = str(_first(row, KEY_COLUMNS) or key)
            location = _first(row, PATH_COLUMNS)
            pair = RawPair(source, key, _first(row, URL_COLUMNS), _as_bytes(_first(row, CAPTION_COLUMNS)), None)
            image = _read_image(path, str(location)) if location is not None else None
            if isinstance(image, Reject):
                pair.reject = image
            else:
                pair.image = image
            yield pair
    except Exception as e:  # an unreadable file, or a Parquet manifest that is not Parquet
        yield _file_reject(source, path, reasons.SHARD_UNREADABLE, f"read {rows} rows, then {_error(e)}")
        return
    if rows == 0:
        yield _file_reject(source, path, reasons.SHARD_EMPTY, "no rows")
