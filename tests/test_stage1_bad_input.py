"""Stage 1 on shards full of bad input: every defect becomes a recorded reject, nothing crashes or vanishes."""

import io
import tarfile

import pyarrow.parquet as pq
from PIL import Image

from formats import reasons
from formats.ids import pair_uid
from pipelines import stage1


def jpeg(width=320, height=240) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_tar(path, members) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_input_becomes_rejects(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    good, caption = jpeg(), b"a blue square painted on the wall"
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, "PNG")
    write_tar(
        raw / "00000.tar",
        [
            ("a0.jpg", good), ("a0.txt", caption),
            ("a1.jpg", good),  # no caption member
            ("a2.png", bomb.getvalue()), ("a2.txt", caption),
            ("a3.jpg", good), ("a3.txt", b"caf\xe9 au lait on a table"),
            ("a4.jpg", good[: len(good) // 2]), ("a4.txt", caption),
        ],
    )
    write_tar(raw / "00001.tar", [(f"b{k}.{ext}", good if ext == "jpg" else caption) for k in range(6) for ext in ("jpg", "txt")])
    cut = (raw / "00001.tar").read_bytes()
    (raw / "00001.tar").write_bytes(cut[: len(cut) // 2])
    (raw / "00002.tar").write_bytes(b"")
    (raw / "00003.tar").write_bytes(b"\x00garbage" * 100)

    report = stage1.run(["--input", f"mine={raw}", "--output", str(tmp_path / "out")])

    curated = pq.read_table(tmp_path / "out" / "curated").to_pylist()
    rejected = pq.read_table(tmp_path / "out" / "rejected").to_pylist()
    # a0 and b0-b3 are the same image with the same caption: one is kept, the smallest uid
    keeper = min(["a0", "b0", "b1", "b2", "b3"], key=lambda key: pair_uid("mine", key))
    assert [row["key"] for row in curated] == [keeper]
    by_key = {row["key"]: (row["reason"], row["detail"]) for row in rejected}
    for key in {"a0", "b0", "b1", "b2", "b3"} - {keeper}:
        assert by_key[key] == (reasons.DUPLICATE, f"exact duplicate of {pair_uid('mine', keeper)}")
    assert {row["key"]: row["duplicate_of"] for row in rejected if row["duplicate_of"]} == {
        key: pair_uid("mine", keeper) for key in {"a0", "b0", "b1", "b2", "b3"} - {keeper}}
    assert by_key["a1"] == (reasons.CAPTION_MISSING, "no caption")
    assert by_key["a2"] == (reasons.IMAGE_DECOMPRESSION_BOMB, "12000x12000 = 144000000 px > 89478485")
    assert by_key["a3"] == (reasons.CAPTION_NOT_UTF8, "invalid byte 0xe9 at offset 3")
    assert by_key["a4"][0] == reasons.IMAGE_UNDECODABLE
    assert by_key[str(raw / "00001.tar")] == (reasons.SHARD_UNREADABLE, "read 4 samples, then ReadError: unexpected end of data")
    assert by_key[str(raw / "00002.tar")] == (reasons.SHARD_EMPTY, "empty file")
    assert by_key[str(raw / "00003.tar")][0] == reasons.SHARD_UNREADABLE
    assert len(rejected) == 11
    assert [r["caption"] for r in rejected if r["key"] == "a3"] == ["caf\\xe9 au lait on a table"]

    source = report["sources"]["mine"]
    assert (source["input"], source["kept"]) == (12, 1)
    assert source["input"] == len(curated) + len(rejected)
    assert {r: n for r, n in source["dropped"].items() if n} == {
        reasons.SHARD_UNREADABLE: 2,
        reasons.SHARD_EMPTY: 1,
        reasons.CAPTION_MISSING: 1,
        reasons.CAPTION_NOT_UTF8: 1,
        reasons.IMAGE_DECOMPRESSION_BOMB: 1,
        reasons.IMAGE_UNDECODABLE: 1,
        reasons.DUPLICATE: 4,
    }
