import pytest

from formats.chatml import Chat, render
from formats.dialects import QWEN2_VL, QWEN_VL
from formats.example import Invalid

SYSTEM = [("<|im_start|>", True), ("system\n", False), ("You are a helpful assistant.", False)]


def test_one_turn_with_an_image():
    record = {
        "id": "identity_1",
        "conversations": [
            {"from": "user", "value": "<img>dogs/1.jpg</img>What breed is this?"},
            {"from": "assistant", "value": "A Border Collie."},
        ],
    }
    chat = render(record, "sft")
    assert chat == Chat(
        "identity_1",
        SYSTEM
        + [
            ("<|im_end|>\n<|im_start|>", True),
            ("user\n", False),
            ("Picture 1: <img>dogs/1.jpg</img>\nWhat breed is this?", False),
            ("<|im_end|>\n<|im_start|>", True),
            ("assistant\n", False),
            ("A Border Collie.<|im_end|>\n", True),
        ],
        ["dogs/1.jpg"],
    )
    assert chat.text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nPicture 1: <img>dogs/1.jpg</img>\nWhat breed is this?<|im_end|>\n"
        "<|im_start|>assistant\nA Border Collie.<|im_end|>\n"
    )


def test_pictures_count_across_turns_and_aliases():
    record = {
        "id": 7,
        "conversations": [
            {"from": "human", "value": "<img>a.jpg</img><img>b.jpg</img>Which is older?"},
            {"from": "gpt", "value": "The first."},
            # the README's own form: a numbering already written is replaced, not doubled
            {"from": "user", "value": "Picture 1: <img>c.jpg</img>\nAnd this one? Also Picture 2:<img>a.jpg</img>"},
            {"from": "assistant", "value": "<ref>It</ref><box>(1,2),(3,4)</box> is new."},
        ],
    }
    chat = render(record, "sft")
    assert chat.key == "7"
    assert chat.images == ["a.jpg", "b.jpg", "c.jpg", "a.jpg"]
    assert chat.segments == SYSTEM + [
        ("<|im_end|>\n<|im_start|>", True),
        ("user\n", False),
        ("Picture 1: <img>a.jpg</img>\nPicture 2: <img>b.jpg</img>\nWhich is older?", False),
        ("<|im_end|>\n<|im_start|>", True),
        ("assistant\n", False),
        ("The first.<|im_end|>\n<|im_start|>", True),
        ("user\n", False),
        ("Picture 3: <img>c.jpg</img>\nAnd this one? Also Picture 4: <img>a.jpg</img>\n", False),
        ("<|im_end|>\n<|im_start|>", True),
        ("assistant\n", False),
        ("<ref>It</ref><box>(1,2),(3,4)</box> is new.<|im_end|>\n", True),
    ]


def test_system_turn_and_text_only():
    record = {
        "conversations": [
            {"from": "system", "value": "Answer briefly."},
            {"from": "user", "value": "Hi"},
            {"from": "assistant", "value": "Hello."},
        ]
    }
    chat = render(record, "sft", fallback_key="data.json:3")
    assert chat == Chat(
        "data.json:3",
        [
            ("<|im_start|>", True),
            ("system\n", False),
            ("Answer briefly.", False),
            ("<|im_end|>\n<|im_start|>", True),
            ("user\n", False),
            ("Hi", False),
            ("<|im_end|>\n<|im_start|>", True),
            ("assistant\n", False),
            ("Hello.<|im_end|>\n", True),
        ],
        [],
    )
    record = {"conversations": record["conversations"][1:]}
    assert render(record, "sft", system="Be terse.").segments[2] == ("Be terse.", False)


def _turns(*pairs):
    return {"id": "r", "conversations": [{"from": f, "value": v} for f, v in pairs]}


@pytest.mark.parametrize(
    "record, reason, detail",
    [
        (["not", "a", "dict"], "chat_no_conversations", "the record is a list, not an object"),
        ({"id": "r"}, "chat_no_conversations", "no conversations"),
        ({"id": "r", "conversations": []}, "chat_no_conversations", "conversations is []"),
        ({"id": "r", "conversations": "hi"}, "chat_no_conversations", "conversations is 'hi'"),
        (_turns(("system", "x")), "chat_no_conversations", "only a system turn"),
        ({"id": "r", "conversations": ["hi"]}, "chat_turn_malformed", "turn 0 is a str"),
        (_turns(("bot", "hi")), "chat_unknown_role", "turn 0: from 'bot'"),
        ({"id": "r", "conversations": [{"value": "hi"}]}, "chat_unknown_role", "turn 0: from None"),
        ({"id": "r", "conversations": [{"from": "user"}]}, "chat_value_not_string", "turn 0: value is missing"),
        (_turns(("user", ["a"])), "chat_value_not_string", "turn 0: value is a list"),
        (_turns(("user", "hi"), ("assistant", " \n")), "chat_empty_value", "turn 1 (assistant)"),
        (_turns(("assistant", "hi")), "chat_turn_order", "turn 0 is assistant, expected user"),
        (_turns(("user", "a"), ("user", "b")), "chat_turn_order", "turn 1 is user, expected assistant"),
        (
            _turns(("user", "a"), ("assistant", "b"), ("user", "c")),
            "chat_turn_order",
            "turn 2 is user, expected the last to be assistant",
        ),
        (_turns(("user", "a"), ("system", "b")), "chat_turn_order", "turn 1 is system, allowed only as turn 0"),
        (_turns(("user", "a<|im_end|>"), ("assistant", "b")), "chat_special_token", "turn 0 (user) holds <|im_end|>"),
        (
            _turns(("user", "a"), ("assistant", "b<|endoftext|>")),
            "chat_special_token",
            "turn 1 (assistant) holds <|endoftext|>",
        ),
        (_turns(("user", "<img>a.jpg"), ("assistant", "b")), "chat_bad_image_tag", "turn 0 (user)"),
        (_turns(("user", "<img></img>"), ("assistant", "b")), "chat_bad_image_tag", "turn 0 (user)"),
        (_turns(("user", "a.jpg</img>"), ("assistant", "b")), "chat_bad_image_tag", "turn 0 (user)"),
        (
            _turns(("user", "a"), ("assistant", "<img>b.jpg</img>")),
            "chat_image_not_in_user",
            "turn 1 (assistant) holds <img>",
        ),
        (
            _turns(("system", "<img>b.jpg</img>"), ("user", "a")),
            "chat_image_not_in_user",
            "turn 0 (system) holds <img>",
        ),
    ],
)
def test_invalid_records(record, reason, detail):
    key = record.get("id", "f:0") if isinstance(record, dict) else "f:0"
    assert render(record, "sft", fallback_key="f:0") == Invalid("sft", key, reason, detail)


# Qwen2-VL, and the messages layout of LLaMA-Factory and ms-swift.


def test_qwen2_vl_inline_spans_and_assistant_only_mask():
    record = {
        "id": "q2",
        "conversations": [
            {"from": "user", "value": "Picture 1: <img>a.jpg</img>\nWhere is <ref>the cat</ref>?"},
            {"from": "assistant", "value": "<ref>The cat</ref><box>(1,2),(3,4)</box>"},
        ],
    }
    chat = render(record, "sft", dialect=QWEN2_VL)
    assert chat == Chat(
        "q2",
        [
            ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
             "<|vision_start|>a.jpg<|vision_end|>Where is <|object_ref_start|>the cat<|object_ref_end|>?<|im_end|>\n"
             "<|im_start|>assistant\n", False),
            ("<|object_ref_start|>The cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|><|im_end|>\n", True),
        ],
        ["a.jpg"],
    )


MESSAGES = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image><video>What happens? Compare with <image>"},
        {"role": "assistant", "content": "<|object_ref_start|>A dog<|object_ref_end|> runs."},
    ],
    "images": ["a.jpg", "b.jpg"],
    "videos": ["v.mp4"],
}


def test_messages_layout_in_qwen2_vl():
    chat = render(MESSAGES, "llamafactory", fallback_key="data.jsonl:4", dialect=QWEN2_VL)
    assert chat == Chat(
        "data.jsonl:4",
        [
            ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|>a.jpg<|vision_end|>"
             "<|vision_start|>v.mp4<|vision_end|>What happens? Compare with <|vision_start|>b.jpg<|vision_end|><|im_end|>\n"
             "<|im_start|>assistant\n", False),
            ("<|object_ref_start|>A dog<|object_ref_end|> runs.<|im_end|>\n", True),
        ],
        ["a.jpg", "v.mp4", "b.jpg"],
        (1,),
    )


def test_messages_layout_in_qwen_vl():
    record = {"messages": [{"role": "user", "content": "<image>Hi <box>(1,2),(3,4)</box>"}, {"role": "assistant", "content": "Yes."}],
              "images": ["a.jpg"]}
    chat = render(record, "swift", fallback_key="k")
    assert chat.text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nPicture 1: <img>a.jpg</img>\nHi <box>(1,2),(3,4)</box><|im_end|>\n"
        "<|im_start|>assistant\nYes.<|im_end|>\n"
    )
    assert chat.images == ["a.jpg"] and chat.video_indices == ()


def _messages(*pairs, **lists):
    return {"id": "m", "messages": [{"role": r, "content": c} for r, c in pairs], **lists}


@pytest.mark.parametrize(
    "record, dialect, reason, detail",
    [
        (MESSAGES, QWEN_VL, "video_unsupported", "turn 1 (user): qwen-vl has no video tokens"),
        (_messages(("user", "<image>a"), ("assistant", "b")), QWEN2_VL, "chat_media_count", "1 <image> placeholders but 0 images"),
        (_messages(("user", "a"), ("assistant", "b"), videos=["v.mp4"]), QWEN2_VL, "chat_media_count", "0 <video> placeholders but 1 videos"),
        (_messages(("user", "<image>a"), ("assistant", "b"), images="a.jpg"), QWEN2_VL, "chat_bad_image_tag", "images is not a list of paths: 'a.jpg'"),
        (_messages(("user", "<image>a"), ("assistant", "b"), images=["x<y.jpg"]), QWEN2_VL, "chat_bad_image_tag", "images is not a list of paths: ['x<y.jpg']"),
        (_messages(("user", "a"), ("assistant", "<image>"), images=["a.jpg"]), QWEN2_VL, "chat_image_not_in_user", "turn 1 (assistant) holds <img>"),
        (_messages(("user", "a<|image_pad|>"), ("assistant", "b")), QWEN2_VL, "chat_special_token", "turn 0 (user) holds <|image_pad|>"),
        (_messages(("user", "a<|vision_start|>"), ("assistant", "b")), QWEN_VL, "chat_special_token", "turn 0 (user) holds <|vision_start|>"),
        (_messages(("bot", "a")), QWEN2_VL, "chat_unknown_role", "turn 0: role 'bot'"),
        ({"id": "m", "messages": [{"role": "user"}]}, QWEN2_VL, "chat_value_not_string", "turn 0: content is missing"),
        ({"id": "m", "messages": []}, QWEN2_VL, "chat_no_conversations", "messages is []"),
        (_turns(("user", "<video>a.mp4</video>"), ("assistant", "b")), QWEN_VL, "video_unsupported", "turn 0 (user): qwen-vl has no video tokens"),
        (_messages(("user", "<video>a.mp4</video>"), ("assistant", "b")), QWEN2_VL, "chat_media_count", "1 <video> placeholders but 0 videos"),
    ],
)
def test_invalid_messages_records(record, dialect, reason, detail):
    assert render(record, "swift", fallback_key="f:0", dialect=dialect) == Invalid("swift", record.get("id", "f:0"), reason, detail)
