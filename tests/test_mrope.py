import numpy as np
import pytest

from formats.dialects import QWEN2_VL, image_span_ids
from formats.dynamic_resolution import image_grid, image_tokens, smart_resize
from formats.mrope import IMAGE_PAD_ID, VIDEO_PAD_ID, mrope_positions
from tests.qwen2vl_reference import reference

TEXT = [9707, 11, 1879]  # any three text ids


def span(grid, video=False):
    return image_span_ids(QWEN2_VL, image_tokens(grid), video)


def test_pad_ids():
    assert (IMAGE_PAD_ID, VIDEO_PAD_ID) == (151655, 151656)


def test_text_only():
    assert mrope_positions(TEXT + TEXT).tolist() == [[0, 1, 2, 3, 4, 5]] * 3


def test_video_example_of_get_rope_index_docstring():
    """transformers' example: a video of 3 frame pairs of 2x2 merged patches, then 5 text tokens."""
    ids = [VIDEO_PAD_ID] * 12 + TEXT + TEXT[:2]
    assert mrope_positions(ids, video_grids=[(3, 4, 4)]).tolist() == [
        [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 4, 5, 6, 7],
        [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 3, 4, 5, 6, 7],
        [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 3, 4, 5, 6, 7],
    ]


def test_image_between_text():
    # text, <|vision_start|>, 2x3 merged patches, <|vision_end|>, text
    ids = TEXT[:2] + span((1, 4, 6)) + TEXT[:1]
    assert mrope_positions(ids, image_grids=[(1, 4, 6)]).tolist() == [
        [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7],
        [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7],
        [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7],
    ]


def test_packed_documents_restart():
    first = TEXT[:1] + span((1, 2, 2))
    second = span((1, 2, 4)) + TEXT[:1]
    positions = mrope_positions(first + second, image_grids=[(1, 2, 2), (1, 2, 4)], doc_starts=[0, len(first)])
    assert positions.tolist() == [
        [0, 1, 2, 3, 0, 1, 1, 3, 4],
        [0, 1, 2, 3, 0, 1, 1, 3, 4],
        [0, 1, 2, 3, 0, 1, 2, 3, 4],
    ]


@pytest.mark.parametrize(
    "ids, images, videos, doc_starts, message",
    [
        ([IMAGE_PAD_ID] * 3, [(1, 2, 2)], [], [0], r"^the image span at 0 has 3 pads; its grid \(1, 2, 2\) needs 1$"),
        ([IMAGE_PAD_ID], [], [], [0], "^the image span at 0 has no image grid left$"),
        ([VIDEO_PAD_ID], [], [], [0], "^the video span at 0 has no video grid left$"),
        (TEXT, [(1, 2, 2)], [], [0], "^more image grids than image spans$"),
        ([IMAGE_PAD_ID], [(1, 3, 2)], [], [0], r"^grid \(1, 3, 2\): positive, with height and width multiples of 2$"),
        (TEXT, [], [], [1], r"^doc_starts \[1\]: increasing from 0, each below the row's length 3$"),
        (TEXT, [], [], [0, 3], r"^doc_starts \[0, 3\]: increasing from 0, each below the row's length 3$"),
        # a span cut by a document start is two spans, neither of its grid's size
        ([IMAGE_PAD_ID] * 2, [(1, 2, 4)], [], [0, 1], r"^the image span at 0 has 1 pads; its grid \(1, 2, 4\) needs 2$"),
    ],
)
def test_bad_usage(ids, images, videos, doc_starts, message):
    with pytest.raises(ValueError, match=message):
        mrope_positions(ids, images, videos, doc_starts)


def _row(parts):
    """Ids and grids of a row from text runs (lists) and ("image" | "video", grid) items."""
    ids, grids = [], {"images": [], "videos": []}
    for part in parts:
        if isinstance(part, list):
            ids += part
        else:
            kind, grid = part
            ids += span(grid, video=kind == "video")
            grids[kind + "s"].append(list(grid))
    return {"ids": ids, "images": grids["images"], "videos": grids["videos"]}


ROWS = {
    "one image": _row([TEXT, ("image", image_grid(*smart_resize(224, 224))), TEXT]),
    "two images": _row([TEXT[:1], ("image", (1, 4, 6)), TEXT, ("image", image_grid(*smart_resize(100, 300))), TEXT[:2]]),
    "video": _row([TEXT, ("video", (3, 6, 4)), TEXT]),
    "image then video": _row([("image", (1, 8, 2)), TEXT, ("video", (2, 2, 2)), TEXT[:1]]),
    "ends with an image": _row([TEXT, ("image", (1, 2, 8))]),
}


@pytest.fixture(scope="module")
def reference_positions():
    return dict(zip(ROWS, reference("rope", list(ROWS.values()))))


@pytest.mark.parametrize("name", ROWS)
def test_matches_get_rope_index(name, reference_positions):
    row = ROWS[name]
    ours = mrope_positions(row["ids"], row["images"], row["videos"])
    assert ours.tolist() == reference_positions[name]


def test_packed_row_matches_get_rope_index_per_document(reference_positions):
    names = ["two images", "video", "one image"]
    ids, images, videos, starts = [], [], [], []
    for name in names:
        starts.append(len(ids))
        ids += ROWS[name]["ids"]
        images += ROWS[name]["images"]
        videos += ROWS[name]["videos"]
    ours = mrope_positions(ids, images, videos, starts)
    assert ours.tolist() == np.concatenate([reference_positions[n] for n in names], axis=1).tolist()
