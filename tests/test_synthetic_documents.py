"""synthetic/documents.py: every quad holds its line's ink and no other line's, checked on rendered pixels
(the page rendered once per line with only that line inked), on flat, rotated and perspective pages;
determinism; the make-ocr-sample command and what stage 2's OCR reader makes of its output."""

import dataclasses
import io
import json
import math
import random

import numpy as np
import pytest
from PIL import Image

import beam_runner
from formats.boxes import normalize_example
from formats.example import OCR, Example, Invalid
from formats.sources.ocr import read_ocr
from synthetic.distort import homography
from synthetic.documents import DocumentConfig, layout_page, render_page, synth_pages
from synthetic.fonts import default_fonts

EN = [
    ("en.txt:1", "The quick brown fox jumps over the lazy dog, again and again, until the dog wakes up."),
    ("en.txt:2", "Stage two of Qwen-VL trains on seven tasks; OCR with grounding is the largest of them."),
    ("en.txt:3", "Invoice No. 1234 - total 56.78 (paid), shipping to 221B Baker Street, London."),
]
ZH = [
    ("zh.txt:1", "今天天气很好，我们去公园散步吧！路上看见一只小狗在草地上跑来跑去。"),
    ("zh.txt:2", "Qwen-VL的第二阶段在七个任务上训练，其中最大的一个是带定位的文字识别（OCR）。"),
]
SMALL = DocumentConfig(min_page_px=360, max_page_px=480, min_font_px=14, max_font_px=20, max_lines=6)
INK = 6  # a pixel whose colour changes by more than this many levels when a line is inked is that line's ink


def inside(quad, xs, ys):
    """Whether each pixel centre (x + 0.5, y + 0.5) lies in the quad (clockwise on screen)."""
    px, py = xs + 0.5, ys + 0.5
    result = np.ones(len(xs), bool)
    for (ax, ay), (bx, by) in zip(quad, quad[1:] + quad[:1]):
        result &= (bx - ax) * (py - ay) - (by - ay) * (px - ax) >= 0
    return result


def distance_inside(quad, xs, ys, edge):
    """Each pixel centre's distance inside the quad's edge number `edge`."""
    (ax, ay), (bx, by) = quad[edge], quad[(edge + 1) % 4]
    return ((bx - ax) * (ys + 0.5 - ay) - (by - ay) * (xs + 0.5 - ax)) / math.hypot(bx - ax, by - ay)


def distorted(page, degrees: float, moves):
    """The page turned by `degrees` and its corners moved by `moves` (4 (dx, dy)), on a canvas that holds it."""
    w, h = page.sheet
    a = math.radians(degrees)
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    turned = [(w / 2 + (x - w / 2) * math.cos(a) - (y - h / 2) * math.sin(a) + dx, h / 2 + (x - w / 2) * math.sin(a) + (y - h / 2) * math.cos(a) + dy)
              for (x, y), (dx, dy) in zip(corners, moves)]
    left, top = min(x for x, _ in turned) - 20, min(y for _, y in turned) - 20
    turned = [(x - left, y - top) for x, y in turned]
    size = (math.ceil(max(x for x, _ in turned)) + 20, math.ceil(max(y for _, y in turned)) + 20)
    return dataclasses.replace(page, matrix=homography(corners, turned), size=size)


def assert_quads_hold_their_ink(page):
    assert len(page.lines) >= 3
    base = render_page(page, inked=set()).astype(np.int16)
    quads = [list(page.quad(line)) for line in page.lines]
    for i, line in enumerate(page.lines):
        changed = np.abs(render_page(page, inked={i}).astype(np.int16) - base).max(axis=2) > INK
        ys, xs = np.nonzero(changed)
        assert len(xs) >= 20 * len(line.text.replace(" ", "")) // 2, line.text  # the line did ink something
        assert inside(quads[i], xs, ys).all(), (i, line.text, int((~inside(quads[i], xs, ys)).sum()))
        for j, quad in enumerate(quads):
            if j != i:
                assert not inside(quad, xs, ys).any(), (i, j)
        # and tightly: each side of the quad has ink within the padding (and the warp's stretch) of it
        for edge in range(4):
            assert distance_inside(quads[i], xs, ys, edge).min() <= page.pad * 1.25 + 1.5, (i, edge)


def en_page(index: int, config=SMALL):
    rng = random.Random(f"test:{index}")
    return layout_page([t for _, t in EN], default_fonts("en")[index % 6], f"p{index}", rng, config)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_quads_hold_their_ink_as_laid_out(index):
    assert_quads_hold_their_ink(en_page(index))  # the layout's own rotation and perspective


def test_quads_hold_their_ink_rotated_and_in_perspective():
    page = en_page(3)
    assert_quads_hold_their_ink(distorted(page, 9.0, [(0, 0), (0, 0), (0, 0), (0, 0)]))
    assert_quads_hold_their_ink(distorted(page, -6.0, [(25, 10), (-20, 30), (10, -25), (-30, 0)]))
    tilted = distorted(page, 9.0, [(0, 0)] * 4).quad(page.lines[0])
    assert tilted[1][1] - tilted[0][1] > 0.1 * (tilted[1][0] - tilted[0][0])  # the top edge does slope


def test_blurred_page_quads_hold_their_ink():
    blurry = dataclasses.replace(SMALL, max_blur_px=1.2)
    page = next(page for page in (en_page(i, blurry) for i in range(4, 60)) if page.blur_px > 0.9)
    assert page.pad == pytest.approx(2 + 3 * page.blur_px)
    assert_quads_hold_their_ink(distorted(page, 5.0, [(10, 0), (0, 10), (-10, 0), (0, -10)]))


def test_chinese_page_quads_hold_their_ink():
    rng = random.Random("zh")
    page = layout_page([t for _, t in ZH], default_fonts("zh")[2], "zh", rng, dataclasses.replace(SMALL, language="zh"))
    assert all(len(line.text) > 1 for line in page.lines)
    assert_quads_hold_their_ink(distorted(page, -8.0, [(0, 0), (15, 5), (0, 0), (-5, 15)]))


def test_pages_are_deterministic_and_independent():
    fonts = default_fonts("en")
    first = list(synth_pages(EN, fonts, 3, seed=7, config=SMALL))
    again = list(synth_pages(EN, fonts, 5, seed=7, config=SMALL))
    other = list(synth_pages(EN, fonts, 3, seed=8, config=SMALL))
    assert [p.image_bytes for p in first] == [p.image_bytes for p in again[:3]]
    assert first == again[:3]  # text, quads, sizes too
    assert [p.image_bytes for p in first] != [p.image_bytes for p in other]
    assert [p.key for p in first] == ["7-000000", "7-000001", "7-000002"]
    page = first[0]
    assert (page.task, page.source, page.lang, page.image) == (OCR, "synthdog-en", "en", "images/7-000000.jpg")
    image = Image.open(io.BytesIO(page.image_bytes))
    assert (image.format, image.size) == ("JPEG", (page.width, page.height))
    assert not isinstance(normalize_example(page), Invalid)  # clockwise quads inside the image: stage 2 takes them


def test_paragraphs_no_font_can_draw_are_rejected():
    pages = list(synth_pages(EN + [("mix.txt:1", "English and 中文 mixed"), ("mix.txt:2", "Ωmega ok")], default_fonts("en")[:1], 1, config=SMALL))
    assert pages[0] == Invalid("synthdog-en", "mix.txt:1", "glyph_missing", "DejaVu Sans lacks '中' (U+4E2D), '文' (U+6587)")
    assert isinstance(pages[1], Example) and len(pages) == 2  # Greek is in DejaVu Sans
    with pytest.raises(ValueError, match="none of the 1 paragraphs can be drawn with the 6 fonts given"):
        synth_pages(ZH[:1], default_fonts("en"), 1)
    with pytest.raises(ValueError, match="language must be one of en, zh, not 'fr'"):
        synth_pages(EN, default_fonts("en"), 1, config=DocumentConfig(language="fr"))


def test_make_ocr_sample_writes_what_stage2_reads(tmp_path, capsys):
    corpus = tmp_path / "zh.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for _, t in ZH) + "\n{broken\n", encoding="utf-8")
    out = tmp_path / "ocr"
    assert beam_runner.main(["make-ocr-sample", "--corpus", str(corpus), "--output", str(out), "--count", "2", "--seed", "1", "--language", "zh"]) == 0
    assert "wrote 2 pages" in capsys.readouterr().out
    assert [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()] == [
        {"key": "zh.jsonl:3", "reason": "malformed_record", "detail": "not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"}]
    examples = list(read_ocr(str(out / "pages.jsonl"), source="synthdog-zh"))
    assert [e.key for e in examples] == ["1-000000", "1-000001"] and all(e.lang == "zh" for e in examples)
    for example in examples:
        with Image.open(out / example.image) as image:
            assert image.size == (example.width, example.height)
        assert not isinstance(normalize_example(example), Invalid)
        assert "".join(t for t, _ in example.lines) in "".join(t for _, t in ZH) * 3


@pytest.mark.parametrize("args, message", [
    (["--count", "0"], "error: --count must be >= 1, not 0"),
    (["--language", "fr"], "error: beam_runner.py make-ocr-sample: argument --language: invalid choice: 'fr' (choose from 'en', 'zh')"),
    (["--fonts", "EMPTY"], "error: no .ttf, .otf, .ttc file in EMPTY"),
    (["--corpus", "CSV"], "error: CSV: a corpus is a .txt file (a paragraph a line) or .jsonl (a `text` field a line)"),
    (["--corpus", "MISSING"], "error: --corpus: no file MISSING"),
    (["--corpus", "ZH", "--fonts", "LATIN"], "error: none of the 2 paragraphs can be drawn with the 1 fonts given"),
])
def test_make_ocr_sample_bad_usage(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "c.csv").write_text("a,b\n")
    (tmp_path / "en.txt").write_text("\n".join(t for _, t in EN))
    (tmp_path / "zh.txt").write_text("\n".join(t for _, t in ZH), encoding="utf-8")
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "DejaVuSans.ttf").symlink_to(default_fonts("en")[0].path)
    names = {"EMPTY": str(tmp_path / "empty"), "CSV": str(tmp_path / "c.csv"), "MISSING": str(tmp_path / "no.txt"), "EN": str(tmp_path / "en.txt"),
             "ZH": str(tmp_path / "zh.txt"), "LATIN": str(tmp_path / "latin")}
    argv = ["make-ocr-sample", "--corpus", names["EN"], "--output", str(tmp_path / "out")] + [names.get(a, a) for a in args]
    assert beam_runner.main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == message.replace("EMPTY", names["EMPTY"]).replace("CSV", names["CSV"]).replace("MISSING", names["MISSING"])
    assert err.count("\n") == 1
