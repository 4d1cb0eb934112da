"""formats/sources/visual_genome.py: question answers and region descriptions; and the streaming JSON
array reader (formats/sources/records.py) that reads region_descriptions.json."""

import io
import json

import pytest

from formats.example import GROUNDED_CAPTION, REFERRING, VQA, Example, Invalid, Region
from formats.sources.records import json_array_items
from formats.sources.visual_genome import read_vg, read_vg_qa
from tests.files import write_json


def test_visual_genome_qa_image_folders_from_urls(tmp_path):
    write_json(
        tmp_path / "image_data.json",
        [
            {"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "height": 600, "image_id": 1, "coco_id": None, "flickr_id": None},
            {"width": 500, "url": "https://cs.stanford.edu/people/rak248/VG_100K/2345.jpg", "height": 333, "image_id": 2345, "coco_id": 1234, "flickr_id": None},
            {"width": 500, "height": 333, "image_id": 7},  # no url
        ],
    )
    write_json(
        tmp_path / "question_answers.json",
        [
            {"id": 1, "qas": [
                {"a_objects": [], "question": "What color is the clock?", "image_id": 1, "qa_id": 986768, "answer": "Green.", "q_objects": []},
                {"a_objects": [], "question": "What is the man holding?", "image_id": 1, "qa_id": 986769, "q_objects": []},
            ]},
            {"id": 2345, "qas": [{"question": "Where is the bus?", "image_id": 2345, "qa_id": 12, "answer": "On the street."}]},
            {"id": 7, "qas": [{"question": "Who?", "image_id": 7, "qa_id": 13, "answer": "A man."}]},
            {"id": 8},
        ],
    )
    assert list(read_vg_qa(str(tmp_path))) == [
        Example(VQA, "vg", "986768", image="VG_100K_2/1.jpg", width=800, height=600, question="What color is the clock?", text="Green."),
        Invalid("vg", "986769", "malformed_record", "field 'answer' missing"),
        Example(VQA, "vg", "12", image="VG_100K/2345.jpg", width=500, height=333, question="Where is the bus?", text="On the street."),
        Invalid("vg", "13", "malformed_record", "image_id 7 in image_data.json: field 'url' missing"),
        Invalid("vg", "question_answers.json:3", "malformed_record", "field 'qas' missing"),
    ]


IMAGE_DATA = [
    {"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "height": 600, "image_id": 1, "coco_id": None, "flickr_id": None},
    {"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K/10.jpg", "height": 533, "image_id": 10, "coco_id": 123, "flickr_id": None},
]
REGIONS = [
    {"regions": [
        {"region_id": 1382, "width": 82, "height": 139, "image_id": 1, "phrase": "the clock is green in colour", "y": 57, "x": 421},
        {"region_id": 1383, "width": 182, "height": 109, "image_id": 1, "phrase": "shade is along the street ", "y": 372, "x": 194},
        {"region_id": 1384, "width": 10, "height": 10, "image_id": 1, "y": 0, "x": 0},  # no phrase
    ], "id": 1},
    {"regions": [{"region_id": 5000, "width": 10, "height": 20, "image_id": 10, "phrase": "a man", "y": 3, "x": 4}], "id": 10},
    {"regions": [{"region_id": 6000, "width": 10, "height": 20, "image_id": 77, "phrase": "a dog", "y": 3, "x": 4}], "id": 77},
    {"id": 78},
]


def test_vg_regions(tmp_path):
    write_json(tmp_path / "image_data.json", IMAGE_DATA)
    write_json(tmp_path / "region_descriptions.json", REGIONS)
    expected = [
        Example(REFERRING, "vg", "1382", image="VG_100K_2/1.jpg", width=800, height=600, text="the clock is green in colour", regions=(Region(box=(421, 57, 503, 196)),)),
        Example(REFERRING, "vg", "1383", image="VG_100K_2/1.jpg", width=800, height=600, text="shade is along the street", regions=(Region(box=(194, 372, 376, 481)),)),
        Invalid("vg", "1384", "malformed_record", "field 'phrase' missing"),
        Example(REFERRING, "vg", "5000", image="VG_100K/10.jpg", width=800, height=533, text="a man", regions=(Region(box=(4, 3, 14, 23)),)),
        Invalid("vg", "6000", "malformed_record", "image_id 77 is not in image_data.json"),
        Invalid("vg", "region_descriptions.json:3", "malformed_record", "field 'regions' missing"),
    ]
    assert list(read_vg(str(tmp_path), REFERRING)) == expected
    # the file itself, with image_data.json beside it; the other task
    found = list(read_vg(str(tmp_path / "region_descriptions.json"), GROUNDED_CAPTION))
    assert [e.task for e in found if isinstance(e, Example)] == [GROUNDED_CAPTION] * 3


def test_vg_broken_files(tmp_path):
    write_json(tmp_path / "image_data.json", IMAGE_DATA)
    text = json.dumps(REGIONS)
    cut = text[: text.index('{"regions": [{"region_id": 5000')]  # cut off after the first image and its comma
    (tmp_path / "region_descriptions.json").write_text(cut)
    found = list(read_vg(str(tmp_path), REFERRING))
    assert [e.key for e in found] == ["1382", "1383", "1384", str(tmp_path / "region_descriptions.json")]
    assert (found[-1].reason, found[-1].detail) == ("file_unreadable", f"read 1 images, then ValueError: the JSON array is not closed at character {len(cut)}")
    (tmp_path / "image_data.json").unlink()
    [missing] = read_vg(str(tmp_path), REFERRING)
    assert (missing.key, missing.reason) == (str(tmp_path / "image_data.json"), "file_unreadable")
    with pytest.raises(ValueError, match="Visual Genome feeds the tasks referring, grounded_caption, not 'ocr'"):
        read_vg(str(tmp_path), "ocr")


# --- the streaming JSON array reader -------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_json_array_items_in_chunks(chunk):
    text = ' [ {"a": [1, 2, {"b": "x, ]"}]}, 1234 ,\n"five", [], -6.5e3, null, true ]  '
    assert list(json_array_items(io.StringIO(text), chunk)) == [{"a": [1, 2, {"b": "x, ]"}]}, 1234, "five", [], -6500.0, None, True]
    assert list(json_array_items(io.StringIO("[]"), chunk)) == []


@pytest.mark.parametrize(
    "text, items, error",
    [
        ("", [], "no JSON array"),
        ('{"a": 1}', [], "not a JSON array: it starts with '{'"),
        ("[1, 2", [1, 2], "the JSON array is not closed at character 5"),
        ("[1, 2,]", [1, 2], "a ',' before ']' at character 6"),
        ("[1 2]", [1], "expected ',' or ']' at character 3, got '2'"),
        ('[1, {"a": }]', [1], "Expecting value at character 10"),
    ],
)
def test_json_array_items_broken(text, items, error):
    found = []
    with pytest.raises(ValueError) as raised:
        for item in json_array_items(io.StringIO(text), 2):
            found.append(item)
    assert (found, str(raised.value)) == (items, error)
