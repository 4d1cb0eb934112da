"""formats/markup.py: the regions of a sample's text in either dialect, the image each refers to, and its label."""

import pytest

from formats.markup import text_regions

QWEN_VL_TEXT = ("<box>(1,1),(2,2)</box>Picture 1: <img>a</img>\nPicture 2: <img>b</img>\n"
                "<ref>two cats</ref><box>(10,20),(30,40)</box> <box>(50,60),(70,80)</box> and "
                "<ref>a dog</ref> sits <box>(5,5),(9,9)</box><ref>EXIT</ref><quad>(1,2),(3,4),(5,6),(7,8)</quad><box>(1,2)</box>")
QWEN2_VL_TEXT = ("<|box_start|>(1,1),(2,2)<|box_end|>Picture 1: <|vision_start|>a<|vision_end|>\n"
                 "Picture 2: <|vision_start|>b<|vision_end|>\n"
                 "<|object_ref_start|>two cats<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|> "
                 "<|box_start|>(50,60),(70,80)<|box_end|> and <|object_ref_start|>a dog<|object_ref_end|> sits "
                 "<|box_start|>(5,5),(9,9)<|box_end|><|object_ref_start|>EXIT<|object_ref_end|>"
                 "<|quad_start|>(1,2),(3,4),(5,6),(7,8)<|quad_end|><|box_start|>(1,2)<|box_end|>")


@pytest.mark.parametrize("text, second_box", [
    (QWEN_VL_TEXT, "<box>(10,20),(30,40)</box>"),
    (QWEN2_VL_TEXT, "<|box_start|>(10,20),(30,40)<|box_end|>"),
])
def test_regions_refer_to_the_last_image_before_them(text, second_box):
    regions = text_regions(text)
    assert [(r.kind, r.image, r.label, r.points) for r in regions] == [
        ("box", None, None, [(1, 1), (2, 2)]),  # before any image: not drawn
        ("box", 1, "two cats", [(10, 20), (30, 40)]),
        ("box", 1, "two cats", [(50, 60), (70, 80)]),  # a run of regions after one ref shares its label
        ("box", 1, None, [(5, 5), (9, 9)]),  # words between the ref and the box: no label
        ("quad", 1, "EXIT", [(1, 2), (3, 4), (5, 6), (7, 8)]),
        ("box", 1, "EXIT", None),  # unreadable coordinates: listed, not drawn
    ]
    assert [r.index for r in regions] == [0, 1, 2, 3, 4, 5]
    assert text[regions[1].start : regions[1].end] == second_box


def test_qwen2_vl_regions_with_their_character_spans():
    text = ("<|vision_start|>[64 slots]<|vision_end|> the eyes: <|object_ref_start|>the eyes<|object_ref_end|>"
            "<|box_start|>(176,106),(232,160)<|box_end|>")
    (region,) = text_regions(text)
    assert (region.kind, region.start, region.end, region.points, region.label, region.image) == (
        "box", 97, 140, [(176, 106), (232, 160)], "the eyes", 0)
    assert text[97:140] == "<|box_start|>(176,106),(232,160)<|box_end|>"


def test_a_video_span_counts_as_an_image():
    text = ("<|vision_start|>clip.mp4<|vision_end|><|vision_start|>[12 video slots]<|vision_end|>"
            "<|vision_start|>b.png<|vision_end|><|quad_start|>(1,2),(3,4),(5,6),(7,8)<|quad_end|>")
    (region,) = text_regions(text)
    assert (region.kind, region.image, region.label, region.points) == ("quad", 2, None, [(1, 2), (3, 4), (5, 6), (7, 8)])


def test_tags_of_the_two_dialects_do_not_pair_with_each_other():
    """A Qwen-VL opening tag closed by a Qwen2-VL one is no region, nor an image (nor the other way round)."""
    assert text_regions("<img>a</img><box>(1,2),(3,4)<|box_end|>") == []
    assert text_regions("<img>a</img><|box_start|>(1,2),(3,4)</box>") == []
    (region,) = text_regions("<|vision_start|>a</img><box>(1,2),(3,4)</box>")
    assert (region.image, region.points) == (None, [(1, 2), (3, 4)])


@pytest.mark.parametrize("text", ["a cat on a mat", "<img>x.jpg</img><ref>a cat</ref> on a mat",
                                  "<|vision_start|>x.jpg<|vision_end|><|object_ref_start|>a cat<|object_ref_end|> on a mat"])
def test_no_regions_in_plain_text_or_an_image_alone(text):
    assert text_regions(text) == []


@pytest.mark.parametrize("text", ["<img>a</img><quad>(1,2),(3,4),(5,6)</quad>",
                                  "<|vision_start|>a<|vision_end|><|quad_start|>(1,2),(3,4),(5,6)<|quad_end|>"])
def test_a_quad_with_three_points_does_not_parse(text):
    (region,) = text_regions(text)
    assert (region.kind, region.image, region.points) == ("quad", 0, None)
