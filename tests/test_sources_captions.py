import json

import pyarrow as pa
import pyarrow.parquet as pq

from formats.example import CAPTION, Example, Invalid
from formats.sources.captions import read_coco_captions, read_curated


def test_coco_captions_one_example_per_caption(tmp_path):
    # captions_train2017.json's layout: info, licenses, images[], annotations[]
    captions = {
        "info": {"description": "COCO 2017 Dataset"},
        "licenses": [],
        "images": [
            {"license": 3, "file_name": "000000391895.jpg", "height": 360, "width": 640, "id": 391895},
            {"license": 4, "file_name": "000000522418.jpg", "height": 480, "width": 640, "id": 522418},
            {"license": 1, "height": 426, "width": 640, "id": 184613},  # no file_name
        ],
        "annotations": [
            {"image_id": 391895, "id": 770337, "caption": "A man riding a bike down a dirt road. "},
            {"image_id": 391895, "id": 771687, "caption": "A man on a bicycle riding next to a train"},
            {"image_id": 522418, "id": 766345, "caption": "A woman cutting a large white sheet cake."},
            {"image_id": 522418, "id": 766346},  # no caption
            {"image_id": 184613, "id": 447702, "caption": "A child holding a flowered umbrella."},
            {"image_id": 99, "id": 447703, "caption": "An image that is not listed."},
        ],
    }
    path = tmp_path / "captions_train2017.json"
    path.write_text(json.dumps(captions))
    assert list(read_coco_captions(str(path))) == [
        Example(CAPTION, "coco", "770337", image="000000391895.jpg", width=640, height=360, text="A man riding a bike down a dirt road."),
        Example(CAPTION, "coco", "771687", image="000000391895.jpg", width=640, height=360, text="A man on a bicycle riding next to a train"),
        Example(CAPTION, "coco", "766345", image="000000522418.jpg", width=640, height=480, text="A woman cutting a large white sheet cake."),
        Invalid("coco", "766346", "malformed_record", "field 'caption' missing"),
        Invalid("coco", "447702", "malformed_record", "image_id 184613 in images: field 'file_name' missing"),
        Invalid("coco", "447703", "malformed_record", "image_id 99 is not in images"),
    ]


def test_coco_captions_unreadable_file(tmp_path):
    (tmp_path / "cut.json").write_text('{"images": [')
    [bad] = read_coco_captions(str(tmp_path / "cut.json"))
    assert (bad.source, bad.key, bad.reason) == ("coco", str(tmp_path / "cut.json"), "file_unreadable")
    assert bad.detail.startswith("JSONDecodeError: ")
    (tmp_path / "odd.json").write_text('{"images": []}')
    assert list(read_coco_captions(str(tmp_path / "odd.json"))) == [Invalid("coco", str(tmp_path / "odd.json"), "file_unreadable", "field 'annotations' missing")]


def write_curated(path, rows: list[dict], **kwargs) -> None:
    columns = {
        "uid": pa.string(), "source": pa.string(), "key": pa.string(), "caption": pa.string(), "image": pa.binary(),
        "width": pa.int32(), "height": pa.int32(), "lang": pa.string(), "clip_score": pa.float32(),
    }
    table = pa.table({c: pa.array([r.get(c) for r in rows], t) for c, t in columns.items()})
    pq.write_table(table, path, **kwargs)


def test_curated_parquet_rows(tmp_path):
    folder = tmp_path / "curated"
    folder.mkdir()
    row = {"uid": "u", "source": "laion-en", "key": "000000001", "caption": "a blue square", "image": b"JPEG", "width": 320, "height": 240, "lang": "en"}
    write_curated(
        folder / "part-00000.parquet",
        [
            row,
            {**row, "source": "laion-zh", "key": "000000007", "caption": "一只蓝色的方块", "image": b"PNG", "lang": "zh"},
            {**row, "key": "000000002", "image": None},
            {**row, "key": "000000003", "lang": "fr"},
            {**row, "key": None},
        ],
        row_group_size=2,
    )
    write_curated(folder / "part-00001.parquet", [{**row, "key": "000000004", "lang": None, "width": None}])
    (folder / "notes.txt").write_text("not a shard")
    assert list(read_curated(str(folder))) == [
        Example(CAPTION, "laion-en", "000000001", image="laion-en/000000001", image_bytes=b"JPEG", width=320, height=240, text="a blue square"),
        Example(CAPTION, "laion-zh", "000000007", lang="zh", image="laion-zh/000000007", image_bytes=b"PNG", width=320, height=240, text="一只蓝色的方块"),
        Invalid("laion-en", "000000002", "malformed_record", "field 'image' missing"),
        Invalid("laion-en", "000000003", "unsupported_language", "lang 'fr': not one of en, zh"),
        Invalid("laion-en", "part-00000.parquet:4", "malformed_record", "field 'key' missing"),
        Invalid("laion-en", "000000004", "unsupported_language", "lang None: not one of en, zh"),
    ]
    # one file alone, too
    assert [e.key for e in read_curated(str(folder / "part-00001.parquet"))] == ["000000004"]


def test_curated_bad_files(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 nonsense")
    [bad] = read_curated(str(tmp_path))
    assert (bad.source, bad.key, bad.reason) == ("curated", str(tmp_path / "bad.parquet"), "file_unreadable")
    assert bad.detail.startswith("read 0 rows, then ArrowInvalid")
    (tmp_path / "empty").mkdir()
    assert list(read_curated(str(tmp_path / "empty"))) == [Invalid("curated", str(tmp_path / "empty"), "file_unreadable", "no .parquet file in the folder")]
