"""pipelines/stage1.py: the decision's Arrow steps. Dropped candidates become rejected rows with their
raw caption and reasons, images kept or dropped; kept candidates get the scores that ran, the others
stay null."""

import pyarrow as pa

from formats import reasons, schemas
from formats.pair import Reject
from pipelines.stage1 import rejected_table, with_scores


def candidates(n: int) -> pa.Table:
    rows = [{"uid": f"u{i}", "source": "s", "key": f"k{i}", "url": f"http://x/{i}", "caption": f"clean {i}", "caption_raw": f"Raw {i}!",
             "image": f"img{i}".encode(), "lang": "en"} for i in range(n)]
    return pa.Table.from_pylist(rows, schemas.CURATED)


def test_rejected_rows_keep_or_drop_their_images():
    rejects = [Reject(reasons.DUPLICATE, "exact duplicate of u9", "u9"), Reject(reasons.CLIP_SCORE, "0.1000 < 0.2000")]
    kept = rejected_table(candidates(2), rejects, keep_images=True)
    assert kept.schema == schemas.REJECTED
    assert kept.to_pylist() == [
        {"uid": "u0", "source": "s", "key": "k0", "url": "http://x/0", "caption": "Raw 0!", "reason": "duplicate", "detail": "exact duplicate of u9",
         "duplicate_of": "u9", "image": b"img0"},
        {"uid": "u1", "source": "s", "key": "k1", "url": "http://x/1", "caption": "Raw 1!", "reason": "clip_score", "detail": "0.1000 < 0.2000",
         "duplicate_of": None, "image": b"img1"},
    ]
    dropped = rejected_table(candidates(2), rejects, keep_images=False)
    assert dropped["image"].to_pylist() == [None, None]
    assert dropped.drop_columns(["image"]) == kept.drop_columns(["image"])


def test_kept_rows_get_the_scores_that_ran():
    scored = with_scores(candidates(2), [{"clip_score": 0.25, "watermark_score": 0.5}, {"clip_score": 0.75, "watermark_score": 0.0}])
    assert scored.schema == schemas.CURATED
    assert scored.select(["clip_score", "nsfw_score", "aesthetic_score", "watermark_score"]).to_pylist() == [
        {"clip_score": 0.25, "nsfw_score": None, "aesthetic_score": None, "watermark_score": 0.5},
        {"clip_score": 0.75, "nsfw_score": None, "aesthetic_score": None, "watermark_score": 0.0},
    ]
    assert with_scores(candidates(2), [{}, {}]) == candidates(2)  # CLIP did not run: the rows as they were
