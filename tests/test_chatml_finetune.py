"""Stage-3 tokenization against the official Qwen-VL fine-tuning code (QwenLM/Qwen-VL `finetune.py`,
`preprocess`), token by token and mask by mask.

`official` below restates that function's steps: the system turn is <|im_start|> + tokenizer("system") +
"\\n" + tokenizer(system message) + <|im_end|> + "\\n"; each turn is tokenizer("<|im_start|>" + role) +
"\\n" + tokenizer(value) + <|im_end|> + "\\n", each piece tokenized on its own; the targets are
<|im_start|>, <|im_end|> and "\\n" of every turn plus the assistant's value. `tokenizer(x)` is our
tokenizer's encode (the same BPE, the same NFC, specials recognised in text); an image is its 258
positions in both (Qwen-VL's own tokenizer writes the path's bytes into the 256 slots, we write
<imgpad>: the model overwrites them either way)."""

import pytest

from formats.chatml import render
from formats.tokenizer import QwenTokenizer

IM_START, IM_END, NL = 151644, 151645, 198


@pytest.fixture(scope="module")
def tok():
    return QwenTokenizer()


def official(tok: QwenTokenizer, conversation: list[dict], system: str = "You are a helpful assistant.") -> tuple[list[int], list[int]]:
    """(input ids, loss mask) as finetune.py's preprocess makes them (its targets as a 0/1 mask)."""
    roles = {"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"}
    ids = [IM_START] + tok.encode("system") + [NL] + tok.encode(system) + [IM_END, NL]
    mask = [1] + [0] * (len(ids) - 3) + [1, 1]
    for turn in conversation:
        role = roles[turn["from"]]
        piece = tok.encode(role) + [NL] + tok.encode(turn["value"]) + [IM_END, NL]
        ids += piece
        if turn["from"] == "user":
            mask += [1] + [0] * (len(piece) - 3) + [1, 1]
        else:
            head = len(tok.encode(role))
            mask += [1] + [0] * head + [1] * (len(piece) - head - 3) + [1, 1]
    return ids, mask


def ours(tok: QwenTokenizer, conversation: list[dict], system: str | None = None) -> tuple[list[int], list[int]]:
    turns = ([{"from": "system", "value": system}] if system is not None else []) + conversation
    encoded = tok.encode_segments(render({"id": "x", "conversations": turns}, "sft").segments)
    return encoded.ids, encoded.mask


CONVERSATIONS = {
    "single image": [{"from": "user", "value": "Picture 1: <img>a.jpg</img>\nWhat is it?"}, {"from": "assistant", "value": "A dog."}],
    "multi-image": [{"from": "user", "value": "Picture 1: <img>a.jpg</img>\nPicture 2: <img>b.jpg</img>\nWhich is older?"},
                    {"from": "assistant", "value": "The first."}],
    "multi-turn": [{"from": "user", "value": "Picture 1: <img>a.jpg</img>\nHow many?"}, {"from": "assistant", "value": "Three."},
                   {"from": "user", "value": "And colours?"}, {"from": "assistant", "value": "Red, green and 中文 blue."}],
    "grounding": [{"from": "user", "value": "Picture 1: <img>a.jpg</img>\nWhere is the cat?"},
                  {"from": "assistant", "value": "<ref>The cat</ref><box>(12,340),(560,999)</box>"}],
    "value starting with a newline": [{"from": "user", "value": "\nHello"}, {"from": "assistant", "value": "\nHi\n"}],
    "value starting with a space and a newline": [{"from": "user", "value": " \nHello"}, {"from": "assistant", "value": "Hi"}],
}


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_equals_finetune_py(tok, name):
    assert ours(tok, CONVERSATIONS[name]) == official(tok, CONVERSATIONS[name])


def test_a_system_message_starting_with_a_newline_equals_finetune_py(tok):
    conversation = CONVERSATIONS["single image"]
    assert ours(tok, conversation, system="\nBe brief.") == official(tok, conversation, system="\nBe brief.")


def test_a_value_starting_with_a_newline_keeps_its_two_newline_tokens(tok):
    """finetune.py: "user" then "\\n" then tokenizer("\\nHello") = 198, 198, Hello; one string "user\\n\\nHello"
    would merge the two newlines into 271."""
    ids, _ = ours(tok, CONVERSATIONS["value starting with a newline"])
    user = ids.index(IM_START, 1 + ids.index(IM_END))
    assert ids[user : user + 5] == [IM_START, *tok.encode("user"), NL, NL, *tok.encode("Hello")]
    assert tok.encode("user\n\nHello")[1] == 271 and 271 not in ids
