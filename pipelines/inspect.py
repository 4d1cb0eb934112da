"""Look inside curated/ and rejected/ Parquet outputs: a text summary and an HTML contact sheet.

Pure pyarrow and PIL. PATH is a Parquet file or a folder of them, read as one dataset in sorted file
order. Only the rows shown are read, batch by batch from the start, and the row count comes from the
footers: a curated shard holds GBs of image bytes, and neither function pulls them all in.
"""

import base64
import html
import io
import os
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

MAX_TEXT = 200  # characters of a string shown by `describe`
LIST_ITEMS = 3  # items of a list shown by `describe`
THUMB_PX = 256  # longer side of a contact-sheet thumbnail
BATCH_ROWS = 64  # rows per read at most: a few rows never pull a whole row group of images
# pyarrow's defaults (pre_buffer=True, buffer_size=0) read a whole column chunk before the first row;
# buffered reads without pre-buffering fetch it page by page, only as far as the rows read.
READ_OPTIONS = dict(pre_buffer=False, buffer_size=1 << 20)
# What PIL raises on bad bytes, as in filters/image_rules.py.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _footer(file: Path) -> pq.FileMetaData:
    """The file's Parquet footer: schema and row count, no data read."""
    try:
        return pq.read_metadata(file)
    except pa.ArrowInvalid:
        raise ValueError(f"not a Parquet file: {file}") from None


class _Dataset:
    """The Parquet files under a path, their total size, schema and row count, from the footers only."""

    def __init__(self, path: str):
        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        self.files = sorted(root.glob("*.parquet")) if root.is_dir() else [root]
        if not self.files:
            raise FileNotFoundError(f"no .parquet files in {path}")
        self.size = sum(os.path.getsize(f) for f in self.files)
        footers = [_footer(f) for f in self.files]
        self.schema = footers[0].schema.to_arrow_schema()
        for f, footer in zip(self.files, footers):
            if not footer.schema.to_arrow_schema().equals(self.schema):
                raise ValueError(f"schema of {f} differs from that of {self.files[0]}")
        self.num_rows = sum(footer.num_rows for footer in footers)

    def label(self) -> str:
        """'3 Parquet files, 1.2 GB'."""
        return f"{len(self.files)} Parquet file{'s' if len(self.files) != 1 else ''}, {_size(self.size)}"

    def head(self, n: int, columns: list[str] | None = None) -> list[dict]:
        """The first n rows (of the given columns), as dicts of Python values."""
        if n <= 0:
            return []
        return list(islice(self._rows(columns, min(n, BATCH_ROWS)), n))

    def _rows(self, columns, batch_size):
        for f in self.files:
            with pq.ParquetFile(f, **READ_OPTIONS) as parquet:
                for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
                    yield from batch.to_pylist()


def _size(n: int) -> str:
    """A byte count for people: 812 B, 47.6 KB, 3.1 MB (1 KB = 1000 bytes)."""
    if n < 1000:
        return f"{n} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            break
    return f"{n:.1f} {unit}"


def _image_summary(data: bytes) -> str:
    """Format, size and byte count from the image header alone (no decode): 'JPEG 640x480, 47.6 KB'."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return f"{len(data):,} bytes, not an image"
    except DECODE_ERRORS as e:  # a cut-off header, or a decompression bomb's size
        return f"{len(data):,} bytes, bad image header: {e}"
    return f"{image.format} {image.width}x{image.height}, {_size(len(data))}"


def _value(value) -> str:
    """One value as `describe` shows it: bytes summarized, long strings cut, lists shortened."""
    if value is None:
        return "null"
    if isinstance(value, bytes):
        return f"<{_image_summary(value)}>"
    if isinstance(value, str):
        text = value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"
        return text.replace("\r", "\\r").replace("\n", "\\n")
    if isinstance(value, float):
        return f"{value:.6g}"  # float32 columns read back as 0.3100000023841858 otherwise
    if isinstance(value, list):
        items = ", ".join(_value(v) for v in value[:LIST_ITEMS])
        more = ", …" if len(value) > LIST_ITEMS else ""
        return f"list of {len(value)}: [{items}{more}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def describe(path: str, rows: int = 5) -> str:
    """Files, total size, schema, row count and the first `rows` rows of the Parquet data at `path`."""
    data = _Dataset(path)
    schema = data.schema.to_string(show_field_metadata=False, show_schema_metadata=False)
    lines = [
        f"{path}: {data.label()}",
        f"rows: {data.num_rows:,}",
        "schema:",
        *(f"  {line}" for line in schema.splitlines()),
    ]
    for i, row in enumerate(data.head(rows)):
        lines += ["", f"row {i}"]
        lines += [f"  {name}: {_value(value)}" for name, value in row.items()]
    return "\n".join(lines) + "\n"


def _thumbnail(data: bytes | None) -> str:
    """An <img> of the image as a base64 JPEG, longer side at most THUMB_PX, or a grey box saying why not."""
    if data is None:
        return '<div class="thumb none">no image</div>'
    try:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a reduced scale, much faster
        image.thumbnail((THUMB_PX, THUMB_PX))
        if image.mode != "RGB":  # transparency over white, not black
            rgba = image.convert("RGBA")
            image = Image.new("RGB", image.size, "white")
            image.paste(rgba, mask=rgba)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=80)
    except UnidentifiedImageError:
        return '<div class="thumb none">cannot decode: not an image</div>'
    except DECODE_ERRORS as e:
        return f'<div class="thumb none">cannot decode: {html.escape(str(e))}</div>'
    uri = "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")
    return f'<div class="thumb"><img src="{uri}" alt=""></div>'


def _card(row: dict) -> str:
    """One row as a card: thumbnail, header summary, reason and detail if rejected, caption, uid and key."""
    image = row.get("image")
    parts = [_thumbnail(image)]
    if image is not None:
        parts.append(f'<div class="size">{html.escape(_image_summary(image))}</div>')
    if "reason" in row:
        reason = html.escape(row["reason"] or "")
        detail = html.escape(row.get("detail") or "")
        parts.append(f'<div class="reason"><b>{reason}</b> {detail}</div>')
    caption = row.get("caption")
    if caption is None:
        parts.append('<p class="caption missing">no caption</p>')
    else:
        parts.append(f'<p class="caption">{html.escape(caption)}</p>')
    for name in ("uid", "key"):
        parts.append(f'<div class="meta">{name} <code>{html.escape(_value(row.get(name)))}</code></div>')
    kind = "card rejected" if "reason" in row else "card"
    return f'<div class="{kind}">\n' + "\n".join(parts) + "\n</div>"


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; background: #fafafa; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px; overflow-wrap: anywhere; }
.summary { color: #666; margin: 0 0 16px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 16px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 12px; }
.card.rejected { border-color: #e0a0a0; }
.thumb { box-sizing: border-box; height: 256px; background: #f0f0f0;
         display: flex; align-items: center; justify-content: center; }
.thumb img { max-width: 100%; max-height: 256px; }
.thumb.none { background: #ccc; color: #444; padding: 12px; text-align: center; overflow-wrap: anywhere; }
.size { color: #888; font-size: 12px; margin-top: 4px; }
.reason { background: #fde8e8; color: #8a1c1c; border-radius: 4px; padding: 4px 8px; margin-top: 8px;
          overflow-wrap: anywhere; }
.caption { margin: 8px 0; max-height: 8.4em; overflow-y: auto; overflow-wrap: anywhere; }
.caption.missing { color: #999; font-style: italic; }
.meta { color: #666; font-size: 12px; overflow-wrap: anywhere; }
"""


def render_html(path: str, out: str, limit: int = 200) -> int:
    """Write a self-contained HTML contact sheet of the first `limit` rows to `out`; return the cards written."""
    data = _Dataset(path)
    wanted = ("uid", "key", "caption", "image", "reason", "detail")
    rows = data.head(limit, columns=[name for name in wanted if name in data.schema.names])
    cards = "\n".join(_card(row) for row in rows)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(path)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{html.escape(path)}</h1>
<p class="summary">{len(rows):,} of {data.num_rows:,} rows from {data.label()}</p>
<div class="grid">
{cards}
</div>
</body>
</html>
"""
    Path(out).write_text(page, encoding="utf-8")
    return len(rows)
