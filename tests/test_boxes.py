import math

import numpy as np
import pytest

from formats.dialects import QWEN2_VL, QWEN_VL, render_region
from formats.boxes import (
    BoxError,
    format_box,
    format_quad,
    normalize_box,
    normalize_example,
    normalize_quad,
)
from formats.example import Example, Invalid, Region, Span
from formats.sources.records import Malformed
from formats.sources.refer import xywh_region

W, H = 640, 480


@pytest.mark.parametrize(
    "box, norm",
    [
        ((0, 0, 640, 480), (0, 0, 999, 999)),  # the whole image: the right/bottom edge x = width is 999
        ((0, 0, 639, 479), (0, 0, 998, 997)),  # the last pixel column and row: floor(639/640*1000) = 998
        ((1, 1, 2, 2), (1, 2, 3, 4)),  # floor: 1/640*1000 = 1.56 -> 1, 2/640*1000 = 3.125 -> 3
        ((320, 240, 480, 360), (500, 500, 750, 750)),  # exact
        ((100.9, 50.5, 200.1, 100), (157, 105, 312, 208)),  # floats floor too
        ((-20, -5, 100, 100), (0, 0, 156, 208)),  # partly outside: clipped to the image
        ((600, 400, 700, 500), (937, 833, 999, 999)),  # partly outside on the far side
    ],
)
def test_normalize_box(box, norm):
    assert normalize_box(box, W, H) == norm


def test_floats_are_the_decimals_written():
    # 32.3 * 1000 / 100 is 322.99999999999994 in binary floats; the data set wrote 32.3, which is 323
    assert normalize_box((32.3, 0, 50, 10), 100, 100) == (323, 0, 500, 100)
    assert normalize_box((72.3, 0, 723, 10), 723, 100) == (100, 0, 999, 100)


def test_numpy_numbers():
    assert normalize_box(np.array([1.5, 2, 600, 400], dtype=np.float32), W, H) == (2, 4, 937, 833)
    assert normalize_box(np.array([1, 2, 600, 400], dtype=np.int64), W, H) == (1, 4, 937, 833)


@pytest.mark.parametrize(
    "box, reason, detail",
    [
        ((math.nan, 0, 10, 10), "box_not_finite", "(nan, 0, 10, 10)"),
        ((0, 0, math.inf, 10), "box_not_finite", "(0, 0, inf, 10)"),
        ((50, 10, 40, 20), "box_inverted", "(50, 10, 40, 20): x2 < x1"),
        ((10, 50, 40, 20), "box_inverted", "(10, 50, 40, 20): y2 < y1"),
        ((10, 10, 10, 20), "box_degenerate", "(10, 10, 10, 20): zero width in pixels"),
        ((10, 20.5, 30, 20.5), "box_degenerate", "(10, 20.5, 30, 20.5): zero height in pixels"),
        # 639.5 and 640 both land on 999: too thin for the grid
        ((639.5, 0, 640, 10), "box_degenerate", "(639.5, 0, 640, 10): zero width on the 1000 grid"),
        ((-10, 0, 0.5, 10), "box_degenerate", "(-10, 0, 0.5, 10): zero width on the 1000 grid"),
        ((700, 10, 800, 20), "box_outside_image", "(700, 10, 800, 20) outside 640x480"),
        ((640, 10, 700, 20), "box_outside_image", "(640, 10, 700, 20) outside 640x480"),  # touches the edge
        ((-50, 10, 0, 20), "box_outside_image", "(-50, 10, 0, 20) outside 640x480"),
        ((10, 480, 20, 500), "box_outside_image", "(10, 480, 20, 500) outside 640x480"),
        ((1, 2, 3), "box_malformed", "box needs 4 numbers, got (1, 2, 3)"),
        (("1", 2, 3, 4), "box_malformed", "box needs 4 numbers, got ('1', 2, 3, 4)"),
    ],
)
def test_bad_boxes(box, reason, detail):
    with pytest.raises(BoxError) as e:
        normalize_box(box, W, H)
    assert (e.value.reason, e.value.detail) == (reason, detail)


def xyxy(values) -> tuple:
    return xywh_region(values, "bbox").box


def test_xywh():
    assert xyxy((141, 64, 45, 32)) == (141, 64, 186, 96)  # Visual Genome x, y, w, h
    assert xyxy([10.5, 20.25, 100.0, 50.5]) == (10.5, 20.25, 110.5, 70.75)  # COCO bbox
    assert normalize_box(xyxy((141, 64, 45, 32)), 800, 600) == (176, 106, 232, 160)
    with pytest.raises(BoxError) as e:
        normalize_box(xyxy((10, 10, 0, 5)), W, H)  # Visual Genome has zero-width objects
    assert e.value.reason == "box_degenerate"
    with pytest.raises(BoxError) as e:
        normalize_box(xyxy((10, 10, -3, 5)), W, H)
    assert e.value.reason == "box_inverted"
    with pytest.raises(Malformed, match=r"^bbox: expected \[x, y, width, height\], got \(1, 2, 3\)$"):
        xyxy((1, 2, 3))
    with pytest.raises(Malformed, match=r"^bbox: expected 4 numbers, got \[1, 2, 3, True\]$"):
        xyxy((1, 2, 3, True))


SYNTHDOG_QUAD = ((727.1, 116.5), (800, 126), (799, 175), (726, 165.5))  # clockwise from the top-left


def test_normalize_quad():
    assert normalize_quad(SYNTHDOG_QUAD, 1280, 960) == ((568, 121), (625, 131), (624, 182), (567, 172))
    # corners outside are clamped into the image
    clamped = normalize_quad([(-10, -10), (700, 0), (640, 480), (0, 500)], W, H)
    assert clamped == ((0, 0), (999, 0), (999, 999), (0, 999))


@pytest.mark.parametrize(
    "quad, reason, detail",
    [
        ([(0, 0), (10, 0), (10, math.nan), (0, 10)], "box_not_finite", "(0, 0, 10, 0, 10, nan, 0, 10)"),
        (
            [(0, 0), (0, 10), (10, 10), (10, 0)],
            "box_inverted",
            "(0, 0, 0, 10, 10, 10, 10, 0): corners run counter-clockwise",
        ),
        ([(0, 0), (5, 0), (10, 0), (5, 0)], "box_degenerate", "(0, 0, 5, 0, 10, 0, 5, 0): zero area in pixels"),
        (
            [(10, 10), (10.2, 10), (10.2, 10.2), (10, 10.2)],
            "box_degenerate",
            "(10, 10, 10.2, 10, 10.2, 10.2, 10, 10.2): zero area on the 1000 grid",
        ),
        (
            [(700, 0), (800, 0), (800, 10), (700, 10)],
            "box_outside_image",
            "(700, 0, 800, 0, 800, 10, 700, 10) outside 640x480",
        ),
        ([(0, 0), (1, 0), (1, 1)], "box_malformed", "quad needs 4 points of 2 numbers, got [(0, 0), (1, 0), (1, 1)]"),
        (
            [(0, 0, 1), (1, 0), (1, 1), (0, 1)],
            "box_malformed",
            "quad needs 4 points of 2 numbers, got [(0, 0, 1), (1, 0), (1, 1), (0, 1)]",
        ),
    ],
)
def test_bad_quads(quad, reason, detail):
    with pytest.raises(BoxError) as e:
        normalize_quad(quad, W, H)
    assert (e.value.reason, e.value.detail) == (reason, detail)


def test_format():
    assert format_box((176, 106, 232, 160)) == "(176,106),(232,160)"
    assert format_quad(((568, 121), (625, 131), (624, 182), (567, 172))) == "(568,121),(625,131),(624,182),(567,172)"
    assert render_region(QWEN_VL, Region(box=(0, 0, 999, 999))) == "<box>(0,0),(999,999)</box>"
    assert render_region(QWEN_VL, Region(quad=((1, 2), (3, 4), (5, 6), (7, 8)))) == "<quad>(1,2),(3,4),(5,6),(7,8)</quad>"
    assert render_region(QWEN2_VL, Region(box=(0, 0, 999, 999))) == "<|box_start|>(0,0),(999,999)<|box_end|>"
    assert render_region(QWEN2_VL, Region(quad=((1, 2), (3, 4), (5, 6), (7, 8)))) == "<|quad_start|>(1,2),(3,4),(5,6),(7,8)<|quad_end|>"
    for not_normalized in [(0, 0, 1000, 10), (0.0, 0, 10, 10), (-1, 0, 10, 10)]:
        with pytest.raises(ValueError):
            format_box(not_normalized)


def test_normalize_example_all_regions():
    ex = Example(
        task="grounding",
        source="grit",
        key="1",
        text="a bee on a flower",
        regions=(Region(box=(0, 0, 320, 240)),),
        spans=(Span(2, 5, (Region(box=(64, 48, 128, 96)), Region(box=(0, 0, 640, 480)))),),
        lines=(("TEXT", Region(quad=((0, 0), (64, 0), (64, 48), (0, 48)))),),
    )
    out = normalize_example(ex, W, H)
    assert out == Example(
        task="grounding",
        source="grit",
        key="1",
        width=640,
        height=480,
        text="a bee on a flower",
        regions=(Region(box=(0, 0, 500, 500)),),
        spans=(Span(2, 5, (Region(box=(100, 100, 200, 200)), Region(box=(0, 0, 999, 999)))),),
        lines=(("TEXT", Region(quad=((0, 0), (100, 0), (100, 100), (0, 100))),),),
    )
    assert ex.regions == (Region(box=(0, 0, 320, 240)),)  # the input is left as it was
    # the example's own size is the default
    assert normalize_example(Example("caption", "s", "k", text="x", width=10, height=10)).width == 10


def test_normalize_example_invalid():
    ex = Example(
        task="grounding",
        source="grit",
        key="7",
        text="a bee",
        spans=(Span(2, 5, (Region(box=(0, 0, 10, 10)), Region(box=(30, 30, 20, 40)))),),
    )
    detail = "spans[0].regions[1]: (30, 30, 20, 40): x2 < x1"
    assert normalize_example(ex, W, H) == Invalid("grit", "7", "box_inverted", detail)
    lines = (("a", Region(box=(0, 0, 10, 10))), ("b", Region(box=(700, 0, 800, 10))))
    ex = Example(task="ocr", source="synthdog", key="2", lines=lines)
    detail = "lines[1]: (700, 0, 800, 10) outside 640x480"
    assert normalize_example(ex, W, H) == Invalid("synthdog", "2", "box_outside_image", detail)
    ex = Example(task="referring", source="refcoco", key="3", regions=(Region(),))
    detail = "regions[0]: a region needs exactly one of box and quad"
    assert normalize_example(ex, W, H) == Invalid("refcoco", "3", "box_malformed", detail)
    ex = Example(task="referring", source="refcoco", key="4", regions=(Region(box=(0, 0, 1, 1)),))
    assert normalize_example(ex) == Invalid("refcoco", "4", "image_size_invalid", "width None, height None")
    assert normalize_example(ex, 0, 10) == Invalid("refcoco", "4", "image_size_invalid", "width 0, height 10")
