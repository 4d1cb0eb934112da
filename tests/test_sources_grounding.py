import itertools
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from formats.example import GROUNDED_CAPTION, GROUNDING, REFERRING, Example, Invalid, Region, Span
from formats.sources.grounding import drop_nested_spans, read_grit
from tests.files import write_tar

CAPTION = "a wire hanger with a paper cover that reads we heart our customers"  # the GRIT card's instance


def box(x1, y1, x2, y2) -> Region:
    return Region(box=(x1, y1, x2, y2))


# --- the nested-label rule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spans, kept",
    [
        # the card's row: two noun chunks, each inside its referring expression -> the two chunks
        ([(19, 32), (0, 13), (19, 66), (0, 66)], [(0, 13), (19, 32)]),
        # one long label holding two short ones: the two short ones (most labels), not the long one
        ([(0, 100), (1, 2), (3, 4)], [(1, 2), (3, 4)]),
        # crossing spans conflict too: (5, 15) crosses (0, 10)
        ([(0, 10), (5, 15), (12, 20)], [(0, 10), (12, 20)]),
        # the same end: the shorter one
        ([(0, 5), (3, 5)], [(3, 5)]),
        # touching is not overlapping: [0, 5) and [5, 9) share no character
        ([(0, 5), (5, 9)], [(0, 5), (5, 9)]),
        # a span given twice counts once
        ([(2, 4), (2, 4)], [(2, 4)]),
        # a chain where each crosses the next: every other one
        ([(0, 4), (3, 7), (6, 10), (9, 13)], [(0, 4), (6, 10)]),
        ([], []),
    ],
)
def test_drop_nested_spans(spans, kept):
    assert drop_nested_spans(spans) == kept


def test_drop_nested_spans_keeps_the_most_possible():
    rng = random.Random(0)
    for _ in range(300):
        spans = {(s, s + rng.randint(1, 8)) for s in (rng.randint(0, 15) for _ in range(rng.randint(1, 8)))}
        kept = drop_nested_spans(spans)
        assert set(kept) <= spans
        assert all(a[1] <= b[0] for a, b in zip(kept, kept[1:]))  # sorted and pairwise disjoint
        best = max(
            len(subset)
            for n in range(len(spans) + 1)
            for subset in itertools.combinations(sorted(spans), n)
            if all(a[1] <= b[0] for a, b in zip(subset, subset[1:]))
        )
        assert len(kept) == best


# --- GRIT rows -----------------------------------------------------------------------------------

# img2dataset's shard Parquet for GRIT (webdataset output: no jpg column): the card's row, downloaded and
# stored at 640 x 480, with fractions exact in binary so that the pixels are exact
ROWS = [
    {
        "key": "000000000", "caption": CAPTION, "status": "success", "error_message": None, "width": 640, "height": 480,
        "noun_chunks": [[19, 32, 0.5, 0.25, 1.0, 0.75, 0.79], [0, 13, 0.0, 0.0, 0.5, 1.0, 0.67]],
        "ref_exps": [[19, 66, 0.5, 0.25, 1.0, 0.75, 0.79], [0, 66, 0.0, 0.0, 0.5, 1.0, 0.67]],
    },
    {
        "key": "000000001", "caption": "bees on a flower", "status": "success", "error_message": None, "width": 100, "height": 200,
        # "bees": two boxes for one phrase (and copied as its own referring expression)
        "noun_chunks": [[0, 4, 0.125, 0.25, 0.25, 0.5, 0.9], [0, 4, 0.5, 0.5, 0.75, 0.75, 0.8], [8, 16, 0.0, 0.0, 1.0, 1.0, 0.7]],
        "ref_exps": [[0, 4, 0.125, 0.25, 0.25, 0.5, 0.9], [0, 4, 0.5, 0.5, 0.75, 0.75, 0.8], [8, 16, 0.0, 0.0, 1.0, 1.0, 0.7]],
    },
    {"key": "000000002", "caption": "a dog", "status": "failed_to_download", "error_message": "HTTP Error 404", "width": None, "height": None, "noun_chunks": None, "ref_exps": None},
    {
        "key": "000000003", "caption": "a cat", "status": "success", "error_message": None, "width": 100, "height": 100,
        "noun_chunks": [[0, 9, 0.1, 0.1, 0.2, 0.2, 0.5]],  # beyond the caption's 5 characters
        "ref_exps": [],
    },
    {"key": "000000004", "caption": "a tree", "status": "success", "error_message": None, "width": 100, "height": 100, "noun_chunks": [], "ref_exps": []},
]


def write_shard(path) -> str:
    columns = ["key", "caption", "status", "error_message", "width", "height", "noun_chunks", "ref_exps"]
    types = [pa.string(), pa.string(), pa.string(), pa.string(), pa.int32(), pa.int32(), pa.list_(pa.list_(pa.float64())), pa.list_(pa.list_(pa.float64()))]
    table = pa.table({c: pa.array([r[c] for r in ROWS], t) for c, t in zip(columns, types)})
    pq.write_table(table, path, row_group_size=2)
    return str(path)


HANGER = dict(source="grit", image="00000/000000000.jpg", width=640, height=480)
BEES = dict(source="grit", image="00000/000000001.jpg", width=100, height=200)
HANGER_BOX, COVER_BOX = box(0.0, 0.0, 320.0, 480.0), box(320.0, 120.0, 640.0, 360.0)
BEE_BOXES = (box(12.5, 50.0, 25.0, 100.0), box(50.0, 100.0, 75.0, 150.0))
FLOWER_BOX = box(0.0, 0.0, 100.0, 200.0)
REJECTS = [
    Invalid("grit", "000000002", "download_failed", "failed_to_download: HTTP Error 404"),
    Invalid("grit", "000000003", "malformed_record", "noun_chunks[0]: characters [0.0, 9.0) are not in the caption (5 characters)"),
]


def test_grit_grounding(tmp_path):
    path = write_shard(tmp_path / "00000.parquet")
    assert list(read_grit(path, GROUNDING)) == [
        Example(GROUNDING, key="000000000", text=CAPTION, spans=(Span(0, 13, (HANGER_BOX,)), Span(19, 32, (COVER_BOX,))), **HANGER),
        Example(GROUNDING, key="000000001", text="bees on a flower", spans=(Span(0, 4, BEE_BOXES), Span(8, 16, (FLOWER_BOX,))), **BEES),
        *REJECTS,
        Invalid("grit", "000000004", "no_regions", "no noun chunk or referring expression"),
    ]


@pytest.mark.parametrize("task", [REFERRING, GROUNDED_CAPTION])
def test_grit_referring_and_grounded_captions(tmp_path, task):
    path = write_shard(tmp_path / "00000.parquet")
    assert list(read_grit(path, task)) == [
        Example(task, key="000000000:0-66", text=CAPTION, regions=(HANGER_BOX,), **HANGER),
        Example(task, key="000000000:19-66", text="a paper cover that reads we heart our customers", regions=(COVER_BOX,), **HANGER),
        Example(task, key="000000001:0-4", text="bees", regions=BEE_BOXES, **BEES),
        Example(task, key="000000001:8-16", text="a flower", regions=(FLOWER_BOX,), **BEES),
        *REJECTS,
        Invalid("grit", "000000004", "no_regions", "no referring expression"),
    ]


def test_grit_parquet_output_carries_the_image(tmp_path):
    row = {k: ROWS[1][k] for k in ("key", "caption", "width", "height", "noun_chunks", "ref_exps")}
    pq.write_table(pa.table({**{k: [v] for k, v in row.items()}, "status": ["success"], "jpg": [b"\xff\xd8jpeg"]}), tmp_path / "00000.parquet")
    [example] = read_grit(str(tmp_path / "00000.parquet"), GROUNDING)
    assert (example.image, example.image_bytes) == ("00000/000000001.jpg", b"\xff\xd8jpeg")


def test_grit_webdataset_shard(tmp_path):
    # the card's img2dataset command: each sample's KEY.json holds img2dataset's row with GRIT's columns
    hanger = {**ROWS[0], "url": "http://a/0.jpg", "original_width": 1280, "original_height": 960, "id": 1795296605919}
    shard = write_tar(tmp_path / "00000.tar", [
        ("000000000.jpg", b"jpeg 0"), ("000000000.json", json.dumps(hanger).encode()), ("000000000.txt", CAPTION.encode()),
        ("000000001.json", json.dumps(ROWS[1]).encode()),  # its image is missing
        ("000000005.jpg", b"jpeg 5"), ("000000005.json", b"{broken"),
    ])
    write_shard(tmp_path / "00000.parquet")  # the shard's Parquet: its failed download is not in the tar
    found = list(read_grit(shard, REFERRING))
    assert found == [
        Example(REFERRING, key="000000000:0-66", text=CAPTION, regions=(HANGER_BOX,), image_bytes=b"jpeg 0", **HANGER),
        Example(REFERRING, key="000000000:19-66", text=CAPTION[19:], regions=(COVER_BOX,), image_bytes=b"jpeg 0", **HANGER),
        Invalid("grit", "00000.tar:2", "malformed_record", "sample 000000001: no 000000001.jpg"),
        Invalid("grit", "00000.tar:3", "malformed_record", "sample 000000005: no readable 000000005.json (JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        Invalid("grit", "000000002", "download_failed", "failed_to_download: HTTP Error 404"),
    ]
    (tmp_path / "00001.tar").write_bytes((tmp_path / "00000.tar").read_bytes()[:1536])  # cut off in its second member
    cut = list(read_grit(str(tmp_path / "00001.tar"), REFERRING))
    assert [(i.key, i.reason) for i in cut] == [(str(tmp_path / "00001.tar"), "file_unreadable")]
    assert cut[0].detail == "read 0 rows, then ReadError: unexpected end of data"


def test_grit_jsonl_rows_and_their_faults(tmp_path):
    # GRIT's metadata rows as JSON (the card's instance, sizes as released): no status column
    card = {
        "key": "000373938", "clip_similarity_vitb32": 0.353271484375, "clip_similarity_vitl14": 0.2958984375, "id": 1795296605919,
        "url": "https://www.thestrapsaver.com/wp-content/uploads/customerservice-1.jpg", "caption": CAPTION, "width": 1024, "height": 693,
        "noun_chunks": [[19, 32, 0.019644069503434333, 0.31054004033406574, 0.9622142865754519, 0.9603442351023356, 0.79298526]],
        "ref_exps": [[19, 66, 0.019644069503434333, 0.31054004033406574, 0.9622142865754519, 0.9603442351023356, 0.79298526]],
    }
    lines = [
        json.dumps(card),
        "not json",
        "",
        json.dumps({**card, "key": None}),
        json.dumps({**card, "key": "000373939", "width": None}),
        json.dumps({**card, "key": "000373940", "ref_exps": [[19, 66, "left", 0, 1, 1, 0.5]]}),
        json.dumps({**card, "key": "000373941", "caption": "   "}),
        json.dumps([1, 2]),
    ]
    (tmp_path / "grit.jsonl").write_text("\n".join(lines) + "\n")
    found = list(read_grit(str(tmp_path / "grit.jsonl"), REFERRING))
    [example] = [f for f in found if isinstance(f, Example)]
    assert (example.key, example.image, example.width, example.height, example.text) == ("000373938:19-66", "000373938.jpg", 1024, 693, CAPTION[19:])
    assert example.regions == (box(0.019644069503434333 * 1024, 0.31054004033406574 * 693, 0.9622142865754519 * 1024, 0.9603442351023356 * 693),)
    assert found[1:] == [
        Invalid("grit", "grit.jsonl:2", "malformed_record", "not JSON (Expecting value: line 1 column 1 (char 0))"),
        Invalid("grit", "grit.jsonl:4", "malformed_record", "field 'key' missing"),
        Invalid("grit", "000373939", "image_size_missing", "width None, height 693"),
        Invalid("grit", "000373940", "malformed_record", "ref_exps[0]: box ['left', 0, 1, 1] is not 4 numbers"),
        Invalid("grit", "000373941", "malformed_record", "field 'caption' is empty"),
        Invalid("grit", "grit.jsonl:8", "malformed_record", "record is an array, not an object"),
    ]


def test_grit_unreadable_files_and_tasks(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 nonsense")
    [bad] = read_grit(str(tmp_path / "bad.parquet"), GROUNDING)
    assert (bad.source, bad.key, bad.reason) == ("grit", str(tmp_path / "bad.parquet"), "file_unreadable")
    assert bad.detail.startswith("read 0 rows, then ArrowInvalid")
    [gone] = read_grit(str(tmp_path / "gone.jsonl"), GROUNDING)
    assert (gone.key, gone.reason) == (str(tmp_path / "gone.jsonl"), "file_unreadable")
    with pytest.raises(ValueError, match="GRIT feeds the tasks grounding, referring, grounded_caption, not 'vqa'"):
        read_grit(str(tmp_path / "bad.parquet"), "vqa")
