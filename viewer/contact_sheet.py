"""`inspect PATH --render OUT.html`: a self-contained HTML contact sheet of Parquet outputs.

Stage-1 pairs (curated/, rejected/): one card per row, its image with its caption (and the reason of a
reject). Stage-2/sft samples: one card per sample; packed sequences: a header per row with its padding
and efficiency, then one card per document. A sample's or document's card holds the whole decoded text
(in a scroll box, viewer/rows.py) with the supervised part in <mark>, beside its images with every
`<box>` and `<quad>` of the text drawn on them. render_html returns the rows shown (a packed row counts
once). Which rows: up to `limit` shared between the reasons, tasks or sources, each under its own
heading, largest first (viewer/sampling.py). Rows are read a batch at a time, and only the thumbnails
made are kept.

Which image a region is drawn on, and its label, is formats/markup.py's reading of the text in either
dialect: the last image span before it, and the ref phrase written just before it. A video (Qwen2-VL)
is shown by its first frame, which its regions are drawn on. Coordinates are on the [0, 1000) grid
both dialects share (formats/boxes.py), of the image as stored (no EXIF rotation, as stage 2 measured it):
x_px = x / 1000 * width, y_px = y / 1000 * height, drawn on the thumbnail at its own size, each region
in its own colour (cycling through COLOURS), the same colour as its tag in the text beside it. A region
with no image before it in its document is listed as not drawn.
"""

import base64
import functools
import html
import io
from pathlib import Path

from PIL import Image, ImageColor, ImageDraw, ImageFont, UnidentifiedImageError

from formats.dialects import row_dialect
from formats.markup import TextRegion, text_regions
from viewer.rows import BATCH_ROWS, DECODE_ERRORS, PACKED, PAIRS, SAMPLES, TOKEN_BATCH_ROWS, Dataset, Vision, decoded_runs, document_facts, efficiency, image_summary, packed_documents, packing, show_value, span_names, vision_data, vision_facts, visions
from viewer.sampling import pick, where_label

THUMB_PX = 256  # longer side of a contact-sheet thumbnail
MAX_RENDER_PIXELS = 89_478_485  # stage 1's max_image_pixels (PIL's bomb limit): larger ones are not decoded


def _small_rgb(data: bytes, px: int) -> Image.Image:
    """The image decoded as RGB, longer side at most `px` (never enlarged); PIL's errors raised, and a
    ValueError for an image above MAX_RENDER_PIXELS (a decompression bomb), which is never decoded."""
    image = Image.open(io.BytesIO(data))
    if image.width * image.height > MAX_RENDER_PIXELS:
        raise ValueError(f"{image.width}x{image.height} px, too large to render")
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
        parts.append(f'<div class="size">{html.escape(image_summary(image))}</div>')
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
        parts.append(f'<div class="meta">{name} <code>{html.escape(show_value(row.get(name)))}</code></div>')
    kind = "card rejected" if "reason" in row else "card"
    return f'<div class="{kind}">\n' + "\n".join(parts) + "\n</div>"


# The sheet of samples and packed rows: images with their regions drawn, text with its supervision.

ANNOTATED_PX = 384  # longer side of an image with its regions drawn
LINE_PX = 3  # width of a drawn box or quad outline, in thumbnail pixels
LABEL_CHARS = 40  # a <ref> label is cut after this many characters
# Distinct colours (Sasha Trubetskoy's list), assigned to a document's regions in order, cycling.
COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#469990", "#9a6324", "#800000", "#000075"]



def _colour(region: TextRegion) -> str:
    return COLOURS[region.index % len(COLOURS)]


@functools.cache
def _font():
    try:
        return ImageFont.load_default(size=12)
    except (OSError, TypeError):  # no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _draw(image: Image.Image, regions: list[TextRegion]) -> None:
    """Each region's outline (and label) on `image`, grid coordinates scaled to its pixel size."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for r in regions:
        xy = [(x / 1000 * width, y / 1000 * height) for x, y in r.points]
        if r.kind == "box":
            (x1, y1), (x2, y2) = xy
            x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)  # drawn even if inverted
            draw.rectangle((x1, y1, x2, y2), outline=_colour(r), width=LINE_PX)
            anchor = (x1, y1)
        else:
            draw.polygon(xy, outline=_colour(r), width=LINE_PX)
            anchor = min(xy, key=lambda p: (p[1], p[0]))  # the topmost corner
        if r.label:
            _label(draw, r.label, anchor, _colour(r), image.size)


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


def _picture(row: dict, v: Vision, regions: list[TextRegion]) -> str:
    """One image of a row (a video: its first frame) with its regions drawn, and a caption naming it, or a
    grey box saying why not."""
    drawable = [r for r in regions if r.points is not None]
    data = vision_data(row, v)
    if data is None:
        body = f'<div class="thumb none">no {"video frames" if v.video else "image"}</div>'
    else:
        try:
            image = _small_rgb(data, ANNOTATED_PX)
            _draw(image, drawable)
            # 4:4:4: chroma subsampling would smear the colour of a 3 px outline
            body = f'<img src="{_jpeg_uri(image, quality=85, subsampling=0)}" alt="">'
        except DECODE_ERRORS as e:
            body = _cannot_decode(e)
    about = [html.escape(v.name)]
    if v.video:
        about.append(f"video, its first frame: {html.escape(vision_facts(row, v))}")
    elif data is not None:
        about.append(html.escape(vision_facts(row, v)))
    if regions:
        about.append(f"{len(drawable)} region{'s' if len(drawable) != 1 else ''} drawn")
    return f'<figure class="picture">{body}<figcaption>{" · ".join(about)}</figcaption></figure>'


def _text_html(runs: list[tuple[str, bool]], regions: list[TextRegion]) -> str:
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
                pieces.append(f'<b style="color:{_colour(region)}">{piece}</b>' if region is not None else piece)
        out.append(f"<mark>{''.join(pieces)}</mark>" if supervised else "".join(pieces))
    return "".join(out)


def _meta(fields: list[tuple[str, str]], plain: str = "") -> str:
    """'uid <code>U</code> · task <code>T</code> · PLAIN', escaped."""
    shown = [f"{name} <code>{html.escape(value)}</code>" for name, value in fields] + ([html.escape(plain)] if plain else [])
    return f'<div class="meta">{" · ".join(shown)}</div>'


def _document_card(runs: list[tuple[str, bool]], row: dict, vs: list[Vision], meta: str) -> str:
    """One sample or packed document: its images and videos `vs` with their regions drawn, beside its text."""
    text = "".join(t for t, _ in runs)
    regions = text_regions(text)
    pictures = [_picture(row, v, [r for r in regions if r.image == i]) for i, v in enumerate(vs)]
    parts = []
    orphans = [r for r in regions if r.image is None or r.image >= len(vs)]
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
    vs = visions(row)  # those in no span last: shown, with no region on them
    supervised = sum(1 for m in mask if m)
    meta = _meta([(name, show_value(row.get(name))) for name in ("uid", "task", "source", "key") if name in row],
                 f"{len(ids):,} tokens, {supervised:,} supervised")
    return _document_card(decoded_runs(ids, mask, span_names(vs), row_dialect(row)), row, vs, meta)


def _packed_section(i: int, row: dict) -> tuple[str, int]:
    """A packed row: a header with its packing, then a card per document; and the documents shown."""
    ids, mask = row.get("input_ids") or [], row.get("loss_mask") or []
    tokens, n_docs, padding, padding_supervised = packing(row)
    head = (f"row {i} · uid <code>{html.escape(show_value(row.get('uid')))}</code> · {html.escape(show_value(row.get('task')))} · "
            f"{tokens:,} tokens, {n_docs} document{'s' if n_docs != 1 else ''}, {padding:,} padding "
            f"({padding_supervised:,} supervised), efficiency {efficiency(tokens, padding)}")
    cards = []
    documents = packed_documents(row, visions(row))
    for doc in documents:
        runs = decoded_runs(ids[doc.start : doc.end], mask[doc.start : doc.end], span_names(doc.visions), row_dialect(row))
        uid, about = document_facts(row, doc)
        meta = _meta([("document", str(doc.index)), ("sample", uid)], about)
        cards.append(_document_card(runs, row, doc.visions, meta))
    body = "\n".join(cards)
    return f'<section class="packed">\n<h3>{head}</h3>\n<div class="docs">\n{body}\n</div>\n</section>', len(documents)


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
h2 { font-size: 16px; margin: 28px 0 10px; overflow-wrap: anywhere; }
h3 { font-size: 15px; font-weight: normal; margin: 24px 0 8px; overflow-wrap: anywhere; }
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
VISION_COLUMNS = ("dialect", "image_sizes", "image_grid_thw", "videos", "video_grid_thw")  # what Qwen2-VL rows add
COLUMNS = {
    PAIRS: ("uid", "key", "caption", "image", "reason", "detail"),
    SAMPLES: ("uid", "task", "source", "key", "input_ids", "loss_mask", "images", "image_refs", *VISION_COLUMNS, "video_refs"),
    PACKED: ("uid", "task", "input_ids", "loss_mask", "doc_ids", "position_ids", "images", "sample_uids", *VISION_COLUMNS),
}


def render_html(path: str, out: str, limit: int = 200, where: dict[str, str] | None = None) -> int:
    """Write a self-contained HTML contact sheet to `out` of up to `limit` rows (those whose columns hold
    the values in `where`), shared between the data's groups (viewer/sampling.py); return the rows shown
    (one card per row; a packed row is a header and one card per document). Rows are read in batches
    and each is reduced to its card's HTML before the next batch is read."""
    data = Dataset(path)
    kind = data.kind
    where = where or {}
    column, groups = pick(data, limit, where, grouped=True)
    columns = [name for name in COLUMNS[kind] if name in data.schema.names]
    indices = sorted(i for g in groups for i in g.shown)
    rows = data.take(indices, columns, BATCH_ROWS if kind == PAIRS else TOKEN_BATCH_ROWS)
    cards, documents = {}, 0
    for i, row in zip(indices, rows):
        if kind == PAIRS:
            cards[i] = _card(row)
        elif kind == SAMPLES:
            cards[i] = _sample_card(row)
        else:
            cards[i], n = _packed_section(i, row)
            documents += n
    container = "grid" if kind == PAIRS else ("docs" if kind == SAMPLES else "rows")
    sections = []
    for g in groups:
        head = f"<h2>{column} <code>{html.escape(str(g.name))}</code> · {len(g.shown):,} of {g.rows:,} rows</h2>\n" if column else ""
        body = "\n".join(cards[i] for i in g.shown)
        sections.append(f'{head}<div class="{container}">\n{body}\n</div>')
    summary = f"{len(indices):,} of {data.num_rows:,} rows"
    if where:
        summary += f" ({sum(g.rows for g in groups):,} {where_label(where)})"
    summary += f" from {data.label()}"
    if column:
        summary += f", an even share per {column}"
    if kind == PACKED:
        summary += f", {documents:,} documents"
    legend = f'<p class="summary">{LEGENDS[kind]}</p>\n' if kind != PAIRS else ""
    body = "\n".join(sections)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(path)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{html.escape(path)}</h1>
<p class="summary">{html.escape(summary)}</p>
{legend}{body}
</body>
</html>
"""
    Path(out).write_text(page, encoding="utf-8")
    return len(indices)
