import re

import pytest

from formats.tokenizer import (
    EMBEDDING_ROWS,
    IMAGE_SLOTS,
    IMG_END_ID,
    IMG_ID,
    IMGPAD_ID,
    SPECIAL_IDS,
    ImageTagError,
    QwenTokenizer,
    VocabularyError,
    default_vocabulary,
)
from tests.qwen2vl_reference import reference


@pytest.fixture(scope="module")
def tok():
    return QwenTokenizer()


@pytest.mark.parametrize(
    "token, expected",
    [
        ("<|endoftext|>", 151643),
        ("<|im_start|>", 151644),
        ("<|im_end|>", 151645),
        ("<|extra_0|>", 151646),
        ("<|extra_1|>", 151647),
        ("<|extra_204|>", 151850),
        ("<ref>", 151851),
        ("</ref>", 151852),
        ("<box>", 151853),
        ("</box>", 151854),
        ("<quad>", 151855),
        ("</quad>", 151856),
    ],
)
def test_special_token_ids(tok, token, expected):
    assert SPECIAL_IDS[token] == expected
    assert tok.encode(token) == [expected]
    assert tok.encode(f"a{token}b") == [64, expected, 65]  # recognized inside text
    assert tok.decode([expected]) == token


def test_image_token_ids(tok):
    assert (SPECIAL_IDS["<img>"], SPECIAL_IDS["</img>"], SPECIAL_IDS["<imgpad>"]) == (151857, 151858, 151859)
    assert (IMG_ID, IMG_END_ID, IMGPAD_ID) == (151857, 151858, 151859)
    assert [tok.encoding.decode_single_token_bytes(i) for i in (151857, 151858, 151859)] == [b"<img>", b"</img>", b"<imgpad>"]


def test_vocabulary_size(tok):
    assert len(SPECIAL_IDS) == 217
    assert tok.n_vocab == 151_643 + 217 == 151_860
    assert tok.encoding.max_token_value == 151_859 < EMBEDDING_ROWS == 151_936
    assert {tok.encoding.decode_single_token_bytes(i) for i in range(256)} == {bytes([b]) for b in range(256)}
    assert default_vocabulary().name == "qwen.tiktoken"


def test_digits_are_one_token_each(tok):
    ids = tok.encode("(123,456)")
    assert ids == [7, 16, 17, 18, 11, 19, 20, 21, 8]
    assert [tok.decode([i]) for i in ids] == ["(", "1", "2", "3", ",", "4", "5", "6", ")"]
    assert [tok.decode([i]) for i in tok.encode(" 2024")] == [" ", "2", "0", "2", "4"]


def test_box_and_ref_round_trip(tok):
    text = "<ref>the man</ref><box>(10,20),(300,400)</box> holds <quad>(1,2),(3,4),(5,6),(7,8)</quad>."
    ids = tok.encode(text)
    assert ids[0] == 151851 and ids.count(151852) == 1
    assert ids.count(151853) == ids.count(151854) == ids.count(151855) == ids.count(151856) == 1
    assert tok.decode(ids) == text


@pytest.mark.parametrize(
    "text",
    [
        "一只小狗在草地上奔跑，远处有一座雪山。",
        "图中的<ref>红色汽车</ref><box>(102,330),(571,999)</box>停在路边。",
        "Mixed 中文 and English, 2024年5月.\n\nNew paragraph\twith a tab.",
        "",
    ],
)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_chinese_takes_fewer_tokens_than_characters(tok):
    text = "一只小狗在草地上奔跑，远处有一座雪山。"
    assert len(tok.encode(text)) < len(text)


def test_ordinary_text_never_gives_special_ids(tok):
    for text in ["a < b > c", "<|extra_205|>", "<|endoftext", "<imgs>", "|im_start|", "<Ref>x</REF>"]:
        ids = tok.encode(text)
        assert max(ids) < 151643
        assert tok.decode(ids) == text


def test_text_is_nfc_normalized(tok):
    assert tok.encode("Cafe\u0301") == tok.encode("Caf\u00e9")


def test_image_becomes_258_unsupervised_tokens(tok):
    enc = tok.encode_segments([("Picture 1: <img>coco/000001.jpg</img>\nDescribe it.", False), ("A dog.<|endoftext|>", True)])
    start = len(tok.encode("Picture 1: "))
    assert enc.ids[start : start + 258] == [151857] + [151859] * 256 + [151858]
    assert enc.images == ["coco/000001.jpg"]
    prompt = len(enc.ids) - len(tok.encode("A dog.<|endoftext|>"))
    assert enc.mask == [0] * prompt + [1] * (len(enc.ids) - prompt)
    assert enc.ids[-1] == 151643
    assert tok.decode(enc.ids) == "Picture 1: <img>[256 slots]</img>\nDescribe it.A dog.<|endoftext|>"
    assert tok.decode(enc.ids, enc.images) == "Picture 1: <img>coco/000001.jpg</img>\nDescribe it.A dog.<|endoftext|>"


def test_image_in_a_supervised_segment_is_not_supervised(tok):
    enc = tok.encode_segments([("x<img>a.png</img>y<img>b.png</img>", True)])
    assert enc.ids == [87] + [IMG_ID] + [IMGPAD_ID] * IMAGE_SLOTS + [IMG_END_ID, 88] + [IMG_ID] + [IMGPAD_ID] * IMAGE_SLOTS + [IMG_END_ID]
    assert enc.mask == [1] + [0] * 258 + [1] + [0] * 258
    assert enc.images == ["a.png", "b.png"]
    assert tok.encode("x<img>a.png</img>y<img>b.png</img>") == enc.ids


def test_image_reference_is_kept_as_given(tok):
    enc = tok.encode_segments([("<img>dir/Cafe\u0301 <1>.jpg</img>", False)])
    assert enc.images == ["dir/Cafe\u0301 <1>.jpg"]


def test_segments_are_encoded_one_by_one(tok):
    enc = tok.encode_segments([("Question: how many?", False), (" Answer: 3", True)])
    assert enc.ids == tok.encode("Question: how many?") + tok.encode(" Answer: 3")


@pytest.mark.parametrize(
    "text",
    ["<img>a.jpg", "a.jpg</img>", "x<imgpad>y", "<img></img>", "<img>a<img>b</img>", "<img>a<|endoftext|></img>"],
)
def test_image_tags_out_of_pairs_are_refused(tok, text):
    with pytest.raises(ImageTagError):
        tok.encode(text)


def test_decode_shows_a_broken_image_span(tok):
    assert tok.decode([IMG_ID] + [IMGPAD_ID] * 3 + [IMG_END_ID, 87]) == "<img>[3 slots]</img>x"
    assert tok.decode([87] + [IMGPAD_ID] * 2, images=["a.png"]) == "x[2 slots]"


def test_missing_vocabulary(tmp_path):
    with pytest.raises(VocabularyError, match="cannot read the vocabulary"):
        QwenTokenizer(tmp_path / "nope.tiktoken")


def test_bad_vocabulary_lines(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(b"IQ== 0\nnot base64!! x\n")
    with pytest.raises(VocabularyError, match=r"bad.tiktoken:2: not a 'base64-token rank' line"):
        QwenTokenizer(path)


def test_wrong_vocabulary_size(tmp_path):
    path = tmp_path / "small.tiktoken"
    path.write_bytes(b"IQ== 0\nIg== 1\n")
    with pytest.raises(VocabularyError, match="2 tokens, not Qwen's 151,643 distinct ranks"):
        QwenTokenizer(path)


# Qwen2-VL: the same ranks, its own specials, images of any pad count.


@pytest.fixture(scope="module")
def tok2():
    return QwenTokenizer(dialect="qwen2-vl")


def test_qwen2_vl_special_ids(tok2):
    assert tok2.n_vocab == 151_657
    assert tok2.encode("<|object_ref_start|>a<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>") == [
        151646, 64, 151647, 151648, 7, 16, 11, 17, 23547, 18, 11, 19, 8, 151649]
    assert tok2.encode("<ref>a</ref>") == tok2.encoding.encode_ordinary("<ref>a</ref>")  # Qwen-VL's tags are text here


def test_qwen2_vl_image_and_video_spans(tok2):
    enc = tok2.encode_segments([("<|vision_start|>a.jpg<|vision_end|>Hi<|vision_start|>v.mp4<|vision_end|>", False), ("Yes", True)],
                               vision=[(4, False), (2, True)])
    assert enc.ids == [151652] + [151655] * 4 + [151653] + tok2.encode("Hi") + [151652, 151656, 151656, 151653] + tok2.encode("Yes")
    assert enc.mask == [0] * (len(enc.ids) - 1) + [1]
    assert enc.images == ["a.jpg", "v.mp4"]
    assert tok2.decode(enc.ids) == "<|vision_start|>[4 slots]<|vision_end|>Hi<|vision_start|>[2 video slots]<|vision_end|>Yes"
    assert tok2.decode(enc.ids, enc.images) == "<|vision_start|>a.jpg<|vision_end|>Hi<|vision_start|>v.mp4<|vision_end|>Yes"


@pytest.mark.parametrize(
    "text, vision, message",
    [
        ("<|vision_start|>a.jpg<|vision_end|>", None, "qwen2-vl images vary in size: give each span's (slots, video)"),
        ("<|vision_start|>a.jpg<|vision_end|>", [], "more image spans than the 0 sizes given"),
        ("<|vision_start|>a.jpg<|vision_end|>", [(1, False), (1, False)], "1 image spans but 2 sizes given"),
        ("x<|image_pad|>", [], "<|image_pad|> outside an <|vision_start|>REF<|vision_end|> pair"),
        ("<|vision_start|>a", [], "<|vision_start|> outside an <|vision_start|>REF<|vision_end|> pair"),
        ("<|vision_start|><|vision_end|>", [(1, False)], "image reference '': empty, or holds a special token"),
    ],
)
def test_qwen2_vl_bad_spans(tok2, text, vision, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        tok2.encode(text, vision)


def test_qwen2_vl_matches_transformers_qwen2_tokenizer(tok2):
    """transformers' Qwen2Tokenizer (its own pre-tokenizer and BPE) on the same texts, images spelt out as pads."""
    texts = [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{img}What is 12345 in 中文?<|im_end|>\n",
        "<|object_ref_start|>the eyes on a giraffe<|object_ref_end|><|box_start|>(176,106),(232,160)<|box_end|> it's   fine\n\n",
        "{img}OCR with grounding:<|object_ref_start|>Total: $1,024.50<|object_ref_end|><|quad_start|>(1,2),(3,4),(5,6),(7,8)<|quad_end|>",
        "Ünïcödé ｆｕｌｌ width 🙂 and tabs\tand\r\nnewlines<|endoftext|>",
    ]
    expected = reference("tokenize", [t.replace("{img}", "<|vision_start|>" + "<|image_pad|>" * 3 + "<|vision_end|>") for t in texts])
    for text, ids in zip(texts, expected):
        vision = [(3, False)] * text.count("{img}")
        assert tok2.encode(text.replace("{img}", "<|vision_start|>p.jpg<|vision_end|>"), vision) == ids
