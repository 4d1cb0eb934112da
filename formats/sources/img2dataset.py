"""img2dataset's output layouts, read into stage-1 RawPairs; the shard helpers GRIT's reader shares.

img2dataset (github.com/rom1504/img2dataset, README "Output format choice") writes, per shard:
- `webdataset`: NNNNN.tar, whose members are KEY.jpg (the image, named after its encode format), KEY.txt
  (the caption) and KEY.json (its metadata, with `url`), beside NNNNN.parquet (one row per pair tried:
  key, url, caption, status, error_message, ...; the failed downloads are only there) and
  NNNNN_stats.json;
- `parquet`: NNNNN.parquet with the same metadata columns and the image bytes in a column named after
  the encode format (`jpg`, `png` or `webp`), null where `status` is not success.

No pair is ever lost without a row: a file that cannot be read, a tar cut off in the middle, a member
missing its caption or a failed download each become a RawPair carrying a Reject (formats/reasons.py),
which the rules pass straight through. A webdataset shard costs one pass over its tar and holds its
sidecar's metadata rows (thousands per shard, no images) while it is read.
"""

import json
import tarfile
from collections.abc import Iterator

import pyarrow as pa

from formats import reasons
from formats.files import exists, open_file, parquet_file, tar_samples
from formats.pair import RawPair, Reject
from formats.sources.records import error_text, file_name

WEBDATASET, IMG2DATASET_PARQUET = "webdataset", "img2dataset-parquet"
IMAGE_COLUMNS = ("jpg", "png", "webp")  # img2dataset names the image column after its encode format
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tiff")  # image members of a webdataset sample
METADATA_COLUMNS = ("key", "url", "caption", "status", "error_message")
BATCH_ROWS = 256


def sidecar(tar_path: str) -> str:
    """The metadata Parquet img2dataset writes beside a webdataset shard."""
    return tar_path[: -len(".tar")] + ".parquet"


def is_img2dataset_parquet(columns) -> bool:
    """img2dataset's parquet output, by its columns: a `status` and an image column."""
    names = set(columns)
    return "status" in names and any(c in names for c in IMAGE_COLUMNS)


def parquet_batches(path: str, wanted: tuple[str, ...], as_bytes: tuple[str, ...] = (), batch_rows: int = BATCH_ROWS) -> Iterator[list[dict]]:
    """Rows of a Parquet file in small batches, only the columns in `wanted` that it has; the string
    columns named in `as_bytes` come as bytes (a string column can hold bytes that are not UTF-8)."""
    with open_file(path, compression=None) as f:
        parquet = parquet_file(f)
        columns = [c for c in parquet.schema_arrow.names if c in wanted]
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            for i, name in enumerate(batch.schema.names):
                if name in as_bytes and pa.types.is_string(batch.schema.types[i]):
                    batch = batch.set_column(i, name, batch.column(i).cast(pa.binary()))
            yield batch.to_pylist()


def file_reject(source: str, path: str, reason: str, detail: str) -> RawPair:
    """A row standing for a whole file whose pairs cannot be counted: its key is the file's path."""
    return RawPair(source, path, None, None, None, Reject(reason, detail))


def caption_bytes(value) -> bytes | None:
    return value.encode("utf-8", errors="surrogateescape") if isinstance(value, str) else value


# --- webdataset ----------------------------------------------------------------------------------


def _shard_metadata(tar_path: str) -> dict[str, dict]:
    """The sidecar's rows by key (empty if there is none)."""
    if not exists(sidecar(tar_path)):
        return {}
    batches = parquet_batches(sidecar(tar_path), METADATA_COLUMNS, as_bytes=("caption",))
    return {row["key"]: row for batch in batches for row in batch}


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
    """Pairs of one webdataset shard, with the failed downloads its sidecar records."""
    try:
        meta = _shard_metadata(path)
    except Exception as e:  # an unreadable sidecar costs only the failed-download rows: say so, go on
        meta = {}
        yield file_reject(source, sidecar(path), reasons.SHARD_UNREADABLE, error_text(e))
    seen: set[str] = set()
    cut = None
    try:
        with open_file(path, compression=None) as f:
            if not f.read(1):
                if not meta:
                    yield file_reject(source, path, reasons.SHARD_EMPTY, "empty file")
                    return
            f.seek(0)
            for key, members in tar_samples(f):
                seen.add(key)
                yield _webdataset_pair(source, key, members, meta.get(key, {}))
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        cut = error_text(e)
    for key, row in meta.items():
        if key in seen:
            continue
        if row["status"] != "success":
            failed = Reject(reasons.DOWNLOAD_FAILED, str(row["error_message"]))
            yield RawPair(source, key, row["url"], row.get("caption"), None, failed)
        else:
            detail = f"not in {file_name(path)}: {cut}" if cut else f"listed in the shard's parquet, not in {file_name(path)}"
            seen.add(key)
            yield RawPair(source, key, row["url"], None, None, Reject(reasons.MEMBER_UNREADABLE, detail))
    if cut and not meta:
        yield file_reject(source, path, reasons.SHARD_UNREADABLE, f"read {len(seen)} samples, then {cut}")
    elif not seen and not meta:
        yield file_reject(source, path, reasons.SHARD_EMPTY, "no sample in the tar")


# --- parquet -------------------------------------------------------------------------------------


def read_img2dataset_parquet(source: str, path: str) -> Iterator[RawPair]:
    """Pairs of one parquet shard: image bytes in `jpg` (or `png`, `webp`); failed downloads are rows
    with a status other than success and no image."""
    rows = 0
    try:
        for batch in parquet_batches(path, METADATA_COLUMNS + IMAGE_COLUMNS, as_bytes=("caption",)):
            for row in batch:
                rows += 1
                key = str(row.get("key") or f"{file_name(path)}:{rows - 1}")
                image = next((row[c] for c in IMAGE_COLUMNS if row.get(c) is not None), None)
                pair = RawPair(source, key, row.get("url"), caption_bytes(row.get("caption")), image)
                if row.get("status", "success") != "success":
                    pair.reject = Reject(reasons.DOWNLOAD_FAILED, str(row.get("error_message")))
                yield pair
    except Exception as e:  # pyarrow raises several types for a file that is not (or no longer) Parquet
        yield file_reject(source, path, reasons.SHARD_UNREADABLE, f"read {rows} rows, then {error_text(e)}")
        return
    if rows == 0:
        yield file_reject(source, path, reasons.SHARD_EMPTY, "no rows")
