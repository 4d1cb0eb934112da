import dataclasses
import json

import pytest

from formats.example import OCR, TEXT, Example, Invalid, Region
from formats.sources.ocr import read_ocr
from formats.sources.text import read_text

QUAD = [[568, 121], [625, 131], [624, 182], [567, 172]]


def test_ocr_manifest(tmp_path):
    records = [
        {"image": "synthdog/0001.jpg", "width": 800, "height": 600, "key": "0001", "lang": "zh",
         "lines": [{"text": "It is managed", "quad": QUAD}, {"text": "Total 12", "box": [10, 20, 110.5, 48]}]},
        {"image": "pdf/page-3.png", "lines": [{"text": 2024, "box": [0, 0, 5, 5]}]},  # no size, no key: the image is the key
        {"image": "a.jpg", "lines": []},
        {"image": "b.jpg", "lines": [{"text": "x", "quad": QUAD, "box": [0, 0, 1, 1]}]},
        {"image": "c.jpg", "lines": [{"text": "x", "quad": QUAD[:3]}]},
        {"image": "d.jpg", "lines": [{"text": "ok", "box": [0, 0, 1, 1]}, {"text": "x", "box": [0, "0", 1, 1]}]},
        {"image": "e.jpg", "lines": [{"text": "  ", "box": [0, 0, 1, 1]}]},
        {"image": "f.jpg", "width": 0, "lines": [{"text": "x", "box": [0, 0, 1, 1]}]},
        {"image": "g.jpg", "lang": "fr", "lines": [{"text": "x", "box": [0, 0, 1, 1]}]},
        {"lines": [{"text": "x", "box": [0, 0, 1, 1]}]},
    ]
    lines = [json.dumps(r) for r in records[:2]] + ["{not json", ""] + [json.dumps(r) for r in records[2:]]
    (tmp_path / "pages.jsonl").write_text("\n".join(lines) + "\n")
    assert list(read_ocr(str(tmp_path / "pages.jsonl"), source="synthdog-zh")) == [
        Example(OCR, "synthdog-zh", "0001", lang="zh", image="synthdog/0001.jpg", width=800, height=600, lines=(
            ("It is managed", Region(quad=((568, 121), (625, 131), (624, 182), (567, 172)))),
            ("Total 12", Region(box=(10, 20, 110.5, 48))),
        )),
        Example(OCR, "synthdog-zh", "pdf/page-3.png", image="pdf/page-3.png", lines=(("2024", Region(box=(0, 0, 5, 5))),)),
        Invalid("synthdog-zh", "pages.jsonl:3", "malformed_record", "not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        Invalid("synthdog-zh", "pages.jsonl:5", "malformed_record", "field 'lines' is empty"),
        Invalid("synthdog-zh", "pages.jsonl:6", "malformed_record", "lines[0]: needs exactly one of quad and box"),
        Invalid("synthdog-zh", "pages.jsonl:7", "malformed_record", "lines[0].quad: expected 4 [x, y] points, got [[568, 121], [625, 131], [624, 182]]"),
        Invalid("synthdog-zh", "pages.jsonl:8", "malformed_record", "lines[1].box: expected numbers, got [0, '0', 1, 1]"),
        Invalid("synthdog-zh", "pages.jsonl:9", "malformed_record", "field 'lines[0].text' is empty"),
        Invalid("synthdog-zh", "pages.jsonl:10", "malformed_record", "field 'width' is 0, not a positive size"),
        Invalid("synthdog-zh", "pages.jsonl:11", "malformed_record", "field 'lang' is 'fr', not one of en, zh"),
        Invalid("synthdog-zh", "pages.jsonl:12", "malformed_record", "field 'image' missing"),
    ]


def test_ocr_unreadable_file_and_line(tmp_path):
    [missing] = read_ocr(str(tmp_path / "gone.jsonl"))
    assert (missing.source, missing.key, missing.reason) == ("ocr", str(tmp_path / "gone.jsonl"), "file_unreadable")
    (tmp_path / "latin1.jsonl").write_bytes(json.dumps({"image": "a.jpg", "lines": [{"text": "x", "box": [0, 0, 1, 1]}]}).encode() + b"\n\xe9\n")
    assert list(read_ocr(str(tmp_path / "latin1.jsonl")))[1:] == [
        Invalid("ocr", "latin1.jsonl:2", "malformed_record", "not UTF-8 (byte 0: invalid continuation byte)"),
    ]


def test_text_file_is_one_document(tmp_path):
    (tmp_path / "essay.txt").write_bytes("\ufeffFirst paragraph.\r\nStill the first.\r\n\r\nSecond paragraph, 中文.\r\n\r\n".encode())
    assert list(read_text(str(tmp_path / "essay.txt"))) == [
        Example(TEXT, "text", "essay.txt", text="First paragraph.\nStill the first.\n\nSecond paragraph, 中文."),
    ]
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    (tmp_path / "blank.txt").write_text(" \n\n ")
    assert list(read_text(str(tmp_path / "latin1.txt"), source="books")) == [Invalid("books", "latin1.txt", "text_not_utf8", "byte 3: invalid continuation byte")]
    assert list(read_text(str(tmp_path / "blank.txt"))) == [Invalid("text", "blank.txt", "malformed_record", "the file holds no text")]
    [missing] = read_text(str(tmp_path / "gone.txt"))
    assert (missing.key, missing.reason) == (str(tmp_path / "gone.txt"), "file_unreadable")
    with pytest.raises(ValueError, match="pure text is read from .txt or .jsonl files"):
        read_text(str(tmp_path / "essay.md"))


def test_text_jsonl(tmp_path):
    lines = [
        json.dumps({"text": "A document.\n\nWith two paragraphs.", "id": 17}),
        json.dumps({"text": "一篇文档。", "key": "zh-1", "lang": "zh"}),
        json.dumps({"text": "no key"}),
        "[1, 2]",
        json.dumps({"text": ""}),
        json.dumps({"body": "wrong field"}),
    ]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    assert list(read_text(str(tmp_path / "docs.jsonl"), source="wiki")) == [
        Example(TEXT, "wiki", "17", text="A document.\n\nWith two paragraphs."),
        Example(TEXT, "wiki", "zh-1", lang="zh", text="一篇文档。"),
        Example(TEXT, "wiki", "docs.jsonl:3", text="no key"),
        Invalid("wiki", "docs.jsonl:4", "malformed_record", "record is an array, not an object"),
        Invalid("wiki", "docs.jsonl:5", "malformed_record", "field 'text' is empty"),
        Invalid("wiki", "docs.jsonl:6", "malformed_record", "field 'text' missing"),
    ]


def test_ocr_record_round_trip(tmp_path):
    from formats.sources.ocr import ocr_record

    example = Example(OCR, "synthdog-zh", "7-000001", lang="zh", image="images/7-000001.jpg", image_bytes=b"jpeg", width=640, height=480,
                      lines=(("中文", Region(quad=((1.5, 2.0), (30.25, 2.0), (30.25, 20.0), (1.5, 20.0)))), ("box", Region(box=(1, 2, 3, 4)))))
    record = ocr_record(example)
    assert record == {"image": "images/7-000001.jpg", "width": 640, "height": 480, "lines": [
        {"text": "中文", "quad": [[1.5, 2.0], [30.25, 2.0], [30.25, 20.0], [1.5, 20.0]]}, {"text": "box", "box": [1, 2, 3, 4]}],
        "lang": "zh", "key": "7-000001"}
    (tmp_path / "pages.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert list(read_ocr(str(tmp_path / "pages.jsonl"), source="synthdog-zh")) == [dataclasses.replace(example, image_bytes=None)]
