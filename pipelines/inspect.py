"""Look inside the Parquet outputs: a text summary and an HTML contact sheet.

pyarrow and PIL (and formats/tokenizer.py for samples). PATH is a Parquet file or a folder of them, read as one dataset in sorted file
order. Only the rows shown are read, batch by batch from the start, and the row count comes from the
footers: a curated shard holds GBs of image bytes, and neither function pulls them all in (the contact
sheet keeps one batch of rows at a time, and only the thumbnails it made).

The kind of data is told by its column names:
- stage-1 pairs (curated/, rejected/, anything else): each column's value; the sheet shows each
  image with its caption (and the reason of a reject).
- stage-2/sft samples (`input_ids` and `loss_mask`, no `doc_ids`: formats/schemas.py SAMPLES) and
  packed sequences (with `doc_ids`: PACKED): besides the columns, `describe` decodes `input_ids` back to
  text (formats/tokenizer.py) with the supervised part marked: each run of tokens whose loss_mask is 1
  is written between ⟦ and ⟧ (the marks are not escaped: a text that holds ⟦ or ⟧ itself reads
  ambiguously). Each image is `<img>REF</img>`: REF from `image_refs` for a sample, `images[i]` for a
  packed row (i indexing the row's `images`, which has no references). A packed row is shown per
  document (a run of one `doc_ids` value; its position ids restart at 0, flagged where they do not),
  with its sample uid, then the padding (doc id -1) and the row's efficiency (the share of tokens not
  padding). At most MAX_DECODED characters of text per document (cut with …, the marks kept paired),
  at most MAX_DOCS documents per row. The sheet has one card per sample, or per document of a packed
  row (under a header per row with its padding and efficiency): the whole decoded text (in a scroll
  box) with the supervised part in <mark>, beside its images with every `<box>` and `<quad>` of the
  text drawn on them. render_html returns the rows shown (a packed row counts once).

Which image a region is drawn on: the last `<img>` before it in the same sample or document (Qwen-VL
writes regions after the image they refer to; a chat with several pictures refers to the latest one).
A region with no image before it in its document is listed as not drawn. Its label is the `<ref>`
phrase written just before it, nothing but whitespace or other regions between (`<ref>a bee</ref>
<box>..</box><box>..</box>`: both boxes are "a bee"); `<ref>This</ref><box>..</box> is` labels too.
Coordinates are on Qwen-VL's [0, 1000) grid (formats/boxes.py), of the image as stored (no EXIF
rotation, as stage 2 measured it): x_px = x / 1000 * width, y_px = y / 1000 * height, drawn on the
thumbnail at its own size, each region in its own colour (cycling through COLOURS), the same colour as
its tag in the text beside it.
"""

import base64
import functools
import html
import io
import os
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageColor, ImageDraw, ImageFont, UnidentifiedImageError

from formats.tokenizer import IMG_ID, QwenTokenizer, VocabularyError

MAX_TEXT = 200  # characters of a string shown by `describe`
LIST_ITEMS = 3  # items of a list shown by `describe`
THUMB_PX = 256  # longer side of a contact-sheet thumbnail
BATCH_ROWS = 64  # rows per read at most: a few rows never pull a whole row group of images
TOKEN_BATCH_ROWS = 8  # the same for samples and packed rows, which hold 2048 ids and several images each
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

    def head(self, n: int, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS) -> list[dict]:
        """The first n rows (of the given columns), as dicts of Python values."""
        return list(self.iter(n, columns, batch_rows))

    def iter(self, n: int, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS):
        """The first n rows (of the given columns), one by one, read `batch_rows` at a time at most."""
        if n <= 0:
            return iter(())
        return islice(self._rows(columns, min(n, batch_rows)), n)

    @property
    def kind(self) -> str:
        """PACKED, SAMPLES or PAIRS, from the column names."""
        return _kind(self.schema.names)

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


# Samples and packed rows: decoded text with the supervised part marked.

PAIRS, SAMPLES, PACKED = "pairs", "samples", "packed"
MAX_DECODED = 600  # characters of decoded text shown per sample or document by `describe`
MAX_DOCS = 10  # documents of a packed row shown by `describe`
OPEN, CLOSE = "⟦", "⟧"  # around each supervised run in `describe`


def _kind(names) -> str:
    """PACKED (doc_ids), SAMPLES (input_ids and loss_mask) or PAIRS (anything else), by column names."""
    names = set(names)
    if {"input_ids", "loss_mask"} <= names:
        return PACKED if "doc_ids" in names else SAMPLES
    return PAIRS


@functools.cache
def _tokenizer() -> QwenTokenizer:
    try:
        return QwenTokenizer(None)
    except VocabularyError as e:
        raise ValueError(f"cannot decode input_ids: {e}") from None


def _runs(ids: list[int], mask: list[int], refs: list[str]) -> list[tuple[str, bool]]:
    """The decoded text of `ids` in runs of one loss_mask value: (text, supervised). Each run is decoded
    on its own (a sample's runs are its segments, each encoded on its own, so no character spans two);
    `refs` name the images in order (a run takes as many as it holds <img> tokens)."""
    tokenizer = _tokenizer()
    flags = [1 if m else 0 for m in mask[: len(ids)]] + [0] * (len(ids) - len(mask))
    runs, start, image = [], 0, 0
    for end in range(1, len(ids) + 1):
        if end < len(ids) and flags[end] == flags[start]:
            continue
        chunk = ids[start:end]
        count = chunk.count(IMG_ID)
        runs.append((_decode(tokenizer, chunk, refs[image : image + count]), bool(flags[start])))
        image += count
        start = end
    return runs


def _decode(tokenizer: QwenTokenizer, ids: list, refs: list[str]) -> str:
    """tokenizer.decode, with an id that is no token (out of the vocabulary, null) shown as [bad id X]."""
    if all(isinstance(i, int) and 0 <= i < tokenizer.n_vocab for i in ids):
        return tokenizer.decode(ids, images=refs)
    out, start, image = [], 0, 0
    for end, i in enumerate([*ids, None]):
        if end < len(ids) and isinstance(i, int) and 0 <= i < tokenizer.n_vocab:
            continue
        good = ids[start:end]
        count = good.count(IMG_ID)
        out.append(tokenizer.decode(good, images=refs[image : image + count]))
        image += count
        if end < len(ids):
            out.append(f"[bad id {i}]")
        start = end + 1
    return "".join(out)


def _marked(runs: list[tuple[str, bool]], limit: int = MAX_DECODED) -> str:
    """Runs as one line: supervised runs between ⟦ and ⟧, cut after `limit` characters of text (…),
    the marks kept paired; line breaks shown as \\n."""
    out, left = [], limit
    for text, supervised in runs:
        cut = len(text) > left
        if cut:
            text = text[:left] + "…"
        left -= len(text)
        out.append(f"{OPEN}{text}{CLOSE}" if supervised else text)
        if cut:
            break
    return "".join(out).replace("\r", "\\r").replace("\n", "\\n")


def _sample_refs(row: dict) -> list[str]:
    """What a sample's images are called in decoded text: its image_refs, else images[i]."""
    refs = row.get("image_refs")
    if refs is None:
        refs = [f"images[{i}]" for i in range(len(row.get("images") or ()))]
    return refs


@dataclass
class _Document:
    """One document of a packed row: tokens [start, end), its index, the row's images it holds."""

    index: int
    start: int
    end: int
    first_image: int
    images: int


def _documents(row: dict) -> list[_Document]:
    """The documents of a packed row: runs of one doc_ids value >= 0, in order."""
    ids, docs = row["input_ids"] or [], row["doc_ids"] or []
    out, start, image = [], 0, 0
    for end in range(1, len(docs) + 1):
        if end < len(docs) and docs[end] == docs[start]:
            continue
        count = ids[start:end].count(IMG_ID)
        if docs[start] >= 0:
            out.append(_Document(docs[start], start, end, image, count))
        image += count
        start = end
    return out


def _packing(row: dict) -> tuple[int, int, int, int]:
    """(tokens, documents, padding tokens, supervised padding tokens) of a packed row."""
    docs, mask = row["doc_ids"] or [], row["loss_mask"] or []
    padding = [i for i, d in enumerate(docs) if d < 0]
    return len(docs), len(set(docs) - {-1}), len(padding), sum(1 for i in padding if i < len(mask) and mask[i])


def _efficiency(tokens: int, padding: int) -> str:
    return f"{100 * (tokens - padding) / tokens:.2f}%" if tokens else "-"


def _document_facts(row: dict, doc: _Document) -> tuple[str, str]:
    """(sample uid, '291 tokens, 25 supervised, 1 image'), flagged where position ids do not restart."""
    uids = row.get("sample_uids") or []
    uid = uids[doc.index] if doc.index < len(uids) else "?"
    n = doc.end - doc.start
    supervised = sum(1 for m in (row["loss_mask"] or [])[doc.start : doc.end] if m)
    parts = [f"{n:,} tokens", f"{supervised:,} supervised",
             f"{doc.images} image{'s' if doc.images != 1 else ''}"]
    positions = row.get("position_ids")
    if positions is not None and list(positions[doc.start : doc.end]) != list(range(n)):
        parts.append(f"position ids not 0..{n - 1}")
    return uid, ", ".join(parts)


def _packed_refs(doc: _Document) -> list[str]:
    return [f"images[{i}]" for i in range(doc.first_image, doc.first_image + doc.images)]


def _decoded_lines(kind: str, row: dict) -> list[str]:
    """The lines `describe` adds after a sample's or packed row's columns."""
    ids = row.get("input_ids") or []
    mask = row.get("loss_mask") or []
    if kind == SAMPLES:
        supervised = sum(1 for m in mask if m)
        return [f"  decoded: {len(ids):,} tokens, {supervised:,} supervised",
                f"    {_marked(_runs(ids, mask, _sample_refs(row)))}"]
    tokens, n_docs, padding, padding_supervised = _packing(row)
    lines = [f"  packing: {tokens:,} tokens, {n_docs} document{'s' if n_docs != 1 else ''}, "
             f"{padding:,} padding, efficiency {_efficiency(tokens, padding)}"]
    documents = _documents(row)
    for doc in documents[:MAX_DOCS]:
        runs = _runs(ids[doc.start : doc.end], mask[doc.start : doc.end], _packed_refs(doc))
        uid, about = _document_facts(row, doc)
        lines += [f"  document {doc.index}: sample {uid}, {about}", f"    {_marked(runs)}"]
    if len(documents) > MAX_DOCS:
        lines.append(f"  … {len(documents) - MAX_DOCS} more documents")
    lines.append(f"  padding: {padding:,} tokens, {padding_supervised:,} supervised")
    return lines


LEGEND = {
    SAMPLES: "decoded: the input_ids as text, supervised runs (loss_mask 1) between ⟦ and ⟧, "
             "each image as <img>REF</img> from image_refs",
    PACKED: "decoded: each document (a run of doc_ids) as text, supervised runs (loss_mask 1) between ⟦ and ⟧, "
            "each image as <img>images[i]</img>, i indexing the row's images",
}


def describe(path: str, rows: int = 5) -> str:
    """Files, total size, schema, row count and the first `rows` rows of the Parquet data at `path`;
    samples and packed rows decoded too (see the module docstring)."""
    data = _Dataset(path)
    kind = data.kind
    schema = data.schema.to_string(show_field_metadata=False, show_schema_metadata=False)
    lines = [
        f"{path}: {data.label()}",
        f"rows: {data.num_rows:,}",
        "schema:",
        *(f"  {line}" for line in schema.splitlines()),
    ]
    if kind != PAIRS:
        lines.append(LEGEND[kind])
    batch_rows = BATCH_ROWS if kind == PAIRS else TOKEN_BATCH_ROWS
    for i, row in enumerate(data.iter(rows, batch_rows=batch_rows)):
        lines += ["", f"row {i}"]
        lines += [f"  {name}: {_value(value)}" for name, value in row.items()]
        if kind != PAIRS:
            lines += _decoded_lines(kind, row)
    return "\n".join(lines) + "\n"


def _small_rgb(data: bytes, px: int) -> Image.Image:
    """The image decoded as RGB, longer side at most `px` (never enlarged); PIL's errors raised."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (px, px))  # JPEG: decode at a reduced scale, much faster
    image.thumbnail((px, px))
    if image.mode != "RGB":  # transparency over white, not black
        rgba = image.convert("RGBA")
        image = Image.new("RGB", image.size, "white")
        image.paste(rgba, mask=rgba)
    return image


def _jpeg_uri(image: Image.Image, **options) -> str:
    out = io.BytesIO()
    image.save(out, "JPEG", **options)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _cannot_decode(e: Exception) -> str:
    if isinstance(e, UnidentifiedImageError):
        return '<div class="thumb none">cannot decode: not an image</div>'
    return f'<div class="thumb none">cannot decode: {html.escape(str(e))}</div>'


def _thumbnail(data: bytes | None) -> str:
    """An <img> of the image as a base64 JPEG, longer side at most THUMB_PX, or a grey box saying why not."""
    if data is None:
        return '<div class="thumb none">no image</div>'
    try:
        uri = _jpeg_uri(_small_rgb(data, THUMB_PX), quality=80)
    except DECODE_ERRORS as e:  # UnidentifiedImageError is an OSError
        return _cannot_decode(e)
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


# The sheet of samples and packed rows: images with their regions drawn, text with its supervision.

ANNOTATED_PX = 384  # longer side of an image with its regions drawn
LINE_PX = 3  # width of a drawn box or quad outline, in thumbnail pixels
LABEL_CHARS = 40  # a <ref> label is cut after this many characters
# Distinct colours (Sasha Trubetskoy's list), assigned to a document's regions in order, cycling.
COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#469990", "#9a6324", "#800000", "#000075"]

_TAG_RE = re.compile(r"<img>(.*?)</img>|<ref>(.*?)</ref>|<box>(.*?)</box>|<quad>(.*?)</quad>", re.S)
_POINT = r"\(\s*(\d+)\s*,\s*(\d+)\s*\)"
_BOX_RE = re.compile(rf"\s*{_POINT}\s*,\s*{_POINT}\s*")
_QUAD_RE = re.compile(rf"\s*{_POINT}\s*,\s*{_POINT}\s*,\s*{_POINT}\s*,\s*{_POINT}\s*")


@dataclass
class _Region:
    """A <box> or <quad> of decoded text: its characters [start, end), its points on the 1000 grid
    (None if they do not parse), the <ref> phrase before it, the image it is drawn on, its colour."""

    kind: str
    start: int
    end: int
    points: list[tuple[int, int]] | None
    label: str | None
    image: int | None
    colour: str


def _regions(text: str) -> list[_Region]:
    """The boxes and quads of a sample's or document's decoded text, each with the image it refers to
    (the index of the last <img> before it) and its label (see the module docstring)."""
    regions, image, label, after_label = [], None, None, -1
    for m in _TAG_RE.finditer(text):
        img, ref, box, quad = m.groups()
        if img is not None:
            image = 0 if image is None else image + 1
            label = None
        elif ref is not None:
            label, after_label = ref, m.end()
        else:
            body, kind = (box, "box") if box is not None else (quad, "quad")
            found = (_BOX_RE if kind == "box" else _QUAD_RE).fullmatch(body)
            points = None
            if found:
                values = [int(v) for v in found.groups()]
                points = list(zip(values[0::2], values[1::2]))
            here = label if label is not None and not text[after_label : m.start()].strip() else None
            if here is not None:
                after_label = m.end()  # the next region right after this one has the same label
            colour = COLOURS[len(regions) % len(COLOURS)]
            regions.append(_Region(kind, m.start(), m.end(), points, here, image, colour))
    return regions


@functools.cache
def _font():
    try:
        return ImageFont.load_default(size=12)
    except (OSError, TypeError):  # no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _draw(image: Image.Image, regions: list[_Region]) -> None:
    """Each region's outline (and label) on `image`, grid coordinates scaled to its pixel size."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for r in regions:
        xy = [(x / 1000 * width, y / 1000 * height) for x, y in r.points]
        if r.kind == "box":
            (x1, y1), (x2, y2) = xy
            x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)  # drawn even if inverted
            draw.rectangle((x1, y1, x2, y2), outline=r.colour, width=LINE_PX)
            anchor = (x1, y1)
        else:
            draw.polygon(xy, outline=r.colour, width=LINE_PX)
            anchor = min(xy, key=lambda p: (p[1], p[0]))  # the topmost corner
        if r.label:
            _label(draw, r.label, anchor, r.colour, image.size)


def _label(draw: ImageDraw.ImageDraw, label: str, anchor: tuple[float, float], colour: str, size: tuple[int, int]) -> None:
    """The label on a patch of the region's colour, just above its corner (inside it where no room)."""
    width, height = size
    text = label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS] + "…"
    font = _font()
    try:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    except UnicodeError:  # the bitmap font has Latin-1 only
        text = text.encode("ascii", "replace").decode("ascii")
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 2
    x, y = anchor
    x = max(min(x, width - w), 0)  # kept inside the image on the right
    y = y - h if y - h >= 0 else min(y + LINE_PX, max(height - h, 0))
    r, g, b = ImageColor.getrgb(colour)[:3]
    ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "white"
    draw.rectangle((x, y, x + w, y + h), fill=colour)
    draw.text((x + 2 - left, y + 1 - top), text, fill=ink, font=font)


def _picture(data: bytes | None, name: str, regions: list[_Region]) -> str:
    """One image of a sample with its regions drawn, and a caption naming it, or a grey box why not."""
    drawable = [r for r in regions if r.points is not None]
    if data is None:
        body = '<div class="thumb none">no image</div>'
    else:
        try:
            image = _small_rgb(data, ANNOTATED_PX)
            _draw(image, drawable)
            # 4:4:4: chroma subsampling would smear the colour of a 3 px outline
            body = f'<img src="{_jpeg_uri(image, quality=85, subsampling=0)}" alt="">'
        except DECODE_ERRORS as e:
            body = _cannot_decode(e)
    about = [html.escape(name)]
    if data is not None:
        about.append(html.escape(_image_summary(data)))
    if regions:
        about.append(f"{len(drawable)} region{'s' if len(drawable) != 1 else ''} drawn")
    return f'<figure class="picture">{body}<figcaption>{" · ".join(about)}</figcaption></figure>'


def _text_html(runs: list[tuple[str, bool]], regions: list[_Region]) -> str:
    """The decoded text, escaped: supervised runs in <mark>, each region's tag in its colour."""
    text = "".join(t for t, _ in runs)
    run_at, at = [], 0
    for t, supervised in runs:
        run_at.append((at, at + len(t), supervised))
        at += len(t)
    cuts = sorted({0, len(text), *(a for a, _, _ in run_at), *(r.start for r in regions), *(r.end for r in regions)})
    out = []
    for start, end, supervised in run_at:
        pieces = []
        for a, b in zip(cuts, cuts[1:]):
            if start <= a < end:
                piece = html.escape(text[a:b])
                region = next((r for r in regions if r.start <= a < r.end), None)
                pieces.append(f'<b style="color:{region.colour}">{piece}</b>' if region is not None else piece)
        out.append(f"<mark>{''.join(pieces)}</mark>" if supervised else "".join(pieces))
    return "".join(out)


def _meta(fields: list[tuple[str, str]], plain: str = "") -> str:
    """'uid <code>U</code> · task <code>T</code> · PLAIN', escaped."""
    shown = [f"{name} <code>{html.escape(value)}</code>" for name, value in fields] + ([html.escape(plain)] if plain else [])
    return f'<div class="meta">{" · ".join(shown)}</div>'


def _document_card(runs: list[tuple[str, bool]], images: list, names: list[str], meta: str) -> str:
    """One sample or packed document: its images with their regions drawn, beside its text."""
    text = "".join(t for t, _ in runs)
    regions = _regions(text)
    pictures = [_picture(data, name, [r for r in regions if r.image == i])
                for i, (data, name) in enumerate(zip(images, names))]
    parts = []
    orphans = [r for r in regions if r.image is None or r.image >= len(images)]
    unparsed = [r for r in regions if r.points is None]
    parts.append(meta)
    parts.append(f'<pre class="decoded">{_text_html(runs, regions)}</pre>')
    if orphans:
        many = len(orphans) != 1
        parts.append(f'<div class="note">{len(orphans)} region{"s" if many else ""} with no image before '
                     f'{"them" if many else "it"}: not drawn</div>')
    if unparsed:
        shown = ", ".join(html.escape(text[r.start : r.end]) for r in unparsed[:3])
        parts.append(f'<div class="note">not drawn, coordinates unreadable: {shown}</div>')
    side = f'<div class="pictures">{"".join(pictures)}</div>\n' if pictures else ""
    return f'<div class="doc">\n{side}<div class="body">\n' + "\n".join(parts) + "\n</div>\n</div>"


def _sample_card(row: dict) -> str:
    ids, mask = row.get("input_ids") or [], row.get("loss_mask") or []
    images = list(row.get("images") or [])
    refs = _sample_refs(row)
    count = ids.count(IMG_ID)
    names = [refs[i] if i < len(refs) else f"images[{i}]" for i in range(max(count, len(images)))]
    images += [None] * (len(names) - len(images))  # an <img> with no bytes: a grey box
    supervised = sum(1 for m in mask if m)
    meta = _meta([(name, _value(row.get(name))) for name in ("uid", "task", "source", "key") if name in row],
                 f"{len(ids):,} tokens, {supervised:,} supervised")
    return _document_card(_runs(ids, mask, refs), images, names, meta)


def _packed_section(i: int, row: dict) -> tuple[str, int]:
    """A packed row: a header with its packing, then a card per document; and the documents shown."""
    ids, mask = row.get("input_ids") or [], row.get("loss_mask") or []
    images = list(row.get("images") or [])
    tokens, n_docs, padding, padding_supervised = _packing(row)
    head = (f"row {i} · uid <code>{html.escape(_value(row.get('uid')))}</code> · {html.escape(_value(row.get('task')))} · "
            f"{tokens:,} tokens, {n_docs} document{'s' if n_docs != 1 else ''}, {padding:,} padding "
            f"({padding_supervised:,} supervised), efficiency {_efficiency(tokens, padding)}")
    cards = []
    documents = _documents(row)
    for doc in documents:
        names = _packed_refs(doc)
        own = [images[k] if k < len(images) else None for k in range(doc.first_image, doc.first_image + doc.images)]
        runs = _runs(ids[doc.start : doc.end], mask[doc.start : doc.end], names)
        uid, about = _document_facts(row, doc)
        meta = _meta([("document", str(doc.index)), ("sample", uid)], about)
        cards.append(_document_card(runs, own, names, meta))
    body = "\n".join(cards)
    return f'<section class="packed">\n<h2>{head}</h2>\n<div class="docs">\n{body}\n</div>\n</section>', len(documents)


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
h2 { font-size: 15px; font-weight: normal; margin: 24px 0 8px; overflow-wrap: anywhere; }
.docs { display: flex; flex-direction: column; gap: 12px; }
.doc { display: flex; gap: 16px; align-items: flex-start; background: #fff; border: 1px solid #ddd;
       border-radius: 6px; padding: 12px; }
.pictures { flex: 0 0 384px; display: flex; flex-direction: column; gap: 8px; }
.picture { margin: 0; }
.picture img { max-width: 384px; display: block; }
.picture figcaption { color: #888; font-size: 12px; margin-top: 4px; overflow-wrap: anywhere; }
.body { flex: 1; min-width: 0; }
.decoded { font: 13px/1.5 ui-monospace, monospace; white-space: pre-wrap; overflow-wrap: anywhere;
           max-height: 24em; overflow-y: auto; margin: 8px 0; }
.decoded mark { background: #fff3a0; }
.note { color: #8a1c1c; font-size: 12px; }
"""

LEGENDS = {
    SAMPLES: "supervised text (loss_mask 1) <mark>highlighted</mark>; each box and quad drawn on the image before it, "
             "in the colour of its tag",
    PACKED: "one card per document (doc_ids); supervised text (loss_mask 1) <mark>highlighted</mark>; each box and "
            "quad drawn on the image before it, in the colour of its tag",
}
COLUMNS = {
    PAIRS: ("uid", "key", "caption", "image", "reason", "detail"),
    SAMPLES: ("uid", "task", "source", "key", "input_ids", "loss_mask", "images", "image_refs"),
    PACKED: ("uid", "task", "input_ids", "loss_mask", "doc_ids", "position_ids", "images", "sample_uids"),
}


def render_html(path: str, out: str, limit: int = 200) -> int:
    """Write a self-contained HTML contact sheet of the first `limit` rows to `out`; return the rows shown
    (one card per row; a packed row is a header and one card per document). Rows are read in batches
    and each is reduced to its card's HTML before the next batch is read."""
    data = _Dataset(path)
    kind = data.kind
    columns = [name for name in COLUMNS[kind] if name in data.schema.names]
    shown, documents, cards = 0, 0, []
    for row in data.iter(limit, columns, BATCH_ROWS if kind == PAIRS else TOKEN_BATCH_ROWS):
        if kind == PAIRS:
            cards.append(_card(row))
        elif kind == SAMPLES:
            cards.append(_sample_card(row))
        else:
            section, n = _packed_section(shown, row)
            cards.append(section)
            documents += n
        shown += 1
    summary = f"{shown:,} of {data.num_rows:,} rows from {data.label()}"
    if kind == PACKED:
        summary += f", {documents:,} documents"
    legend = f'<p class="summary">{LEGENDS[kind]}</p>\n' if kind != PAIRS else ""
    container = "grid" if kind == PAIRS else ("docs" if kind == SAMPLES else "rows")
    body = "\n".join(cards)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(path)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{html.escape(path)}</h1>
<p class="summary">{summary}</p>
{legend}<div class="{container}">
{body}
</div>
</body>
</html>
"""
    Path(out).write_text(page, encoding="utf-8")
    return shown
