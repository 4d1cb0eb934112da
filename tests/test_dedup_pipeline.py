import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from pipelines.dedup import Deduplicate


def row(uid: str, phash: str, caption: str) -> dict:
    return {"uid": uid, "source": "s", "key": uid, "url": None, "caption": caption, "caption_raw": caption, "phash": phash, "image": b"x"}


def test_exact_near_and_distinct_hashes():
    rows = [row(f"blank{i}", "0" * 16, "blank" + "!" * i) for i in range(5)]  # blank4 has the longest caption
    rows += [row("a", "f0f0f0f0f0f0f0f0", "a long caption here"), row("b", "f0f0f0f0f0f0f0f7", "short")]  # 3 bits apart
    rows += [row("c", "ffffffffffffffff", "far away")]
    with beam.Pipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(rows) | Deduplicate(max_distance=4)
        assert_that(out.kept | "KeptUids" >> beam.Map(lambda r: r["uid"]), equal_to(["blank4", "a", "c"]), label="kept")
        assert_that(
            out.rejected | "Details" >> beam.Map(lambda r: (r["uid"], r["reason"], r["detail"])),
            equal_to([(f"blank{i}", "duplicate", "duplicate of blank4") for i in range(4)] + [("b", "duplicate", "duplicate of a")]),
            label="rejected",
        )


def test_distance_above_the_limit_is_kept():
    rows = [row("a", "f0f0f0f0f0f0f0f0", "one caption"), row("b", "f0f0f0f0f0f0f0f7", "another")]
    with beam.Pipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(rows) | Deduplicate(max_distance=2)
        assert_that(out.kept | beam.Map(lambda r: r["uid"]), equal_to(["a", "b"]))
