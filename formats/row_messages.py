"""Our rows as conversations in the messages layout other trainers read: LLaMA-Factory's sharegpt format
with role/content tags (its data/README.md, "Sharegpt Format", multimodal: "messages" and "images") and
ms-swift's standard format (its docs, "Custom Dataset": "messages" and "images"). Each image of a turn
is the placeholder `<image>`, in the order of the "images" list:

    {"messages": [{"role": "user", "content": "<image>Generate the caption in English:"},
                  {"role": "assistant", "content": " A bee on a flower."}], "images": [b"..."]}

Where the turns come from:
- a curated row (stage 1): user `<image>` and the caption prompt of its language (formats/templates.py,
  the one stage 2 gives curated captions), assistant the caption;
- a stage-2 sample: user the prompt (the unsupervised part), assistant the target (the supervised part)
  without its `<|endoftext|>`, which the trainer's template writes itself. The boundary comes from the ids:
  the supervised ids (from the first 1 of loss_mask) are decoded, and the row's text must end with
  them; the rest of the text is the prompt. Whitespace is kept as written (a caption target starts with
  a space), so prompt + target + `<|endoftext|>` is the row's text again;
- an sft sample (task "chat"): its ChatML text (formats/chatml.py) split back into its system, user and
  assistant turns. Qwen-VL's `Picture N: <img>REF</img>\\n` is one image, as chatml.py writes it.

Image spans (`<img>REF</img>`, `<|vision_start|>REF<|vision_end|>`) become `<image>`; grounding markup
stays in the text, written in the dialect asked for (formats/dialects.py `translate_grounding`: the tags
change, the (x1,y1),(x2,y2) on the [0, 1000) grid do not). That is what LLaMA-Factory's and ms-swift's
Qwen2-VL templates train on: both pass the text to Qwen2-VL's tokenizer, which reads the tags as its
special tokens. ms-swift's "objects" field (ref and bbox, re-rendered per model) is not used: it has no
quads and no box inside a prompt (grounded captioning), and the text already holds what its qwen2-vl
template would render from it.

A row that cannot be a conversation is an Invalid (formats/reasons.py): no supervised part, no prompt
(pure text), a text whose end is not its supervised ids, a chat that is not ChatML, an image missing
or unreadable, or a video (`video_not_exported`: the row holds frames resampled and resized for the
model, while both layouts take video files).
"""

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from formats.dialects import Dialect, row_dialect, translate_grounding
from formats.example import CAPTION, Invalid
from formats.reasons import (
    CHAT_NOT_CHATML, IMAGE_MISSING, IMAGE_UNREADABLE, NO_PROMPT, NO_SUPERVISED_PART, SUPERVISED_TEXT_MISMATCH, UNSUPPORTED_LANGUAGE,
    VIDEO_NOT_EXPORTED,
)
from formats.templates import EOS, TEMPLATES

IMAGE = "<image>"  # both layouts' image placeholder
_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)<\|im_end\|>\n", re.S)
_EXTENSIONS = {"JPEG": "jpg", "TIFF": "tiff"}  # PIL's format name -> file extension, where not its lowercase


@dataclass(frozen=True)
class Conversation:
    """One row as messages (role, content with `<image>` per image) and its images' bytes, in order."""

    messages: list[dict[str, str]]
    images: list[bytes]


def image_extension(data: bytes) -> str | None:
    """The file extension of encoded image bytes, from their header (jpg, png, webp...); None if not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _EXTENSIONS.get(image.format, image.format.lower())
    except Exception:  # PIL raises OSError, SyntaxError, ValueError... on bytes that are not an image
        return None


def _span_re(dialect: Dialect, chat: bool) -> re.Pattern:
    """One image span as the row's text writes it (a Qwen-VL chat: `Picture N: <img>REF</img>\\n`)."""
    span = f"{re.escape(dialect.image)}[^\n]*?{re.escape(dialect.image_end)}"
    return re.compile(rf"Picture \d+: {span}\n" if chat and dialect.picture_prefix else span)


def chat_turns(text: str) -> list[dict[str, str]] | None:
    """The turns of a ChatML text, in order; None when the text is not ChatML turns end to end."""
    turns, at = [], 0
    for m in _TURN.finditer(text):
        if m.start() != at:
            return None
        turns.append({"role": m.group(1), "content": m.group(2)})
        at = m.end()
    return turns if turns and at == len(text) else None


def curated_conversation(row: dict) -> Conversation | Invalid:
    """A stage-1 curated row: `<image>` and its language's caption prompt, then the caption."""
    def invalid(reason, detail):
        return Invalid(row["source"], row["key"], reason, detail)

    if not row.get("image"):
        return invalid(IMAGE_MISSING, "the row has no image bytes")
    if row.get("lang") not in TEMPLATES:
        return invalid(UNSUPPORTED_LANGUAGE, f"no caption prompt for language {row.get('lang')!r}")
    prompt = TEMPLATES[row["lang"]][CAPTION][0]
    return Conversation([{"role": "user", "content": IMAGE + prompt}, {"role": "assistant", "content": row["caption"]}], [row["image"]])


def sample_conversation(row: dict, chat: bool, decode: Callable[[list[int]], str], dialect: Dialect | None = None) -> Conversation | Invalid:
    """A stage-2 sample row (an sft one with `chat`) as a conversation whose grounding is in `dialect`
    (default: the row's own); `decode` turns the row's ids into text (formats/tokenizer.py, its dialect)."""
    def invalid(reason, detail):
        return Invalid(row["source"], row["key"], reason, detail)

    own = row_dialect(row)
    if row.get("videos"):
        return invalid(VIDEO_NOT_EXPORTED, f"{len(row['videos'])} video(s): the row holds resampled frames, not the video file")
    mask, text = row["loss_mask"], row["text"]
    if 1 not in mask:
        return invalid(NO_SUPERVISED_PART, "the loss mask supervises no token")
    if chat:
        messages = chat_turns(text)
        if messages is None:
            return invalid(CHAT_NOT_CHATML, "the text is not <|im_start|>ROLE\\n...<|im_end|>\\n turns")
    else:
        first = mask.index(1)
        if first == 0:
            return invalid(NO_PROMPT, "supervised from the first token: nothing for the user turn")
        target = decode(row["input_ids"][first:])
        if not (target.endswith(EOS) and text.endswith(target) and len(target) < len(text)):
            return invalid(SUPERVISED_TEXT_MISMATCH, f"the supervised ids read {target[:60]!r}, not the end of the text")
        messages = [{"role": "user", "content": text[: -len(target)]}, {"role": "assistant", "content": target[: -len(EOS)]}]
    images = row.get("images") or []
    spans = _span_re(own, chat)
    found = sum(len(spans.findall(m["content"])) for m in messages)
    if found != len(images) or not all(images):
        return invalid(IMAGE_MISSING, f"{found} image spans, {sum(1 for b in images if b)} images with bytes")
    target_dialect = dialect or own
    for m in messages:
        m["content"] = translate_grounding(spans.sub(IMAGE, m["content"]), target_dialect)
    return Conversation(messages, list(images))


def check_images(conversation: Conversation, source: str, key: str) -> list[str] | Invalid:
    """Each image's file extension, or an Invalid for the first that is not an image."""
    extensions = []
    for i, data in enumerate(conversation.images):
        ext = image_extension(data)
        if ext is None:
            return Invalid(source, key, IMAGE_UNREADABLE, f"image {i}: the bytes are not an image PIL can read")
        extensions.append(ext)
    return extensions

