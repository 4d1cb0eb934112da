"""Tests of pipelines/inspect.py: `describe`'s exact lines, the HTML contact sheet, and the one-line errors."""

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from formats.schemas import CURATED, REJECTED
from pipelines.inspect import _size, describe, render_html


def encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype("uint8"))


JPEG_64x48 = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)), "JPEG")
JPEG_640x480 = encode(gradient(640, 480), "JPEG")
PNG_RGBA = encode(Image.new("RGBA", (40, 20), (255, 0, 0, 128)), "PNG")
TRUNCATED = JPEG_64x48[:-100]  # the header is whole, the scan data cut off
JUNK = b"hello" * 300
LONG_CAPTION = "a" * 150 + "b" * 350


def curated_row(i: int, **fields) -> dict:
    row = dict(uid=f"uid{i}", source="laion-en", key=f"{i:09d}", url=f"http://example.com/{i}.jpg",
               caption=f"caption {i}", caption_raw=f"Caption {i}", image=JPEG_64x48, image_format="JPEG",
               width=64, height=48, phash="0123456789abcdef", lang=None, lang_score=None, clip_score=0.31)
    return row | fields


def rejected_row(i: int, reason: str, detail: str, **fields) -> dict:
    row = dict(uid=f"uid{i}", source="cc12m", key=f"{i:09d}", url=None, caption=f"caption {i}",
               reason=reason, detail=detail, image=JPEG_64x48)
    return row | fields


def write(path: Path, rows: list[dict], schema: pa.Schema) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


@pytest.fixture
def curated(tmp_path) -> Path:
    """curated/ with two shards, written in reverse order: part-1 holds row 2, part-0 rows 0 and 1."""
    folder = tmp_path / "curated"
    folder.mkdir()
    write(folder / "part-1.parquet", [curated_row(2)], CURATED)
    write(folder / "part-0.parquet", [curated_row(0, caption=LONG_CAPTION), curated_row(1)], CURATED)
    return folder


@pytest.fixture
def rejected(tmp_path) -> Path:
    rows = [
        rejected_row(0, "image_too_small", "20x20: shorter side < 32 px", image=JPEG_640x480,
                     caption="<script>alert(1)</script> & co"),
        rejected_row(1, "caption_missing", "no .txt member", caption=None, image=PNG_RGBA),
        rejected_row(2, "image_missing", "no .jpg member", image=None),
        rejected_row(3, "image_undecodable", "OSError: image file is truncated", image=TRUNCATED),
        rejected_row(4, "image_undecodable", "not an image format PIL knows", image=JUNK),
    ]
    return write(tmp_path / "rejected.parquet", rows, REJECTED)


def block(text: str, row: int) -> list[str]:
    """The lines of one row's block in `describe`'s output."""
    return text.split(f"\nrow {row}\n")[1].split("\n\n")[0].splitlines()


def thumbnails(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data)))
            for data in re.findall(r'<img src="data:image/jpeg;base64,([^"]+)"', page)]


# describe


def test_size_is_for_people():
    assert [_size(n) for n in (0, 999, 1000, 47_600, 3_140_000, 2_500_000_000)] == [
        "0 B", "999 B", "1.0 KB", "47.6 KB", "3.1 MB", "2.5 GB"]


def test_describe_header_of_a_folder(curated):
    size = sum(f.stat().st_size for f in curated.iterdir())
    lines = describe(str(curated), rows=0).splitlines()
    assert lines[0] == f"{curated}: 2 Parquet files, {size / 1000:.1f} KB"
    assert lines[1] == "rows: 3"
    assert lines[2:] == ["schema:"] + [f"  {field.name}: {field.type}" for field in CURATED]
    assert "  lang_score: float" in lines and "  width: int32" in lines


def test_describe_curated_rows(curated):
    text = describe(str(curated), rows=3)
    assert block(text, 0) == [
        "  uid: uid0",
        "  source: laion-en",
        "  key: 000000000",
        "  url: http://example.com/0.jpg",
        "  caption: " + "a" * 150 + "b" * 50 + "…",
        "  caption_raw: Caption 0",
        f"  image: <JPEG 64x48, {len(JPEG_64x48) / 1000:.1f} KB>",
        "  image_format: JPEG",
        "  width: 64",
        "  height: 48",
        "  phash: 0123456789abcdef",
        "  lang: null",
        "  lang_score: null",
        "  clip_score: 0.31",
    ]
    assert block(text, 2)[0] == "  uid: uid2"  # files in sorted order: part-1 comes second
    assert text.count("\nrow ") == 3


def test_describe_shows_only_the_rows_asked(curated):
    text = describe(str(curated), rows=1)
    assert "\nrow 0\n" in text
    assert "\nrow 1\n" not in text


def test_describe_rejected_images(rejected):
    text = describe(str(rejected), rows=5)
    assert text.splitlines()[0] == f"{rejected}: 1 Parquet file, {rejected.stat().st_size / 1000:.1f} KB"
    assert "  image: <PNG 40x20, %d B>" % len(PNG_RGBA) in block(text, 1)
    assert "  caption: null" in block(text, 1)
    assert "  image: null" in block(text, 2)
    assert f"  image: <JPEG 64x48, {len(TRUNCATED) / 1000:.1f} KB>" in block(text, 3)  # the header alone: no decode
    assert "  image: <1,500 bytes, not an image>" in block(text, 4)


def test_describe_lists_and_line_breaks(tmp_path):
    table = pa.table({"tags": [["a", "b", "c", "d", "e"], []], "text": ["one\ntwo", "x"], "blob": [b"\x00\x01", None]})
    pq.write_table(table, tmp_path / "t.parquet")
    assert block(describe(str(tmp_path / "t.parquet")), 0) == [
        "  tags: list of 5: [a, b, c, …]",
        "  text: one\\ntwo",
        "  blob: <2 bytes, not an image>",
    ]
    assert block(describe(str(tmp_path / "t.parquet")), 1)[0] == "  tags: list of 0: []"


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts bytes read with Linux's /proc/self/io")
def test_describe_reads_only_the_rows_it_shows(tmp_path):
    """One row group of 20 MB of image bytes; showing a row must not read it all."""
    rng = np.random.default_rng(0)
    rows = [curated_row(i, image=rng.bytes(100_000)) for i in range(200)]
    path = tmp_path / "big.parquet"
    table = pa.Table.from_pylist(rows, schema=CURATED)
    pq.write_table(table, path, row_group_size=200, write_batch_size=1, data_page_size=100_000)

    def bytes_read() -> int:
        return int(re.search(r"rchar: (\d+)", Path("/proc/self/io").read_text()).group(1))

    describe(str(path), rows=1)  # PIL loads its plugins on first use: count the second call only
    before = bytes_read()
    describe(str(path), rows=1)
    assert bytes_read() - before < 3_000_000


# render_html


def test_render_rejected(rejected, tmp_path):
    out = tmp_path / "sheet.html"
    assert render_html(str(rejected), str(out)) == 5
    page = out.read_text(encoding="utf-8")
    assert page.count('<div class="card rejected">') == 5
    assert page.count("<img") == 2  # the JPEG and the PNG; null, truncated and junk get grey boxes
    assert '<p class="caption">&lt;script&gt;alert(1)&lt;/script&gt; &amp; co</p>' in page
    assert "<script>" not in page
    assert '<p class="caption missing">no caption</p>' in page
    assert '<div class="reason"><b>image_too_small</b> 20x20: shorter side &lt; 32 px</div>' in page
    assert '<div class="reason"><b>image_missing</b> no .jpg member</div>' in page
    assert '<div class="thumb none">no image</div>' in page
    truncated = r'<div class="thumb none">cannot decode: image file is truncated \(\d+ bytes not processed\)</div>'
    assert len(re.findall(truncated, page)) == 1
    assert '<div class="thumb none">cannot decode: not an image</div>' in page
    assert '<div class="meta">key <code>000000003</code></div>' in page


def test_thumbnails_are_small_jpegs(rejected, tmp_path):
    out = tmp_path / "sheet.html"
    render_html(str(rejected), str(out))
    images = thumbnails(out.read_text(encoding="utf-8"))
    assert [(image.format, image.size) for image in images] == [("JPEG", (256, 192)), ("JPEG", (40, 20))]
    assert images[1].convert("RGB").getpixel((20, 10)) == pytest.approx((255, 127, 127), abs=3)  # over white


def test_render_curated_limit_and_size(tmp_path):
    noise = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (900, 1200, 3), dtype=np.uint8)), "JPEG")
    path = write(tmp_path / "c.parquet", [curated_row(i, image=noise) for i in range(3)], CURATED)
    out = tmp_path / "sheet.html"
    assert render_html(str(path), str(out), limit=2) == 2
    page = out.read_text(encoding="utf-8")
    assert page.count('<div class="card">') == 2
    assert page.count("<img") == 2
    assert 'class="reason"' not in page
    assert "2 of 3 rows from 1 Parquet file, " in page
    assert len(noise) > 500_000 and out.stat().st_size < 150_000  # thumbnails, not the images


def test_render_empty_dataset(tmp_path):
    path = write(tmp_path / "empty.parquet", [], REJECTED)
    out = tmp_path / "sheet.html"
    assert render_html(str(path), str(out)) == 0
    assert "0 of 0 rows" in out.read_text(encoding="utf-8")


# errors


@pytest.mark.parametrize("inspect", [describe, lambda path: render_html(path, os.devnull)])
def test_missing_path(inspect, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        inspect(str(tmp_path / "nope"))
    assert str(e.value) == f"no such file or folder: {tmp_path / 'nope'}"


def test_folder_without_parquet(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError) as e:
        describe(str(tmp_path))
    assert str(e.value) == f"no .parquet files in {tmp_path}"


@pytest.mark.parametrize("inspect", [describe, lambda path: render_html(path, os.devnull)])
def test_not_parquet(inspect, tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("uid,caption\n1,a cat\n")
    with pytest.raises(ValueError) as e:
        inspect(str(path))
    assert str(e.value) == f"not a Parquet file: {path}"


def test_shards_with_different_schemas(tmp_path):
    write(tmp_path / "a.parquet", [curated_row(0)], CURATED)
    write(tmp_path / "b.parquet", [rejected_row(0, "image_missing", "")], REJECTED)
    with pytest.raises(ValueError) as e:
        describe(str(tmp_path))
    assert str(e.value) == f"schema of {tmp_path / 'b.parquet'} differs from that of {tmp_path / 'a.parquet'}"
