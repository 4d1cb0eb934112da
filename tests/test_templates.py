import dataclasses

import pytest

from formats.boxes import normalize_example
from formats.sources.refer import xywh_region
from formats.example import Example, Invalid, Region, Span
from formats.dialects import QWEN2_VL
from formats.templates import check, render

EOS = "<|endoftext|>"

# The paper's appendix examples (Qwen-VL, arXiv 2308.12966), from examples in pixels that normalize to its integers.
GRIT_TEXT = "Beautiful shot of bees gathering nectars from an apricot flower"
_BEES, _FLOWER = GRIT_TEXT.index("bees"), GRIT_TEXT.index("an apricot flower")
TABLE = [
    (
        Example("caption", "cc3m", "01581435", image="cc3m/01581435.jpg", text="the beautiful flowers for design."),
        (500, 400),
        "<img>cc3m/01581435.jpg</img>Generate the caption in English:",
        " the beautiful flowers for design.",
    ),
    (
        Example(
            "vqa",
            "vgqa",
            "1",
            image="VG_100K_2/1.jpg",
            question="Does the bandage have a different color than the wrist band?",
            text="No, both the bandage and the wrist band are white.",
        ),
        (500, 400),
        "<img>VG_100K_2/1.jpg</img> Does the bandage have a different color than the wrist band? Answer:",
        " No, both the bandage and the wrist band are white.",
    ),
    (
        Example(
            "vqa",
            "ocr_vqa",
            "1",
            image="ocr_vqa/1.jpg",
            question="What is the title of this book?",
            text="Asi Se Dice!, Volume 2: Workbook And Audio Activities (Glencoe Spanish) (Spanish Edition)",
        ),
        (500, 400),
        "<img>ocr_vqa/1.jpg</img> What is the title of this book? Answer:",
        " Asi Se Dice!, Volume 2: Workbook And Audio Activities (Glencoe Spanish) (Spanish Edition)",
    ),
    (
        Example(
            "grounding",
            "coyo700m",
            "1",
            image="coyo700m/1.jpg",
            text=GRIT_TEXT,
            spans=(
                Span(
                    _BEES,
                    _BEES + 4,
                    (Region(box=(330.5, 244.8, 416.6, 324.9)), Region(box=(60, 222.1, 132.7, 308.2))),
                ),
                Span(_FLOWER, len(GRIT_TEXT), (Region(box=(112, 5.3, 199.9, 125.3)),)),
            ),
        ),
        (500, 400),
        "<img>coyo700m/1.jpg</img>Generate the caption in English with grounding:",
        " Beautiful shot of <ref>bees</ref><box>(661,612),(833,812)</box><box>(120,555),(265,770)</box> gathering"
        " nectars from <ref>an apricot flower</ref><box>(224,13),(399,313)</box>",
    ),
    (
        Example(
            "referring",
            "vg",
            "3",
            image="VG_100K_2/3.jpg",
            text="the ear on a giraffe",
            regions=(xywh_region((141, 64, 45, 32), "x, y, width, height"),),  # Visual Genome writes x, y, w, h
        ),
        (800, 600),
        "<img>VG_100K_2/3.jpg</img><ref>the ear on a giraffe</ref>",
        "<box>(176,106),(232,160)</box>",
    ),
    (
        Example(
            "grounded_caption",
            "vg",
            "4",
            image="VG_100K_2/4.jpg",
            text="Yellow cross country ski racing gloves",
            regions=(Region(box=(288, 325.4, 381, 423)),),
        ),
        (800, 600),
        "<img>VG_100K_2/4.jpg</img><ref>This</ref><box>(360,542),(476,705)</box> is",
        " Yellow cross country ski racing gloves",
    ),
    (
        Example(
            "ocr",
            "synthdog",
            "1",
            image="synthdog/1.jpg",
            lines=(("It is managed", Region(quad=((727.1, 116.5), (800, 126), (799, 175), (726, 165.5)))),),
        ),
        (1280, 960),
        "<img>synthdog/1.jpg</img>OCR with grounding:",
        "<ref>It is managed</ref><quad>(568,121),(625,131),(624,182),(567,172)</quad>",
    ),
]


@pytest.mark.parametrize("pixels, size, prompt, target", TABLE, ids=[f"{t[0].task}-{t[0].source}" for t in TABLE])
def test_spec_table_english(pixels, size, prompt, target):
    example = normalize_example(pixels, *size)
    assert render(example) == [(prompt, False), (target + EOS, True)]


# Chinese: the same templates with the language named "Chinese"; grounded captioning translated.
QUAD = Region(quad=((568, 121), (625, 131), (624, 182), (567, 172)))
BOX = Region(box=(176, 106, 232, 160))
ZH = [
    (
        Example("caption", "laion-zh", "9", lang="zh", image="laion-zh/9.jpg", text="美丽的花朵设计。"),
        [("<img>laion-zh/9.jpg</img>Generate the caption in Chinese:", False), (" 美丽的花朵设计。" + EOS, True)],
    ),
    (
        Example("vqa", "zh-vqa", "2", lang="zh", image="q/2.jpg", question="图中有几只狗？", text="两只。"),
        [("<img>q/2.jpg</img> 图中有几只狗？ Answer:", False), (" 两只。" + EOS, True)],
    ),
    (
        Example(
            "grounding",
            "grit-zh",
            "5",
            lang="zh",
            image="g/5.jpg",
            text="一只蜜蜂在花上采蜜",
            spans=(Span(0, 4, (BOX,)), Span(5, 6, (BOX, BOX))),
        ),
        [
            ("<img>g/5.jpg</img>Generate the caption in Chinese with grounding:", False),
            (
                " <ref>一只蜜蜂</ref><box>(176,106),(232,160)</box>在<ref>花</ref>"
                "<box>(176,106),(232,160)</box><box>(176,106),(232,160)</box>上采蜜" + EOS,
                True,
            ),
        ],
    ),
    (
        Example("referring", "ref-zh", "3", lang="zh", image="r/3.jpg", text="长颈鹿的耳朵", regions=(BOX, BOX)),
        [
            ("<img>r/3.jpg</img><ref>长颈鹿的耳朵</ref>", False),
            ("<box>(176,106),(232,160)</box><box>(176,106),(232,160)</box>" + EOS, True),
        ],
    ),
    (
        Example("grounded_caption", "ref-zh", "4", lang="zh", image="r/4.jpg", text="黄色的越野滑雪手套", regions=(BOX,)),
        [("<img>r/4.jpg</img><ref>这</ref><box>(176,106),(232,160)</box>是", False), ("黄色的越野滑雪手套" + EOS, True)],
    ),
    (
        Example("ocr", "synthdog-zh", "1", lang="zh", image="s/1.jpg", lines=(("由它管理", QUAD), ("第二行", BOX))),
        [
            ("<img>s/1.jpg</img>OCR with grounding:", False),
            (
                "<ref>由它管理</ref><quad>(568,121),(625,131),(624,182),(567,172)</quad>"
                "<ref>第二行</ref><box>(176,106),(232,160)</box>" + EOS,
                True,
            ),
        ],
    ),
    (Example("text", "wiki-zh", "8", lang="zh", text="今天天气很好。"), [("今天天气很好。" + EOS, True)]),
]


@pytest.mark.parametrize("example, segments", ZH, ids=[e.task for e, _ in ZH])
def test_chinese(example, segments):
    assert render(example) == segments


def test_english_ocr_with_box_lines_and_pure_text():
    ex = Example("ocr", "pdf", "p1", image="pdf/p1.png", lines=(("It is managed", QUAD), ("by the city.", BOX)))
    assert render(ex) == [
        ("<img>pdf/p1.png</img>OCR with grounding:", False),
        (
            "<ref>It is managed</ref><quad>(568,121),(625,131),(624,182),(567,172)</quad>"
            "<ref>by the city.</ref><box>(176,106),(232,160)</box>" + EOS,
            True,
        ),
    ]
    doc = "First line.\nSecond line, with {braces}."
    assert render(Example("text", "books", "b1", text=doc)) == [(doc + EOS, True)]


def test_image_defaults_to_the_key_and_braces_are_text():
    ex = Example("caption", "laion-en", "000123", text="a {b} c")
    assert render(ex) == [("<img>000123</img>Generate the caption in English:", False), (" a {b} c" + EOS, True)]


def test_grounding_span_at_the_start_and_end():
    ex = Example("grounding", "grit", "1", text="bees", spans=(Span(0, 4, (BOX,)),))
    assert render(ex)[1] == (" <ref>bees</ref><box>(176,106),(232,160)</box>" + EOS, True)


GOOD = Example("grounding", "grit", "1", text="a bee", spans=(Span(2, 5, (BOX,)),))


@pytest.mark.parametrize(
    "change, reason, detail",
    [
        ({"task": "dance"}, "task_unknown", "'dance'"),
        ({"lang": "fr"}, "lang_unknown", "'fr'"),
        ({"text": ""}, "field_empty", "grounding needs text"),
        ({"spans": ()}, "field_empty", "grounding needs spans"),
        ({"task": "vqa"}, "field_empty", "vqa needs question"),
        ({"task": "ocr", "lines": (("", BOX),)}, "field_empty", "ocr needs the text of lines[0]"),
        ({"spans": (Span(2, 6, (BOX,)),)}, "span_invalid", "spans[0]: [2, 6) after 0 in a text of 5"),
        ({"spans": (Span(2, 2, (BOX,)),)}, "span_invalid", "spans[0]: [2, 2) after 0 in a text of 5"),
        (
            {"spans": (Span(2, 5, (BOX,)), Span(4, 5, (BOX,)))},
            "span_invalid",
            "spans[1]: [4, 5) after 5 in a text of 5",
        ),
        ({"spans": (Span(2, 5, ()),)}, "span_invalid", "spans[0] has no region"),
        ({"text": "a <ref>"}, "text_special_token", "text holds <ref>"),
        ({"text": "a b<|endoftext|>"}, "text_special_token", "text holds <|endoftext|>"),
        ({"image": "x</img>.jpg"}, "text_special_token", "image holds </img>"),
        (
            {"spans": (Span(2, 5, (Region(box=(10.5, 0, 20, 20)),)),)},
            "region_not_normalized",
            "normalize the example (formats.boxes.normalize_example) first",
        ),
        (
            {"spans": (Span(2, 5, (Region(box=(0, 0, 1000, 20)),)),)},
            "region_not_normalized",
            "normalize the example (formats.boxes.normalize_example) first",
        ),
    ],
)
def test_check(change, reason, detail):
    assert check(GOOD) is None
    bad = dataclasses.replace(GOOD, **change)
    assert check(bad) == Invalid("grit", "1", reason, detail)
    with pytest.raises(ValueError, match=reason):
        render(bad)


QWEN2_VL_TAGS = [("<img>", "<|vision_start|>"), ("</img>", "<|vision_end|>"), ("<ref>", "<|object_ref_start|>"),
                 ("</ref>", "<|object_ref_end|>"), ("<box>", "<|box_start|>"), ("</box>", "<|box_end|>"),
                 ("<quad>", "<|quad_start|>"), ("</quad>", "<|quad_end|>")]


def _in_qwen2_vl(text: str) -> str:
    for old, new in QWEN2_VL_TAGS:
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("pixels, size, prompt, target", TABLE, ids=[f"{t[0].task}-{t[0].source}" for t in TABLE])
def test_spec_table_in_qwen2_vl(pixels, size, prompt, target):
    """The same prompts and targets, each tag the Qwen2-VL one; the coordinates do not move."""
    example = normalize_example(pixels, *size)
    assert render(example, QWEN2_VL) == [(_in_qwen2_vl(prompt), False), (_in_qwen2_vl(target) + EOS, True)]


def test_qwen2_vl_exact_strings():
    example = Example("referring", "refcoco", "1", image="a.jpg", text="the eyes", regions=(Region(box=(176, 106, 232, 160)),))
    assert render(example, QWEN2_VL) == [
        ("<|vision_start|>a.jpg<|vision_end|><|object_ref_start|>the eyes<|object_ref_end|>", False),
        ("<|box_start|>(176,106),(232,160)<|box_end|><|endoftext|>", True),
    ]
    ocr = Example("ocr", "pdf", "2", image="p.png", lines=(("Total", Region(quad=((1, 2), (3, 4), (5, 6), (7, 8)))),))
    assert render(ocr, QWEN2_VL)[1] == ("<|object_ref_start|>Total<|object_ref_end|><|quad_start|>(1,2),(3,4),(5,6),(7,8)<|quad_end|><|endoftext|>", True)


@pytest.mark.parametrize("token", ["<|vision_start|>", "<|image_pad|>", "<|box_start|>", "<|object_ref_end|>", "<ref>", "<imgpad>"])
def test_either_dialects_tokens_in_text_are_rejected(token):
    example = Example("caption", "cc3m", "1", image="a.jpg", text=f"a {token} b")
    assert check(example) == Invalid("cc3m", "1", "text_special_token", f"text holds {token}")
