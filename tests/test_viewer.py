"""Tests of viewer/ (describe.py, contact_sheet.py) and formats/markup.py: `describe`'s exact lines, the HTML contact sheet, and the one-line errors; for
stage-2 samples and packed rows of both dialects (and Qwen-VL files of the schema before Qwen2-VL), the decoded text with its supervision marked
and the regions drawn on the images and on a video's first frame."""

import base64
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from formats.dynamic_resolution import image_grid, image_tokens, smart_resize, video_grid
from formats.mrope import mrope_positions
from formats.schemas import CURATED, PACKED, QWEN2_VL_COLUMNS, REJECTED, SAMPLES
from formats.tokenizer import PAD_ID, QwenTokenizer
from viewer.contact_sheet import COLOURS, render_html
from viewer.describe import MAX_DECODED, describe
from viewer.rows import human_size, kind_of
from viewer.sampling import shares

ROOT = Path(__file__).resolve().parent.parent


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
               width=64, height=48, phash=81985529216486895, lang=None, lang_score=None, clip_score=0.31)
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
    assert [human_size(n) for n in (0, 999, 1000, 47_600, 3_140_000, 2_500_000_000)] == [
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
        "  phash: 81985529216486895",
        "  lang: null",
        "  lang_score: null",
        "  clip_score: 0.31",
        "  nsfw_score: null",
        "  aesthetic_score: null",
        "  watermark_score: null",
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
    # reasons largest first, ties by name: image_undecodable (2), caption_missing (the PNG), image_missing,
    # image_too_small (the JPEG)
    assert [(image.format, image.size) for image in images] == [("JPEG", (40, 20)), ("JPEG", (256, 192))]
    assert images[0].convert("RGB").getpixel((20, 10)) == pytest.approx((255, 127, 127), abs=3)  # over white


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


@pytest.fixture
def many_reasons(tmp_path) -> Path:
    """56 rejected rows in two files of row groups of 7: caption_too_short x 50 (rows 0-29 in part-0, 30-49 in
    part-1), then duplicate x 5 and image_too_small x 1 at the end of part-1."""
    folder = tmp_path / "rejected"
    folder.mkdir()
    reasons = ["caption_too_short"] * 50 + ["duplicate"] * 5 + ["image_too_small"]
    rows = [rejected_row(i, reason, f"detail {i}", image=None) for i, reason in enumerate(reasons)]
    for name, part in (("rules-00000-of-00002", rows[:30]), ("rules-00001-of-00002", rows[30:])):
        pq.write_table(pa.Table.from_pylist(part, schema=REJECTED), folder / f"{name}.parquet", row_group_size=7)
    return folder


def shown_reasons(page: str) -> dict[str, int]:
    found = re.findall(r'<div class="reason"><b>(\w+)</b>', page)
    return {reason: found.count(reason) for reason in dict.fromkeys(found)}


def test_shares_are_even_and_small_groups_leave_theirs_to_the_others():
    assert shares({"a": 50, "b": 5, "c": 1}, 12) == {"c": 1, "b": 5, "a": 6}
    assert shares({"a": 100, "b": 100, "c": 100}, 10) == {"a": 3, "b": 3, "c": 4}
    assert shares({"a": 2, "b": 3}, 200) == {"a": 2, "b": 3}
    assert shares({}, 5) == {}


def test_render_shares_the_limit_between_reasons(many_reasons, tmp_path):
    out = tmp_path / "sheet.html"
    assert render_html(str(many_reasons), str(out), limit=12) == 12
    page = out.read_text(encoding="utf-8")
    assert shown_reasons(page) == {"caption_too_short": 6, "duplicate": 5, "image_too_small": 1}  # largest first
    assert "<h2>reason <code>caption_too_short</code> · 6 of 50 rows</h2>" in page
    assert "<h2>reason <code>duplicate</code> · 5 of 5 rows</h2>" in page
    assert "<h2>reason <code>image_too_small</code> · 1 of 1 rows</h2>" in page
    assert "12 of 56 rows from 2 Parquet files, " in page and ", an even share per reason</p>" in page
    # each reason's first rows, in order: the same sheet every time
    assert re.findall(r"key <code>0*(\d+)</code>", page) == [str(i) for i in [*range(6), *range(50, 56)]]


def test_render_one_reason(many_reasons, tmp_path):
    out = tmp_path / "sheet.html"
    assert render_html(str(many_reasons), str(out), limit=3, where={"reason": "duplicate"}) == 3
    page = out.read_text(encoding="utf-8")
    assert shown_reasons(page) == {"duplicate": 3}
    assert "<h2>reason <code>duplicate</code> · 3 of 5 rows</h2>" in page
    assert "3 of 56 rows (5 with reason duplicate) from 2 Parquet files, " in page


def test_describe_one_reason_shows_its_first_rows(many_reasons):
    text = describe(str(many_reasons), rows=2, where={"reason": "duplicate"})
    assert "rows: 56 (5 with reason duplicate)\n" in text
    assert re.findall(r"\nrow (\d+)\n", text) == ["50", "51"]
    assert block(text, 50)[:5] == ["  uid: uid50", "  source: cc12m", "  key: 000000050", "  url: null", "  caption: caption 50"]


def inspect_cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "beam_runner.py"), "inspect", *map(str, argv)], capture_output=True, text=True, timeout=120)


def test_inspect_filters_are_checked(many_reasons, tmp_path):
    done = inspect_cli(many_reasons, "--reason", "too_blurry", "--render", tmp_path / "s.html")
    assert (done.returncode, done.stderr) == (
        2, f"error: --reason too_blurry: not in {many_reasons} (reasons present: caption_too_short, duplicate, image_too_small)\n")
    done = inspect_cli(many_reasons, "--task", "vqa")
    assert (done.returncode, done.stderr) == (2, f"error: --task: {many_reasons} has no task column\n")
    done = inspect_cli(many_reasons, "--limit", "0", "--render", tmp_path / "s.html")
    assert (done.returncode, done.stderr) == (2, "error: --limit must be >= 1, not 0\n")
    assert not (tmp_path / "s.html").exists()


def test_a_caption_that_was_not_utf8_reads_the_same_in_text_and_html(tmp_path):
    from filters.curate import _readable

    caption = _readable(b"caf\xe9 au lait \xff")
    path = write(tmp_path / "r.parquet", [rejected_row(0, "caption_not_utf8", "invalid byte 0xe9 at offset 3", caption=caption)], REJECTED)
    out = tmp_path / "sheet.html"
    render_html(str(path), str(out))
    assert "  caption: caf\\xe9 au lait \\xff" in block(describe(str(path)), 0)
    assert '<p class="caption">caf\\xe9 au lait \\xff</p>' in out.read_text(encoding="utf-8")


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


# samples/ and packed/ (stage 2, sft): decoded text, supervision marked, regions drawn


@pytest.fixture(scope="module")
def tok() -> QwenTokenizer:
    return QwenTokenizer()


GREY = (128, 128, 128)
GROUNDING_PROMPT = "<img>bee.png</img>Generate the caption in English with grounding:"
GROUNDING_TARGET = " A <ref>bee</ref><box>(125,250),(500,750)</box><|endoftext|>"
OCR_PROMPT = "<img>sign.png</img>OCR with grounding:"
OCR_TARGET = "<ref>STOP</ref><quad>(250,125),(750,125),(750,875),(250,875)</quad><|endoftext|>"
# 768x384 and 384x768: the sheet's thumbnails are 384x192 and 192x384, at exactly half the size.
PNG_WIDE = encode(Image.new("RGB", (768, 384), GREY), "PNG")
PNG_TALL = encode(Image.new("RGB", (384, 768), GREY), "PNG")


def sample_row(tok, uid: str, segments: list[tuple[str, bool]], images: list[bytes], **fields) -> dict:
    encoded = tok.encode_segments(segments)
    row = dict(uid=uid, task="grounding", source="grit", key=f"key-{uid}", text="".join(t for t, _ in segments),
               input_ids=encoded.ids, loss_mask=encoded.mask, images=images, image_refs=encoded.images)
    return row | fields


def packed_row(uid: str, samples: list[dict], seq_len: int) -> dict:
    """The samples one after another, then <|endoftext|> padding (unsupervised, doc -1) up to seq_len."""
    ids, mask, docs, positions, images = [], [], [], [], []
    for d, s in enumerate(samples):
        n = len(s["input_ids"])
        ids += s["input_ids"]
        mask += s["loss_mask"]
        docs += [d] * n
        positions += list(range(n))
        images += s["images"]
    pad = seq_len - len(ids)
    sources = [s["source"] for s in samples]
    return dict(uid=uid, task="grounding", source=sources[0] if len(set(sources)) == 1 else None,
                input_ids=ids + [PAD_ID] * pad, loss_mask=mask + [0] * pad, doc_ids=docs + [-1] * pad,
                position_ids=positions + list(range(pad)), images=images, sample_uids=[s["uid"] for s in samples],
                sources=sources)


@pytest.fixture
def samples(tok, tmp_path) -> tuple[Path, list[dict]]:
    rows = [
        sample_row(tok, "s0", [(GROUNDING_PROMPT, False), (GROUNDING_TARGET, True)], [PNG_WIDE]),
        sample_row(tok, "s1", [(OCR_PROMPT, False), (OCR_TARGET, True)], [PNG_TALL]),
    ]
    return write(tmp_path / "samples.parquet", rows, SAMPLES), rows


@pytest.fixture
def packed(tok, samples, tmp_path) -> tuple[Path, list[dict]]:
    _, rows = samples
    seq_len = len(rows[0]["input_ids"]) + len(rows[1]["input_ids"]) + 10
    return write(tmp_path / "packed.parquet", [packed_row("p0", rows, seq_len)], PACKED), rows


def test_kind_by_column_names():
    assert kind_of(CURATED.names) == kind_of(REJECTED.names) == "pairs"
    assert kind_of(SAMPLES.names) == "samples"
    assert kind_of(PACKED.names) == "packed"


def test_describe_sample_row(samples):
    path, rows = samples
    text = describe(str(path), rows=2)
    assert ("decoded: the input_ids as text, supervised runs (loss_mask 1) between ⟦ and ⟧, "
            "each image as <img>REF</img> from image_refs") in text.splitlines()
    n, supervised = len(rows[0]["input_ids"]), sum(rows[0]["loss_mask"])
    assert block(text, 0) == [
        "  uid: s0",
        "  task: grounding",
        "  source: grit",
        "  key: key-s0",
        "  text: " + GROUNDING_PROMPT + GROUNDING_TARGET,
        f"  input_ids: list of {n}: [151857, 151859, 151859, …]",
        f"  loss_mask: list of {n}: [0, 0, 0, …]",
        f"  images: list of 1: [<PNG 768x384, {human_size(len(PNG_WIDE))}>]",
        "  image_refs: list of 1: [bee.png]",
        f"  decoded: {n} tokens, {supervised} supervised",
        "    <img>bee.png</img>Generate the caption in English with grounding:"
        "⟦ A <ref>bee</ref><box>(125,250),(500,750)</box><|endoftext|>⟧",
    ]
    assert block(text, 1)[-1] == "    <img>sign.png</img>OCR with grounding:⟦" + OCR_TARGET + "⟧"


def test_describe_marks_every_supervised_run(tok, tmp_path):
    """ChatML: <|im_start|>, <|im_end|> with its newline and the assistant's content are supervised."""
    segments = [("<|im_start|>", True), ("system\nYou are a helpful assistant.", False),
                ("<|im_end|>\n<|im_start|>", True), ("user\nPicture 1: <img>dog.jpg</img>\nWhere?", False),
                ("<|im_end|>\n<|im_start|>", True), ("assistant\n", False),
                ("<ref>the dog</ref><box>(1,2),(3,4)</box><|im_end|>\n", True)]
    path = write(tmp_path / "chat.parquet", [sample_row(tok, "c0", segments, [PNG_WIDE], task="chat")], SAMPLES)
    assert block(describe(str(path)), 0)[-1] == (
        "    ⟦<|im_start|>⟧system\\nYou are a helpful assistant.⟦<|im_end|>\\n<|im_start|>⟧"
        "user\\nPicture 1: <img>dog.jpg</img>\\nWhere?⟦<|im_end|>\\n<|im_start|>⟧"
        "assistant\\n⟦<ref>the dog</ref><box>(1,2),(3,4)</box><|im_end|>\\n⟧")


def test_describe_cuts_long_text_and_keeps_the_marks_paired(tok, tmp_path):
    document = "word " * 200  # 1,000 characters, all supervised (a pure-text sample)
    row = sample_row(tok, "t0", [(document + "<|endoftext|>", True)], [], task="text")
    path = write(tmp_path / "text.parquet", [row], SAMPLES)
    assert block(describe(str(path)), 0)[-1] == "    ⟦" + document[:MAX_DECODED] + "…⟧"


def test_describe_packed_row(packed):
    path, rows = packed
    text = describe(str(path))
    n0, n1 = len(rows[0]["input_ids"]), len(rows[1]["input_ids"])
    s0, s1 = sum(rows[0]["loss_mask"]), sum(rows[1]["loss_mask"])
    tokens = n0 + n1 + 10
    lines = block(text, 0)
    assert lines[:3] == ["  uid: p0", "  task: grounding", "  source: grit"]
    assert lines[7] == f"  images: list of 2: [<PNG 768x384, {human_size(len(PNG_WIDE))}>, <PNG 384x768, {human_size(len(PNG_TALL))}>]"
    assert lines[8:] == [
        "  sample_uids: list of 2: [s0, s1]",
        "  sources: list of 2: [grit, grit]",
        f"  packing: {tokens:,} tokens, 2 documents, 10 padding, efficiency {100 * (n0 + n1) / tokens:.2f}%",
        f"  document 0: sample s0, {n0} tokens, {s0} supervised, 1 image",
        "    <img>images[0]</img>Generate the caption in English with grounding:⟦" + GROUNDING_TARGET + "⟧",
        f"  document 1: sample s1, {n1} tokens, {s1} supervised, 1 image",
        "    <img>images[1]</img>OCR with grounding:⟦" + OCR_TARGET + "⟧",
        "  padding: 10 tokens, 0 supervised",
    ]


def test_describe_flags_positions_that_do_not_restart(packed, tmp_path):
    path, rows = packed
    row = pq.read_table(path).to_pylist()[0]
    n0 = len(rows[0]["input_ids"])
    row["position_ids"] = list(range(len(row["position_ids"])))  # one run across the documents
    text = describe(str(write(tmp_path / "bad.parquet", [row], PACKED)))
    assert f"  document 0: sample s0, {n0} tokens, {sum(rows[0]['loss_mask'])} supervised, 1 image" in text
    assert f", 1 image, position ids not 0..{len(rows[1]['input_ids']) - 1}" in text


def drawn(page: str) -> list[Image.Image]:
    return [image.convert("RGB") for image in thumbnails(page)]


def rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def test_render_samples_draws_boxes_and_quads(samples, tmp_path):
    path, _ = samples
    out = tmp_path / "sheet.html"
    assert render_html(str(path), str(out)) == 2
    page = out.read_text(encoding="utf-8")
    assert page.count('<div class="doc">') == 2
    wide, tall = drawn(page)
    assert wide.size == (384, 192) and tall.size == (192, 384)
    # the box (125,250),(500,750) on the 1000 grid is x 48..192, y 48..144 of 384x192: a 3 px outline inside
    assert wide.getpixel((49, 96)) == pytest.approx(rgb(COLOURS[0]), abs=24)  # the left edge
    assert wide.getpixel((120, 143)) == pytest.approx(rgb(COLOURS[0]), abs=24)  # the bottom edge
    assert wide.getpixel((120, 96)) == pytest.approx(GREY, abs=8)  # inside
    assert wide.getpixel((240, 96)) == pytest.approx(GREY, abs=8)  # outside, right of it
    # the label "bee" on a patch of the box's colour, just above its top-left corner
    assert wide.getpixel((49, 40)) == pytest.approx(rgb(COLOURS[0]), abs=24)
    # the quad (250,125)..(750,875) is x 48..144, y 48..336 of 192x384
    assert tall.getpixel((49, 200)) == pytest.approx(rgb(COLOURS[0]), abs=24)
    assert tall.getpixel((143, 200)) == pytest.approx(rgb(COLOURS[0]), abs=24)
    assert tall.getpixel((96, 200)) == pytest.approx(GREY, abs=8)
    # the text beside: the supervised target in <mark>, each region's tag in its colour
    assert ('&lt;img&gt;bee.png&lt;/img&gt;Generate the caption in English with grounding:<mark> A '
            f'&lt;ref&gt;bee&lt;/ref&gt;<b style="color:{COLOURS[0]}">&lt;box&gt;(125,250),(500,750)&lt;/box&gt;</b>'
            '&lt;|endoftext|&gt;</mark>') in page
    assert "<figcaption>bee.png · PNG 768x384, " in page and " · 1 region drawn</figcaption>" in page
    assert '<div class="meta">uid <code>s0</code> · task <code>grounding</code> · source <code>grit</code>' in page


def test_render_shares_the_limit_between_tasks(tok, tmp_path):
    segments = [(OCR_PROMPT, False), (OCR_TARGET, True)]
    rows = [sample_row(tok, f"c{i}", segments, [PNG_TALL], task="caption") for i in range(10)]
    rows += [sample_row(tok, f"v{i}", segments, [PNG_TALL], task="vqa") for i in range(3)]
    path = write(tmp_path / "samples.parquet", rows, SAMPLES)
    out = tmp_path / "sheet.html"
    assert render_html(str(path), str(out), limit=6) == 6
    page = out.read_text(encoding="utf-8")
    assert re.findall(r"uid <code>(\w+)</code> · task <code>(\w+)</code>", page) == [
        ("c0", "caption"), ("c1", "caption"), ("c2", "caption"), ("v0", "vqa"), ("v1", "vqa"), ("v2", "vqa")]
    assert "<h2>task <code>caption</code> · 3 of 10 rows</h2>" in page and "<h2>task <code>vqa</code> · 3 of 3 rows</h2>" in page
    assert render_html(str(path), str(out), limit=6, where={"task": "vqa"}) == 3
    assert re.findall(r"task <code>(\w+)</code> · source", out.read_text(encoding="utf-8")) == ["vqa"] * 3


def test_render_packed_draws_each_documents_regions_on_its_own_image(packed, tmp_path):
    path, rows = packed
    out = tmp_path / "sheet.html"
    assert render_html(str(path), str(out)) == 1  # rows, not documents
    page = out.read_text(encoding="utf-8")
    n0, n1 = len(rows[0]["input_ids"]), len(rows[1]["input_ids"])
    assert page.count('<section class="packed">') == 1 and page.count('<div class="doc">') == 2
    assert f"{n0 + n1 + 10:,} tokens, 2 documents, 10 padding (0 supervised), efficiency " in page
    assert "1 of 1 rows from 1 Parquet file, " in page and ", 2 documents</p>" in page
    assert '<div class="meta">document <code>1</code> · sample <code>s1</code> · ' in page
    assert "&lt;img&gt;images[1]&lt;/img&gt;OCR with grounding:<mark>" in page
    wide, tall = drawn(page)
    assert wide.getpixel((49, 96)) == pytest.approx(rgb(COLOURS[0]), abs=24)
    assert tall.getpixel((49, 200)) == pytest.approx(rgb(COLOURS[0]), abs=24)
    # document 0's box is not on document 1's image: x 48..192, y 48..144 would cross (100, 143) there
    assert tall.getpixel((100, 143)) == pytest.approx(GREY, abs=8)


def test_render_notes_regions_it_cannot_draw(tok, tmp_path):
    rows = [
        sample_row(tok, "t0", [("<ref>a box</ref><box>(1,2),(300,400)</box> and no image<|endoftext|>", True)], [],
                   task="text"),
        sample_row(tok, "b0", [("<img>junk.jpg</img>", False), ("<box>(10,20)</box>", True)], [JUNK]),
    ]
    out = tmp_path / "sheet.html"
    render_html(str(write(tmp_path / "s.parquet", rows, SAMPLES)), str(out))
    page = out.read_text(encoding="utf-8")
    assert '<div class="note">1 region with no image before it: not drawn</div>' in page
    assert '<div class="note">not drawn, coordinates unreadable: &lt;box&gt;(10,20)&lt;/box&gt;</div>' in page
    assert '<div class="thumb none">cannot decode: not an image</div>' in page
    assert page.count("<img") == 0 and page.count('<div class="pictures">') == 1  # the text sample has none


def test_render_draws_a_region_on_the_last_image_before_it(tok, tmp_path):
    segments = [("<|im_start|>user\nPicture 1: <img>a.png</img>\nPicture 2: <img>b.png</img>\nWhere is the sign?", False),
                ("<|im_end|>\n<|im_start|>assistant\n<ref>the sign</ref><quad>(250,125),(750,125),(750,875),(250,875)</quad>"
                 "<|im_end|>\n", True)]
    path = write(tmp_path / "chat.parquet", [sample_row(tok, "c0", segments, [PNG_WIDE, PNG_TALL], task="chat")], SAMPLES)
    out = tmp_path / "sheet.html"
    render_html(str(path), str(out))
    page = out.read_text(encoding="utf-8")
    first, second = drawn(page)
    assert second.getpixel((49, 200)) == pytest.approx(rgb(COLOURS[0]), abs=24)  # on Picture 2
    assert all(first.getpixel(xy) == pytest.approx(GREY, abs=8) for xy in [(96, 49), (96, 100), (190, 150)])
    assert "<figcaption>a.png · PNG 768x384, " in page and "<figcaption>b.png · PNG 384x768, " in page
    assert " · 1 region drawn</figcaption>" in page and "0 regions drawn" not in page


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts bytes read with Linux's /proc/self/io")
def test_render_packed_reads_only_the_rows_it_shows(tok, tmp_path):
    """One row group of 40 packed rows of 1 MB of image bytes each; a sheet of 2 rows must not read it all."""
    rng = np.random.default_rng(0)
    sample = sample_row(tok, "s0", [(GROUNDING_PROMPT, False), (GROUNDING_TARGET, True)], [b""])
    rows = []
    for i in range(40):
        sample["images"] = [rng.bytes(1_000_000)]
        rows.append(packed_row(f"p{i}", [sample], len(sample["input_ids"]) + 4))
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=PACKED), path, row_group_size=40, write_batch_size=1,
                   data_page_size=1_000_000)

    def bytes_read() -> int:
        return int(re.search(r"rchar: (\d+)", Path("/proc/self/io").read_text()).group(1))

    render_html(str(path), os.devnull, limit=2)
    before = bytes_read()
    assert render_html(str(path), os.devnull, limit=2) == 2
    assert bytes_read() - before < 8_000_000


def test_describe_shows_ids_that_are_no_token(tmp_path):
    row = dict(uid="x", task="text", source="s", key="k", text="", input_ids=[40, 999_999, 1079, None, 151_643],
               loss_mask=[0, 0, 1, 1, 1], images=[], image_refs=[])
    path = write(tmp_path / "bad.parquet", [row], SAMPLES)
    assert block(describe(str(path)), 0)[-1] == "    I[bad id 999999]⟦ am[bad id None]<|endoftext|>⟧"


def test_render_a_decompression_bomb_without_decoding_it_or_a_warning(tmp_path):
    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, "PNG", optimize=True)  # 144M px: above the bomb limit
    folder = tmp_path / "rejected"
    folder.mkdir()
    write(folder / "part-0.parquet", [rejected_row(0, "image_too_large", "144,000,000 px", image=out.getvalue())], REJECTED)
    sheet = tmp_path / "sheet.html"
    done = subprocess.run([sys.executable, str(ROOT / "beam_runner.py"), "inspect", str(folder), "--rows", "1", "--render", str(sheet)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    assert "<PNG 12000x12000, 17.6 KB>" in done.stdout
    assert '<div class="thumb none">cannot decode: 12000x12000 px, too large to render</div>' in sheet.read_text()


# Qwen2-VL rows (dialect qwen2-vl): spans of varying size, videos; and Qwen-VL files of the schema before them


@pytest.fixture(scope="module")
def tok2() -> QwenTokenizer:
    return QwenTokenizer(dialect="qwen2-vl")


Q2_GROUNDING_PROMPT = "<|vision_start|>bee.png<|vision_end|>Generate the caption in English with grounding:"
Q2_GROUNDING_TARGET = " A <|object_ref_start|>bee<|object_ref_end|><|box_start|>(125,250),(500,750)<|box_end|><|endoftext|>"
Q2_VIDEO_PROMPT = "<|vision_start|>clip.mp4<|vision_end|>Where is the ball?"
Q2_VIDEO_TARGET = "<|object_ref_start|>the ball<|object_ref_end|><|box_start|>(0,0),(500,1000)<|box_end|>"
Q2_OCR_PROMPT = "<|vision_start|>sign.png<|vision_end|>OCR with grounding:"
Q2_OCR_TARGET = ("<|object_ref_start|>STOP<|object_ref_end|><|quad_start|>(250,125),(750,125),(750,875),(250,875)"
                 "<|quad_end|><|endoftext|>")
# 4 frames of 224x112, at a resized size already: grid (2, 8, 16), 64 tokens. The first is grey, the others white.
FRAMES = [encode(Image.new("RGB", (224, 112), GREY if i == 0 else (255, 255, 255)), "JPEG") for i in range(4)]
QWEN2_VL_NAMES = {name for name, _ in QWEN2_VL_COLUMNS} | {"video_refs"}


def qwen2_vl_grids(vision: list) -> list[tuple[tuple[int, int], tuple[int, int, int]]]:
    """(resized (height, width), grid) of each image (bytes) or video (its frames) in span order."""
    out = []
    for item in vision:
        if isinstance(item, bytes):
            width, height = Image.open(io.BytesIO(item)).size
            size = smart_resize(height, width)
            out.append((size, image_grid(*size)))
        else:
            width, height = Image.open(io.BytesIO(item[0])).size
            out.append(((height, width), video_grid(len(item), height, width)))
    return out


def qwen2_vl_row(tok2, uid: str, segments: list[tuple[str, bool]], vision: list, **fields) -> dict:
    """A Qwen2-VL sample: `vision` holds each span's image (bytes) or video (a list of JPEG frames) in order."""
    grids = qwen2_vl_grids(vision)
    is_video = [not isinstance(item, bytes) for item in vision]
    encoded = tok2.encode_segments(segments, vision=[(image_tokens(g), v) for (_, g), v in zip(grids, is_video)])

    def of(video: bool, values: list) -> list | None:
        return [x for x, v in zip(values, is_video) if v == video] or (None if video else [])

    image_grids, video_grids = of(False, [list(g) for _, g in grids]), of(True, [list(g) for _, g in grids])
    row = dict(uid=uid, task="grounding", source="grit", key=f"key-{uid}", text="".join(t for t, _ in segments),
               input_ids=encoded.ids, loss_mask=encoded.mask, images=of(False, vision), image_refs=of(False, encoded.images),
               dialect="qwen2-vl", image_sizes=of(False, [list(s) for s, _ in grids]), image_grid_thw=image_grids,
               videos=of(True, vision), video_grid_thw=video_grids,
               mrope_position_ids=mrope_positions(encoded.ids, image_grids, video_grids or ()).tolist(),
               video_refs=of(True, encoded.images))
    return row | fields


def qwen2_vl_packed_row(uid: str, samples: list[dict], seq_len: int) -> dict:
    """packed_row's fields, with the samples' images, videos, grids and sizes one after another, and M-RoPE
    ids restarting at each document and at the padding."""
    row = packed_row(uid, samples, seq_len)
    starts = [0]
    for s in samples:
        starts.append(starts[-1] + len(s["input_ids"]))
    joined = {name: [x for s in samples for x in s[name] or []] for name in ("image_sizes", "image_grid_thw", "videos", "video_grid_thw")}
    mrope = mrope_positions(row["input_ids"], joined["image_grid_thw"], joined["video_grid_thw"], doc_starts=starts)
    return row | joined | dict(dialect="qwen2-vl", mrope_position_ids=mrope.tolist())


@pytest.fixture
def qwen2_vl_samples(tok2, tmp_path) -> tuple[Path, list[dict]]:
    rows = [
        qwen2_vl_row(tok2, "q0", [(Q2_GROUNDING_PROMPT, False), (Q2_GROUNDING_TARGET, True)], [PNG_WIDE]),
        qwen2_vl_row(tok2, "q1", [(Q2_VIDEO_PROMPT, False), (Q2_VIDEO_TARGET, True), (Q2_OCR_PROMPT, False),
                                  (Q2_OCR_TARGET, True)], [FRAMES, PNG_TALL]),
    ]
    return write(tmp_path / "samples.parquet", rows, SAMPLES), rows


def test_describe_qwen2_vl_sample_rows(qwen2_vl_samples):
    path, rows = qwen2_vl_samples
    text = describe(str(path), rows=2)
    lines = text.splitlines()
    legend = lines.index("decoded: the input_ids as text, supervised runs (loss_mask 1) between ⟦ and ⟧, "
                         "each image as <img>REF</img> from image_refs")
    assert lines[legend + 1 : legend + 3] == [
        "qwen2-vl rows: each image or video as <|vision_start|>REF<|vision_end|> from image_refs or video_refs; "
        "per image its size as stored -> as resized (image_sizes) and its tokens (image_grid_thw), "
        "per video its frames and tokens (video_grid_thw)", ""]
    n, supervised = len(rows[0]["input_ids"]), sum(rows[0]["loss_mask"])
    assert block(text, 0) == [
        "  uid: q0",
        "  task: grounding",
        "  source: grit",
        "  key: key-q0",
        "  text: " + Q2_GROUNDING_PROMPT + Q2_GROUNDING_TARGET,
        f"  input_ids: list of {n}: [151652, 151655, 151655, …]",
        f"  loss_mask: list of {n}: [0, 0, 0, …]",
        f"  images: list of 1: [<PNG 768x384, {human_size(len(PNG_WIDE))}>]",
        "  image_refs: list of 1: [bee.png]",
        "  dialect: qwen2-vl",
        "  image_sizes: list of 1: [list of 2: [392, 756]]",
        "  image_grid_thw: list of 1: [list of 3: [1, 28, 54]]",
        f"  mrope_position_ids: list of 3: [list of {n}: [0, 1, 1, …], list of {n}: [0, 1, 1, …], list of {n}: [0, 1, 2, …]]",
        f"  image 0 (bee.png): PNG 768x384, {human_size(len(PNG_WIDE))} -> 756x392, 378 tokens",
        f"  decoded: {n} tokens, {supervised} supervised",
        "    " + Q2_GROUNDING_PROMPT + "⟦" + Q2_GROUNDING_TARGET + "⟧",
    ]
    frames_size = human_size(sum(map(len, FRAMES)))
    assert block(text, 1)[7:] == [
        f"  images: list of 1: [<PNG 384x768, {human_size(len(PNG_TALL))}>]",
        "  image_refs: list of 1: [sign.png]",
        "  dialect: qwen2-vl",
        "  image_sizes: list of 1: [list of 2: [756, 392]]",
        "  image_grid_thw: list of 1: [list of 3: [1, 54, 28]]",
        f"  videos: list of 1: [list of 4: [<JPEG 224x112, {human_size(len(FRAMES[0]))}>, "
        f"<JPEG 224x112, {human_size(len(FRAMES[1]))}>, <JPEG 224x112, {human_size(len(FRAMES[2]))}>, …]]",
        "  video_grid_thw: list of 1: [list of 3: [2, 8, 16]]",
        block(text, 1)[14],  # mrope_position_ids
        "  video_refs: list of 1: [clip.mp4]",
        f"  video 0 (clip.mp4): 4 frames of JPEG 224x112, {frames_size} -> 64 tokens",  # spans in order: the video first
        f"  image 0 (sign.png): PNG 384x768, {human_size(len(PNG_TALL))} -> 392x756, 378 tokens",
        f"  decoded: {len(rows[1]['input_ids'])} tokens, {sum(rows[1]['loss_mask'])} supervised",
        "    " + Q2_VIDEO_PROMPT + "⟦" + Q2_VIDEO_TARGET + "⟧" + Q2_OCR_PROMPT + "⟦" + Q2_OCR_TARGET + "⟧",
    ]
    assert block(text, 1)[14].startswith("  mrope_position_ids: list of 3: [list of ")


def test_describe_flags_a_grid_that_is_not_its_span(tok2, tmp_path):
    row = qwen2_vl_row(tok2, "q0", [(Q2_GROUNDING_PROMPT, False), (Q2_GROUNDING_TARGET, True)], [PNG_WIDE],
                       images=[PNG_WIDE, PNG_TALL], image_grid_thw=[[1, 28, 56], [1, 54, 28]], image_sizes=[[392, 784], [756, 392]])
    lines = block(describe(str(write(tmp_path / "s.parquet", [row], SAMPLES))), 0)
    assert [line for line in lines if line.startswith("  image ")] == [
        f"  image 0 (bee.png): PNG 768x384, {human_size(len(PNG_WIDE))} -> 784x392, 392 tokens, but its span holds 378",
        f"  image 1: PNG 384x768, {human_size(len(PNG_TALL))} -> 392x756, 378 tokens, in no span of the ids",
    ]


def test_describe_qwen2_vl_packed_row(tok2, qwen2_vl_samples, tmp_path):
    _, rows = qwen2_vl_samples
    n0, n1 = len(rows[0]["input_ids"]), len(rows[1]["input_ids"])
    path = write(tmp_path / "packed.parquet", [qwen2_vl_packed_row("p0", rows, n0 + n1 + 10)], PACKED)
    text = describe(str(path))
    lines = block(text, 0)
    frames_size = human_size(sum(map(len, FRAMES)))
    assert [line.split(":")[0] for line in lines[:16]] == [
        "  uid", "  task", "  source", "  input_ids", "  loss_mask", "  doc_ids", "  position_ids", "  images",
        "  sample_uids", "  sources", "  dialect", "  image_sizes", "  image_grid_thw", "  videos", "  video_grid_thw",
        "  mrope_position_ids"]
    assert lines[16:] == [
        f"  image 0: PNG 768x384, {human_size(len(PNG_WIDE))} -> 756x392, 378 tokens",
        f"  video 0: 4 frames of JPEG 224x112, {frames_size} -> 64 tokens",
        f"  image 1: PNG 384x768, {human_size(len(PNG_TALL))} -> 392x756, 378 tokens",
        f"  packing: {n0 + n1 + 10:,} tokens, 2 documents, 10 padding, efficiency {100 * (n0 + n1) / (n0 + n1 + 10):.2f}%",
        f"  document 0: sample q0, {n0} tokens, {sum(rows[0]['loss_mask'])} supervised, 1 image",
        "    <|vision_start|>images[0]<|vision_end|>Generate the caption in English with grounding:⟦" + Q2_GROUNDING_TARGET + "⟧",
        f"  document 1: sample q1, {n1} tokens, {sum(rows[1]['loss_mask'])} supervised, 1 image, 1 video",
        "    <|vision_start|>videos[0]<|vision_end|>Where is the ball?⟦" + Q2_VIDEO_TARGET + "⟧"
        "<|vision_start|>images[1]<|vision_end|>OCR with grounding:⟦" + Q2_OCR_TARGET + "⟧",
        "  padding: 10 tokens, 0 supervised",
    ]
    assert "qwen2-vl rows: each image or video as <|vision_start|>images[i]<|vision_end|> or videos[i]; " in text


def test_render_qwen2_vl_samples_draws_boxes_quads_and_a_videos_first_frame(qwen2_vl_samples, tmp_path):
    path, _ = qwen2_vl_samples
    out = tmp_path / "sheet.html"
    assert render_html(str(path), str(out)) == 2
    page = out.read_text(encoding="utf-8")
    assert page.count('<div class="doc">') == 2 and page.count("<img") == 3
    wide, frame, tall = drawn(page)
    assert (wide.size, frame.size, tall.size) == ((384, 192), (224, 112), (192, 384))
    # the box (125,250),(500,750) on the bee: x 48..192, y 48..144 of 384x192
    assert wide.getpixel((49, 96)) == pytest.approx(rgb(COLOURS[0]), abs=24)
    assert wide.getpixel((120, 96)) == pytest.approx(GREY, abs=8)
    # the video's first (grey) frame with the ball's box (0,0),(500,1000): x 0..112, y 0..112 of 224x112
    assert frame.getpixel((111, 56)) == pytest.approx(rgb(COLOURS[0]), abs=24)
    assert frame.getpixel((56, 56)) == pytest.approx(GREY, abs=8) and frame.getpixel((170, 56)) == pytest.approx(GREY, abs=8)
    # the quad on the sign, the second region of its sample: x 48..144, y 48..336 of 192x384
    assert tall.getpixel((49, 200)) == pytest.approx(rgb(COLOURS[1]), abs=24)
    assert tall.getpixel((96, 200)) == pytest.approx(GREY, abs=8)
    assert ("&lt;|vision_start|&gt;bee.png&lt;|vision_end|&gt;Generate the caption in English with grounding:<mark> A "
            "&lt;|object_ref_start|&gt;bee&lt;|object_ref_end|&gt;"
            f'<b style="color:{COLOURS[0]}">&lt;|box_start|&gt;(125,250),(500,750)&lt;|box_end|&gt;</b>&lt;|endoftext|&gt;</mark>') in page
    assert ("&lt;|vision_start|&gt;sign.png&lt;|vision_end|&gt;OCR with grounding:<mark>&lt;|object_ref_start|&gt;STOP"
            f'&lt;|object_ref_end|&gt;<b style="color:{COLOURS[1]}">&lt;|quad_start|&gt;') in page
    assert (f"<figcaption>bee.png · PNG 768x384, {human_size(len(PNG_WIDE))} -&gt; 756x392, 378 tokens · "
            "1 region drawn</figcaption>") in page
    assert (f"<figcaption>clip.mp4 · video, its first frame: 4 frames of JPEG 224x112, {human_size(sum(map(len, FRAMES)))} "
            "-&gt; 64 tokens · 1 region drawn</figcaption>") in page
    assert "<figcaption>sign.png · PNG 384x768, " in page and "not drawn" not in page


def test_render_qwen2_vl_packed_matches_images_by_their_spans(qwen2_vl_samples, tmp_path):
    _, rows = qwen2_vl_samples
    n0, n1 = len(rows[0]["input_ids"]), len(rows[1]["input_ids"])
    path = write(tmp_path / "packed.parquet", [qwen2_vl_packed_row("p0", rows, n0 + n1 + 10)], PACKED)
    out = tmp_path / "sheet.html"
    assert render_html(str(path), str(out)) == 1
    page = out.read_text(encoding="utf-8")
    assert page.count('<div class="doc">') == 2
    assert re.findall(r"<figcaption>([^ ]+) · ", page) == ["images[0]", "videos[0]", "images[1]"]
    wide, frame, tall = drawn(page)
    assert wide.getpixel((49, 96)) == pytest.approx(rgb(COLOURS[0]), abs=24)
    assert frame.getpixel((111, 56)) == pytest.approx(rgb(COLOURS[0]), abs=24)
    assert tall.getpixel((49, 200)) == pytest.approx(rgb(COLOURS[1]), abs=24)
    assert "&lt;|vision_start|&gt;videos[0]&lt;|vision_end|&gt;Where is the ball?<mark>" in page
    assert f"{n1} tokens, {sum(rows[1]['loss_mask'])} supervised, 1 image, 1 video</div>" in page


def test_a_qwen_vl_row_of_the_new_schema_shows_its_dialect_alone(tok, tmp_path):
    row = sample_row(tok, "s0", [(GROUNDING_PROMPT, False), (GROUNDING_TARGET, True)], [PNG_WIDE], dialect="qwen-vl")
    text = describe(str(write(tmp_path / "s.parquet", [row], SAMPLES)))
    lines = block(text, 0)
    assert lines[8:11] == ["  image_refs: list of 1: [bee.png]", "  dialect: qwen-vl", f"  decoded: {len(row['input_ids'])} tokens, {sum(row['loss_mask'])} supervised"]
    assert "qwen2-vl rows" not in text and not any(line.startswith("  image 0") for line in lines)


OLD_SAMPLES = pa.schema([field for field in SAMPLES if field.name not in QWEN2_VL_NAMES])


def test_a_qwen_vl_file_of_the_schema_before_qwen2_vl(tok, tmp_path):
    """Files written before the Qwen2-VL columns have no dialect column: their rows read as Qwen-VL."""
    rows = [sample_row(tok, "s0", [(GROUNDING_PROMPT, False), (GROUNDING_TARGET, True)], [PNG_WIDE])]
    path = write(tmp_path / "old.parquet", rows, OLD_SAMPLES)
    assert "dialect" not in pq.read_schema(path).names
    text = describe(str(path))
    n, supervised = len(rows[0]["input_ids"]), sum(rows[0]["loss_mask"])
    assert block(text, 0) == [
        "  uid: s0",
        "  task: grounding",
        "  source: grit",
        "  key: key-s0",
        "  text: " + GROUNDING_PROMPT + GROUNDING_TARGET,
        f"  input_ids: list of {n}: [151857, 151859, 151859, …]",
        f"  loss_mask: list of {n}: [0, 0, 0, …]",
        f"  images: list of 1: [<PNG 768x384, {human_size(len(PNG_WIDE))}>]",
        "  image_refs: list of 1: [bee.png]",
        f"  decoded: {n} tokens, {supervised} supervised",
        "    <img>bee.png</img>Generate the caption in English with grounding:"
        "⟦ A <ref>bee</ref><box>(125,250),(500,750)</box><|endoftext|>⟧",
    ]
    out = tmp_path / "sheet.html"
    assert render_html(str(path), str(out)) == 1
    page = out.read_text(encoding="utf-8")
    (wide,) = drawn(page)
    assert wide.getpixel((49, 96)) == pytest.approx(rgb(COLOURS[0]), abs=24)
    assert f"<figcaption>bee.png · PNG 768x384, {human_size(len(PNG_WIDE))} · 1 region drawn</figcaption>" in page
    assert f'<b style="color:{COLOURS[0]}">&lt;box&gt;(125,250),(500,750)&lt;/box&gt;</b>' in page
