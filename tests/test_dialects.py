import pytest
import tiktoken

from formats import tokenizer
from formats.dialects import QWEN2_VL, QWEN_VL, get_dialect, image_span, image_span_ids, render_box, render_quad
from formats.tokenizer import PAT_STR, QwenTokenizer, default_vocabulary, load_ranks

QWEN2_VL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
QUAD = ((10, 20), (300, 20), (300, 80), (10, 80))


def test_qwen2_vl_special_ids():
    assert QWEN2_VL.special_ids() == QWEN2_VL_IDS


def test_qwen_vl_special_ids_are_the_tokenizers():
    assert QWEN_VL.special_ids() == tokenizer.SPECIAL_IDS
    assert QWEN_VL.special_ids()["<ref>"] == 151851
    assert QWEN_VL.special_ids()["<|extra_0|>"] == 151646  # the id Qwen2-VL gives <|object_ref_start|>


@pytest.mark.parametrize(
    "dialect, expected",
    [
        (QWEN_VL, "<ref>the eyes</ref><box>(176,106),(232,160)</box>"),
        (QWEN2_VL, "<|object_ref_start|>the eyes<|object_ref_end|><|box_start|>(176,106),(232,160)<|box_end|>"),
    ],
)
def test_render_box(dialect, expected):
    assert render_box(dialect, (176, 106, 232, 160), "the eyes") == expected


@pytest.mark.parametrize(
    "dialect, expected",
    [(QWEN_VL, "<box>(0,0),(999,999)</box>"), (QWEN2_VL, "<|box_start|>(0,0),(999,999)<|box_end|>")],
)
def test_render_box_without_phrase(dialect, expected):
    assert render_box(dialect, (0, 0, 999, 999)) == expected


@pytest.mark.parametrize(
    "dialect, expected",
    [
        (QWEN_VL, "<ref>EXIT</ref><quad>(10,20),(300,20),(300,80),(10,80)</quad>"),
        (QWEN2_VL, "<|object_ref_start|>EXIT<|object_ref_end|><|quad_start|>(10,20),(300,20),(300,80),(10,80)<|quad_end|>"),
    ],
)
def test_render_quad(dialect, expected):
    assert render_quad(dialect, QUAD, "EXIT") == expected


@pytest.mark.parametrize("dialect", [QWEN_VL, QWEN2_VL])
def test_render_box_off_grid(dialect):
    with pytest.raises(ValueError):
        render_box(dialect, (176, 106, 232, 1000), "the eyes")


def test_image_spans():
    assert image_span(QWEN_VL, 256) == "<img>" + "<imgpad>" * 256 + "</img>"
    assert image_span(QWEN2_VL, 3) == "<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>"
    assert image_span(QWEN2_VL, 2, video=True) == "<|vision_start|><|video_pad|><|video_pad|><|vision_end|>"


def test_image_span_ids():
    assert image_span_ids(QWEN_VL, 256) == [151857] + [151859] * 256 + [151858]
    assert image_span_ids(QWEN2_VL, 64) == [151652] + [151655] * 64 + [151653]
    assert image_span_ids(QWEN2_VL, 2, video=True) == [151652, 151656, 151656, 151653]


def test_qwen_vl_image_span_ids_are_the_tokenizers():
    assert image_span_ids(QWEN_VL, 256) == QwenTokenizer().encode("<img>x.jpg</img>")


@pytest.mark.parametrize(
    "dialect, slots, video, message",
    [
        (QWEN_VL, 64, False, "a qwen-vl image has 256 slots, not 64"),
        (QWEN_VL, 256, True, "qwen-vl has no video token"),
        (QWEN2_VL, 0, False, "an image has a positive number of slots, not 0"),
    ],
)
def test_image_span_bad_usage(dialect, slots, video, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        image_span(dialect, slots, video)
    with pytest.raises(ValueError, match=f"^{message}$"):
        image_span_ids(dialect, slots, video)


def test_get_dialect():
    assert get_dialect("qwen2-vl") is QWEN2_VL
    with pytest.raises(ValueError, match="^unknown dialect 'qwen3': one of qwen-vl, qwen2-vl$"):
        get_dialect("qwen3")


def test_qwen_tiktoken_with_qwen2_vl_specials():
    """qwen.tiktoken's ranks plus Qwen2-VL's specials in order give the released ids; the digits of a box
    are the same BPE ids in both dialects."""
    ranks = load_ranks(default_vocabulary())
    enc = tiktoken.Encoding("qwen2-vl", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=QWEN2_VL.special_ids())
    text = render_box(QWEN2_VL, (176, 106, 232, 160), "the eyes") + image_span(QWEN2_VL, 2)
    ids = enc.encode(text, allowed_special="all")
    coords = enc.encode_ordinary("(176,106),(232,160)")
    assert ids == [151646] + enc.encode_ordinary("the eyes") + [151647, 151648] + coords + [151649, 151652, 151655, 151655, 151653]
    assert coords == QwenTokenizer().encode("(176,106),(232,160)")
    assert enc.n_vocab == 151657
