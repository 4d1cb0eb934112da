"""The text side of synthetic OCR pages: line breaking (synthetic/wrap.py), the corpus readers
(synthetic/corpus.py) and the fonts (synthetic/fonts.py)."""

import json

import pytest

from formats.example import Invalid
from synthetic.corpus import read_corpus
from synthetic.fonts import FONT_PACKAGES, default_fonts, fonts_in, load_fonts
from synthetic import fonts as fonts_module
from synthetic.wrap import units, wrap


def test_latin_wraps_on_spaces_only():
    assert wrap("the quick  brown fox jumps", len, 10) == ["the quick", "brown fox", "jumps"]
    assert wrap("  leading and trailing  ", len, 40) == ["leading and trailing"]
    assert wrap("a verylongwordindeed b", len, 8) == ["a", "verylong", "wordinde", "ed b"]  # only a word wider than a line is cut


def test_chinese_wraps_per_character_keeping_punctuation_with_its_neighbour():
    assert wrap("今天天气很好，我们去公园散步吧！", len, 6) == ["今天天气很", "好，我们去公", "园散步吧！"]
    assert wrap("他说：「你好」。", len, 3) == ["他说：", "「你", "好」。"]
    assert wrap("使用Qwen-VL模型", len, 7) == ["使用", "Qwen-VL", "模型"]  # a Latin word inside Chinese stays whole
    assert units("（好的）Qwen-VL，中 文") == ["（好", "的）", "Qwen-VL，", "中", " ", "文"]


def test_wrap_measures_with_the_given_width():
    wide = {"W": 3}
    assert wrap("W i W i", lambda t: sum(wide.get(c, 1) for c in t), 5) == ["W i", "W i"]
    assert wrap("WWW", lambda t: 3 * len(t), 2) == ["W", "W", "W"]  # one character wider than the line still gets a line


def test_txt_corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeffFirst  paragraph\there.\n\n   \nSecond.\r\n".encode() + b"bad \xff byte\n" + "最后一段。\n".encode())
    assert list(read_corpus(str(path), source="s")) == [
        ("c.txt:1", "First paragraph here."),
        ("c.txt:4", "Second."),
        Invalid("s", "c.txt:5", "text_not_utf8", "byte 4: invalid start byte"),
        ("c.txt:6", "最后一段。"),
    ]


def test_jsonl_corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": "One.\nTwo,  split.", "id": 3}), "{oops", json.dumps({"title": "no text"}), json.dumps({"text": " "}), json.dumps({"text": "中文"}, ensure_ascii=False)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert list(read_corpus(str(path))) == [
        ("c.jsonl:1", "One."),
        ("c.jsonl:1", "Two, split."),
        Invalid("corpus", "c.jsonl:2", "malformed_record", "not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        Invalid("corpus", "c.jsonl:3", "malformed_record", "field 'text' missing"),
        Invalid("corpus", "c.jsonl:4", "malformed_record", "field 'text' is empty"),
        ("c.jsonl:5", "中文"),
    ]


def test_corpus_bad_kind_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"c.csv: a corpus is a .txt file"):
        read_corpus(str(tmp_path / "c.csv"))
    [invalid] = read_corpus(str(tmp_path / "gone.txt"))
    assert (invalid.key, invalid.reason) == (str(tmp_path / "gone.txt"), "file_unreadable")


def test_default_fonts():
    en, zh = default_fonts("en"), default_fonts("zh")
    assert [f.name for f in en] == ["DejaVu Sans", "DejaVu Sans Bold", "DejaVu Serif", "DejaVu Serif Bold", "DejaVu Sans Mono", "DejaVu Sans Mono Bold"]
    assert [f.name for f in zh] == ["WenQuanYi Zen Hei", "WenQuanYi Zen Hei Mono", "AR PL UMing CN"]
    assert en[0].missing("Hello, 世界 naïve") == ["世", "界"]
    assert all(not f.missing("带定位的文字识别 OCR, 2024.") for f in zh)


def test_font_folder(tmp_path, monkeypatch):
    (tmp_path / "a.ttc").symlink_to("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")
    (tmp_path / "b.ttf").symlink_to("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    (tmp_path / "readme.txt").write_text("not a font")
    assert [(f.name, f.index) for f in fonts_in(str(tmp_path))] == [
        ("WenQuanYi Zen Hei", 0), ("WenQuanYi Zen Hei Mono", 1), ("WenQuanYi Zen Hei Sharp", 2), ("DejaVu Sans", 0)]
    (tmp_path / "c.otf").write_bytes(b"not a font at all")
    with pytest.raises(ValueError, match=r"c.otf is not a font file fontTools can read"):
        fonts_in(str(tmp_path))
    with pytest.raises(ValueError, match=r"no font folder"):
        fonts_in(str(tmp_path / "none"))
    monkeypatch.setitem(fonts_module.DEFAULT_FONTS, "zh", ((str(tmp_path / "gone.ttc"), 0),))
    with pytest.raises(ValueError, match=f"gone.ttc is missing: apt-get install {FONT_PACKAGES['zh']}"):
        default_fonts("zh")
    assert len(load_fonts("/usr/share/fonts/truetype/arphic/uming.ttc")) == 4
