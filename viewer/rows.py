"""Parquet outputs read for a person: the rows of a file or folder, and a sample's tokens decoded back.

PATH is a Parquet file or a folder of them, read as one dataset in sorted file order. Only the rows
asked for are read: row groups without one are skipped, a row group is read batch by batch from its
start and no further than its last row asked for, and the row count comes from the footers: a curated
shard holds GBs of image bytes, and nothing here pulls them all in.

The kind of data is told by its column names (`kind_of`): stage-2/sft samples have `input_ids` and
`loss_mask` but no `doc_ids` (formats/schemas.py SAMPLES), packed sequences have `doc_ids` (PACKED),
anything else is stage-1 pairs (curated/, rejected/). A sample's `input_ids` decode back to text with
formats/tokenizer.py in the row's dialect (its `dialect` column; Qwen-VL where it is null or absent, as in
files written before Qwen2-VL), in runs of one loss_mask value. Each image span (`<img>REF</img>`, or
`<|vision_start|>REF<|vision_end|>` for a Qwen2-VL image or video) is one of the row's `visions`, in
order: REF from `image_refs` (`video_refs`) for a sample, `images[i]` (`videos[i]`) for a packed row. A
packed row is read per document: a run of one `doc_ids` value, whose position ids restart at 0, holding
the images and videos whose spans start in it.
"""

import functools
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from formats.dialects import Dialect, row_dialect
from formats.dynamic_resolution import image_tokens
from formats.tokenizer import QwenTokenizer, VocabularyError

MAX_TEXT = 200  # characters of a string shown by `describe`
LIST_ITEMS = 3  # items of a list shown by `describe`
BATCH_ROWS = 64  # rows per read at most: a few rows never pull a whole row group of images
TOKEN_BATCH_ROWS = 8  # the same for samples and packed rows, which hold 2048 ids and several images each
# pyarrow's defaults (pre_buffer=True, buffer_size=0) read a whole column chunk before the first row;
# buffered reads without pre-buffering fetch it page by page, only as far as the rows read.
READ_OPTIONS = dict(pre_buffer=False, buffer_size=1 << 20)
# What PIL raises on bad bytes, as in filters/image_rules.py.
# Sizes are shown (and, past stage 1's limit, never decoded: viewer/contact_sheet.py): PIL's bomb warning
# on opening a large image's header would only be noise in `inspect`'s output.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

PAIRS, SAMPLES, PACKED = "pairs", "samples", "packed"


def _footer(file: Path) -> pq.FileMetaData:
    """The file's Parquet footer: schema and row count, no data read."""
    try:
        return pq.read_metadata(file)
    except pa.ArrowInvalid:
        raise ValueError(f"not a Parquet file: {file}") from None


class Dataset:
    """The Parquet files under a path, their total size, schema and row count, from the footers only."""

    def __init__(self, path: str):
        self.path = path
        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        self.files = sorted(root.glob("*.parquet")) if root.is_dir() else [root]
        if not self.files:
            raise FileNotFoundError(f"no .parquet files in {path}")
        self.size = sum(os.path.getsize(f) for f in self.files)
        self.footers = [_footer(f) for f in self.files]
        self.schema = self.footers[0].schema.to_arrow_schema()
        for f, footer in zip(self.files, self.footers):
            if not footer.schema.to_arrow_schema().equals(self.schema):
                raise ValueError(f"schema of {f} differs from that of {self.files[0]}")
        self.num_rows = sum(footer.num_rows for footer in self.footers)

    def label(self) -> str:
        """'3 Parquet files, 1.2 GB'."""
        return f"{len(self.files)} Parquet file{'s' if len(self.files) != 1 else ''}, {human_size(self.size)}"

    @property
    def kind(self) -> str:
        """PACKED, SAMPLES or PAIRS, from the column names."""
        return kind_of(self.schema.names)

    def values(self, column: str) -> list:
        """One column of every row, in order (that column alone is read)."""
        return [v for f in self.files for v in pq.read_table(f, columns=[column]).column(0).to_pylist()]

    def take(self, indices, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS):
        """The rows at `indices` (increasing row numbers in the dataset's order), of the given columns, one by
        one as dicts of Python values: each row group holding one is read from its start, at most
        `batch_rows` rows at a time, up to its last row asked for."""
        wanted = list(indices)
        at, start = 0, 0  # the next wanted index's position in `wanted`; the current row group's first row
        for f, footer in zip(self.files, self.footers):
            if at == len(wanted):
                return
            if wanted[at] >= start + footer.num_rows:
                start += footer.num_rows
                continue
            with pq.ParquetFile(f, **READ_OPTIONS) as parquet:
                for group in range(footer.num_row_groups):
                    end = start + footer.row_group(group).num_rows
                    here = at
                    while here < len(wanted) and wanted[here] < end:
                        here += 1
                    if here > at:
                        yield from self._from_group(parquet, group, start, wanted[at:here], columns, min(here - at, batch_rows))
                    at, start = here, end

    @staticmethod
    def _from_group(parquet, group: int, start: int, wanted: list[int], columns, batch_rows: int):
        """The rows `wanted` (dataset row numbers) of row group `group`, whose first row is `start`."""
        i = 0
        for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns):
            while i < len(wanted) and wanted[i] < start + batch.num_rows:
                yield batch.slice(wanted[i] - start, 1).to_pylist()[0]
                i += 1
            if i == len(wanted):
                return
            start += batch.num_rows


def human_size(n: int) -> str:
    """A byte count for people: 812 B, 47.6 KB, 3.1 MB (1 KB = 1000 bytes)."""
    if n < 1000:
        return f"{n} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            break
    return f"{n:.1f} {unit}"


def image_summary(data: bytes, total: int | None = None) -> str:
    """Format, size and byte count from the image header alone (no decode): 'JPEG 640x480, 47.6 KB'
    (with `total` bytes in place of the image's own: a video's frames)."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return f"{len(data):,} bytes, not an image"
    except DECODE_ERRORS as e:  # a cut-off header, or a decompression bomb's size
        return f"{len(data):,} bytes, bad image header: {e}"
    return f"{image.format} {image.width}x{image.height}, {human_size(len(data) if total is None else total)}"


def show_value(value) -> str:
    """One value as `describe` shows it: bytes summarized, long strings cut, lists shortened."""
    if value is None:
        return "null"
    if isinstance(value, bytes):
        return f"<{image_summary(value)}>"
    if isinstance(value, str):
        text = value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"
        return text.replace("\r", "\\r").replace("\n", "\\n")
    if isinstance(value, float):
        return f"{value:.6g}"  # float32 columns read back as 0.3100000023841858 otherwise
    if isinstance(value, list):
        items = ", ".join(show_value(v) for v in value[:LIST_ITEMS])
        more = ", …" if len(value) > LIST_ITEMS else ""
        return f"list of {len(value)}: [{items}{more}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show_value(v)}" for k, v in value.items()) + "}"
    return str(value)



def kind_of(names) -> str:
    """PACKED (doc_ids), SAMPLES (input_ids and loss_mask) or PAIRS (anything else), by column names."""
    names = set(names)
    if {"input_ids", "loss_mask"} <= names:
        return PACKED if "doc_ids" in names else SAMPLES
    return PAIRS


@functools.cache
def tokenizer(dialect: str) -> QwenTokenizer:
    """The tokenizer of a dialect, loaded once."""
    try:
        return QwenTokenizer(None, dialect=dialect)
    except VocabularyError as e:
        raise ValueError(f"cannot decode input_ids: {e}") from None


def _item(values: list | None, i: int):
    """values[i], None where the list is null or too short."""
    return values[i] if values is not None and i < len(values) else None


MEDIA_COLUMN = {False: "images", True: "videos"}  # a row's column of images, of videos


@dataclass
class Vision:
    """One image or video of a row: whether a video, its index in `images` (`videos`), its ref (a sample's
    image_refs or video_refs), where its span starts in the ids (None: in no span) and that span's pads."""

    video: bool
    index: int
    ref: str | None
    at: int | None
    pads: int

    @property
    def column(self) -> str:
        """The row's column that holds it."""
        return MEDIA_COLUMN[self.video]

    @property
    def name(self) -> str:
        """What decoded text calls it: its ref, else images[i] (videos[i])."""
        return self.ref or f"{self.column}[{self.index}]"


def visions(row: dict) -> list[Vision]:
    """A sample's or packed row's images and videos in the order of their spans in the ids, then those that
    no span holds."""
    d = row_dialect(row)
    special = tokenizer(d.name).special_ids
    start, image_pad, video_pad = special[d.image], special[d.image_pad], special.get(d.video_pad)
    ids = row.get("input_ids") or []
    refs = {False: row.get("image_refs"), True: row.get("video_refs")}
    out, seen = [], {False: 0, True: 0}
    for at in (i for i, token in enumerate(ids) if token == start):
        video = video_pad is not None and ids[at + 1 : at + 2] == [video_pad]
        pad, end = video_pad if video else image_pad, at + 1
        while end < len(ids) and ids[end] == pad:
            end += 1
        out.append(Vision(video, seen[video], _item(refs[video], seen[video]), at, end - at - 1))
        seen[video] += 1
    for video, column in MEDIA_COLUMN.items():
        out += [Vision(video, k, _item(refs[video], k), None, 0) for k in range(seen[video], len(row.get(column) or ()))]
    return out


def vision_data(row: dict, v: Vision) -> bytes | None:
    """An image's bytes, a video's first frame; None where the row has none."""
    data = _item(row.get(v.column), v.index)
    return _item(data, 0) if v.video else data


def _tokens(grid: list | None, v: Vision) -> str:
    """'392 tokens' from a (t, h, w) grid, flagged where the image's span holds another number of pads."""
    if grid is None:
        return "no grid"
    try:
        n = image_tokens(tuple(grid))
    except (TypeError, ValueError):
        return f"grid {grid}: not whole tokens"
    if v.at is None:
        return f"{n:,} tokens, in no span of the ids"
    return f"{n:,} tokens" + (f", but its span holds {v.pads:,}" if v.pads != n else "")


def vision_facts(row: dict, v: Vision) -> str:
    """What an image is and what the model gets of it: 'PNG 1024x768, 47.6 KB -> 1008x756, 972 tokens'
    (the stored size -> image_sizes, and image_grid_thw's tokens); a video: '8 frames of JPEG 448x252,
    93.1 KB -> 576 tokens' (video_grid_thw's). Qwen-VL's images, all 256 tokens, only as stored."""
    if v.video:
        frames = _item(row.get("videos"), v.index) or []
        stored = f"{len(frames)} frames" + (f" of {image_summary(frames[0], sum(map(len, frames)))}" if frames else "")
        return f"{stored} -> {_tokens(_item(row.get('video_grid_thw'), v.index), v)}"
    data = _item(row.get("images"), v.index)
    stored = "no image bytes" if data is None else image_summary(data)
    if row_dialect(row).image_slots is not None:
        return stored
    size = _item(row.get("image_sizes"), v.index)
    resized = f"{size[1]}x{size[0]}" if size is not None and len(size) == 2 else "no size"
    return f"{stored} -> {resized}, {_tokens(_item(row.get('image_grid_thw'), v.index), v)}"


def decoded_runs(ids: list[int], mask: list[int], names: list[str], dialect: Dialect) -> list[tuple[str, bool]]:
    """The decoded text of `ids` in runs of one loss_mask value: (text, supervised). Each run is decoded
    on its own (a sample's runs are its segments, each encoded on its own, so no character spans two);
    `names` name the image spans in order (a run takes as many as it holds image-start tokens)."""
    tok = tokenizer(dialect.name)
    flags = [1 if m else 0 for m in mask[: len(ids)]] + [0] * (len(ids) - len(mask))
    runs, start, image = [], 0, 0
    for end in range(1, len(ids) + 1):
        if end < len(ids) and flags[end] == flags[start]:
            continue
        chunk = ids[start:end]
        count = chunk.count(tok.special_ids[dialect.image])
        runs.append((_decode(tok, chunk, names[image : image + count]), bool(flags[start])))
        image += count
        start = end
    return runs


def _decode(tok: QwenTokenizer, ids: list, names: list[str]) -> str:
    """tok.decode, with an id that is no token (out of the vocabulary, null) shown as [bad id X]."""
    if all(isinstance(i, int) and 0 <= i < tok.n_vocab for i in ids):
        return tok.decode(ids, images=names)
    out, start, image = [], 0, 0
    for end, i in enumerate([*ids, None]):
        if end < len(ids) and isinstance(i, int) and 0 <= i < tok.n_vocab:
            continue
        good = ids[start:end]
        count = good.count(tok.special_ids[tok.dialect.image])
        out.append(tok.decode(good, images=names[image : image + count]))
        image += count
        if end < len(ids):
            out.append(f"[bad id {i}]")
        start = end + 1
    return "".join(out)


def span_names(vs: list[Vision]) -> list[str]:
    """The names of the images and videos held in spans, in order: what decoded text shows."""
    return [v.name for v in vs if v.at is not None]


@dataclass
class Document:
    """One document of a packed row: tokens [start, end), its index, the images and videos whose spans start in it."""

    index: int
    start: int
    end: int
    visions: list[Vision]


def packed_documents(row: dict, vs: list[Vision]) -> list[Document]:
    """The documents of a packed row: runs of one doc_ids value >= 0, in order; `vs` are the row's visions."""
    docs = row["doc_ids"] or []
    out, start = [], 0
    for end in range(1, len(docs) + 1):
        if end < len(docs) and docs[end] == docs[start]:
            continue
        if docs[start] >= 0:
            out.append(Document(docs[start], start, end, [v for v in vs if v.at is not None and start <= v.at < end]))
        start = end
    return out


def packing(row: dict) -> tuple[int, int, int, int]:
    """(tokens, documents, padding tokens, supervised padding tokens) of a packed row."""
    docs, mask = row["doc_ids"] or [], row["loss_mask"] or []
    padding = [i for i, d in enumerate(docs) if d < 0]
    return len(docs), len(set(docs) - {-1}), len(padding), sum(1 for i in padding if i < len(mask) and mask[i])


def efficiency(tokens: int, padding: int) -> str:
    return f"{100 * (tokens - padding) / tokens:.2f}%" if tokens else "-"


def plural(n: int, word: str) -> str:
    """'1 image', '2 images'."""
    return f"{n:,} {word}{'s' if n != 1 else ''}"


def document_facts(row: dict, doc: Document) -> tuple[str, str]:
    """(sample uid, '291 tokens, 25 supervised, 1 image'), videos counted when there are any, flagged where
    position ids do not restart."""
    uids = row.get("sample_uids") or []
    uid = uids[doc.index] if doc.index < len(uids) else "?"
    n = doc.end - doc.start
    supervised = sum(1 for m in (row["loss_mask"] or [])[doc.start : doc.end] if m)
    videos = sum(1 for v in doc.visions if v.video)
    parts = [f"{n:,} tokens", f"{supervised:,} supervised", plural(len(doc.visions) - videos, "image")]
    if videos:
        parts.append(plural(videos, "video"))
    positions = row.get("position_ids")
    if positions is not None and list(positions[doc.start : doc.end]) != list(range(n)):
        parts.append(f"position ids not 0..{n - 1}")
    return uid, ", ".join(parts)
