import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from formats import reasons
from formats.sources.img2dataset import read_img2dataset_parquet, read_webdataset
from formats.sources.manifest import read_manifest
from tests.files import write_tar


def jpeg(width=320, height=240) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_cut_tar(path, samples: int) -> None:
    """A tar of `samples` image + caption samples, cut off at half its length."""
    write_tar(path, [(f"{k:09d}.{ext}", jpeg() if ext == "jpg" else b"a blue square") for k in range(samples) for ext in ("jpg", "txt")])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def write_meta(path, rows: list[dict]) -> None:
    columns = ["key", "url", "caption", "status", "error_message"]
    pq.write_table(pa.table({c: [r.get(c) for r in rows] for c in columns}), path)


def outcomes(pairs) -> list[tuple]:
    return [(p.key, p.reject.reason if p.reject else None) for p in pairs]


def test_webdataset_pairs_members_and_metadata(tmp_path):
    image = jpeg()
    write_tar(
        tmp_path / "00000.tar",
        [
            ("000000000.jpg", image),
            ("000000000.txt", b"a blue square"),
            ("000000000.json", json.dumps({"url": "http://a/0.jpg"}).encode()),
            ("000000001.jpg", image),  # no caption member
            ("000000002.txt", b"no image member"),
        ],
    )
    write_meta(
        tmp_path / "00000.parquet",
        [
            {"key": "000000000", "url": "http://a/0.jpg", "status": "success"},
            {"key": "000000001", "url": "http://a/1.jpg", "status": "success"},
            {"key": "000000002", "url": "http://a/2.jpg", "status": "success"},
            {"key": "000000003", "url": "http://a/3.jpg", "status": "failed_to_download", "error_message": "HTTP Error 404"},
        ],
    )
    pairs = list(read_webdataset("laion-en", str(tmp_path / "00000.tar")))
    assert outcomes(pairs) == [("000000000", None), ("000000001", None), ("000000002", None), ("000000003", reasons.DOWNLOAD_FAILED)]
    first = pairs[0]
    assert (first.source, first.url, first.caption, first.image) == ("laion-en", "http://a/0.jpg", b"a blue square", image)
    assert (pairs[1].caption, pairs[2].image) == (None, None)  # the rules turn these into caption/image_missing
    assert pairs[3].reject.detail == "HTTP Error 404"


def test_webdataset_truncated_tar_with_metadata_loses_nothing(tmp_path):
    write_cut_tar(tmp_path / "00000.tar", samples=4)
    write_meta(tmp_path / "00000.parquet", [{"key": f"{k:09d}", "url": None, "status": "success"} for k in range(4)])
    pairs = list(read_webdataset("s", str(tmp_path / "00000.tar")))
    # the cut falls inside sample 2: samples 0 and 1 are whole, 2 and 3 are recorded from the metadata
    assert outcomes(pairs) == [("000000000", None), ("000000001", None), ("000000002", reasons.MEMBER_UNREADABLE), ("000000003", reasons.MEMBER_UNREADABLE)]
    assert pairs[1].caption == b"a blue square"
    assert pairs[2].reject.detail == "not in 00000.tar: ReadError: unexpected end of data"


def test_webdataset_truncated_tar_without_metadata(tmp_path):
    write_cut_tar(tmp_path / "00000.tar", samples=4)
    pairs = list(read_webdataset("s", str(tmp_path / "00000.tar")))
    assert outcomes(pairs) == [("000000000", None), ("000000001", None), (str(tmp_path / "00000.tar"), reasons.SHARD_UNREADABLE)]
    assert pairs[2].reject.detail == "read 2 samples, then ReadError: unexpected end of data"


def test_webdataset_empty_and_unreadable_files(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"")
    write_tar(tmp_path / "nomembers.tar", [])
    (tmp_path / "garbage.tar").write_bytes(b"this is not a tar file at all" * 40)
    assert [(p.reject.reason, p.reject.detail) for p in read_webdataset("s", str(tmp_path / "empty.tar"))] == [(reasons.SHARD_EMPTY, "empty file")]
    assert [(p.reject.reason, p.reject.detail) for p in read_webdataset("s", str(tmp_path / "nomembers.tar"))] == [(reasons.SHARD_EMPTY, "no sample in the tar")]
    [garbage] = read_webdataset("s", str(tmp_path / "garbage.tar"))
    assert (garbage.key, garbage.reject.reason) == (str(tmp_path / "garbage.tar"), reasons.SHARD_UNREADABLE)
    [missing] = read_webdataset("s", str(tmp_path / "gone.tar"))
    assert missing.reject.reason == reasons.SHARD_UNREADABLE


def test_img2dataset_parquet(tmp_path):
    image = jpeg()
    table = pa.table(
        {
            "key": ["000000000", "000000001", "000000002"],
            "url": ["http://a/0", "http://a/1", "http://a/2"],
            "caption": ["a blue square", None, "a failed one"],
            "status": ["success", "success", "failed_to_download"],
            "error_message": [None, None, "timeout"],
            "jpg": [image, image, None],
        }
    )
    pq.write_table(table, tmp_path / "00000.parquet", row_group_size=2)
    pairs = list(read_img2dataset_parquet("coyo", str(tmp_path / "00000.parquet")))
    assert outcomes(pairs) == [("000000000", None), ("000000001", None), ("000000002", reasons.DOWNLOAD_FAILED)]
    assert (pairs[0].caption, pairs[0].image, pairs[1].caption, pairs[2].reject.detail) == (b"a blue square", image, None, "timeout")


def test_img2dataset_parquet_bad_files(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 nonsense")
    [bad] = read_img2dataset_parquet("coyo", str(tmp_path / "bad.parquet"))
    assert bad.reject.reason == reasons.SHARD_UNREADABLE
    assert bad.reject.detail.startswith("read 0 rows, then ArrowInvalid")
    pq.write_table(pa.table({"key": pa.array([], pa.string()), "status": pa.array([], pa.string()), "jpg": pa.array([], pa.binary())}), tmp_path / "empty.parquet")
    [empty] = read_img2dataset_parquet("coyo", str(tmp_path / "empty.parquet"))
    assert (empty.reject.reason, empty.reject.detail) == (reasons.SHARD_EMPTY, "no rows")


def test_manifests_in_every_format(tmp_path):
    (tmp_path / "img").mkdir()
    image = jpeg()
    (tmp_path / "img" / "a.jpg").write_bytes(image)
    absolute = tmp_path / "img" / "a.jpg"
    (tmp_path / "m.csv").write_bytes(b"key,caption,image\nk1,a blue square,img/a.jpg\nk2,caf\xe9,file://" + str(absolute).encode() + b"\nk3,gone,img/nope.jpg\n")
    (tmp_path / "m.tsv").write_text("text\tpath\na blue square\thttps://example.com/a.jpg\n")
    (tmp_path / "m.jsonl").write_text('{"caption": "a blue square", "image": "img/a.jpg", "url": "http://x"}\nnot json\n[1, 2]\n\n')
    pq.write_table(pa.table({"id": [7], "caption": ["a blue square"], "filepath": [str(absolute)]}), tmp_path / "m.parquet")

    csv_pairs = list(read_manifest("mine", str(tmp_path / "m.csv")))
    assert outcomes(csv_pairs) == [("k1", None), ("k2", None), ("k3", reasons.IMAGE_UNREADABLE)]
    assert (csv_pairs[0].image, csv_pairs[1].image, csv_pairs[1].caption) == (image, image, b"caf\xe9")
    assert csv_pairs[2].reject.detail.startswith(str(tmp_path / "img" / "nope.jpg") + ": ")

    [tsv] = read_manifest("mine", str(tmp_path / "m.tsv"))
    assert (tsv.key, tsv.reject.reason) == ("m.tsv:0", reasons.IMAGE_UNREADABLE)
    assert tsv.reject.detail == "https://example.com/a.jpg: not a local file (download it with img2dataset first)"

    jsonl = list(read_manifest("mine", str(tmp_path / "m.jsonl")))
    assert outcomes(jsonl) == [("m.jsonl:0", None), ("m.jsonl:1", reasons.MEMBER_UNREADABLE), ("m.jsonl:2", reasons.MEMBER_UNREADABLE)]
    assert (jsonl[0].url, jsonl[0].image) == ("http://x", image)
    assert jsonl[1].reject.detail.startswith("line 2: not JSON")
    assert jsonl[2].reject.detail == "line 3: not a JSON object"

    [parquet] = read_manifest("mine", str(tmp_path / "m.parquet"))
    assert (parquet.key, parquet.caption, parquet.image) == ("7", b"a blue square", image)


def test_empty_manifest(tmp_path):
    (tmp_path / "m.csv").write_text("caption,image\n")
    [empty] = read_manifest("mine", str(tmp_path / "m.csv"))
    assert (empty.reject.reason, empty.reject.detail) == (reasons.SHARD_EMPTY, "no rows")
