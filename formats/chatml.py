"""Stage-3 conversations in ChatML, in either dialect (Qwen-VL's finetune.py and its README; Qwen's
qwen-vl-finetune for Qwen2-VL; docs/recipe.md).

The input is one record in one of two public layouts. Ours, Qwen-VL's fine-tuning JSON, images inline
in the user's text (and videos as `<video>PATH</video>`, Qwen2-VL only):

    {"id": "identity_1", "conversations": [
        {"from": "user", "value": "<img>dogs/1.jpg</img>What breed is this?"},
        {"from": "assistant", "value": "A Border Collie."}]}

or the "messages" layout LLaMA-Factory (sharegpt with role/content tags) and ms-swift read, with an
`<image>` (`<video>`) placeholder in the text for each entry of "images" ("videos"), in order:

    {"messages": [{"role": "user", "content": "<image>What breed is this?"},
                  {"role": "assistant", "content": "A Border Collie."}], "images": ["dogs/1.jpg"]}

The placeholders become the tags above, then both layouts take one path. `render(record, source,
dialect=...)` answers a `Chat`: the segments (text, supervised), the media paths in order and which of
them are videos. Qwen-VL:

    <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
    <|im_start|>user\nPicture 1: <img>dogs/1.jpg</img>\nWhat breed is this?<|im_end|>\n
    <|im_start|>assistant\nA Border Collie.<|im_end|>\n

Qwen2-VL, as its released chat template writes it (no picture numbers, the span inline):

    <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
    <|im_start|>user\n<|vision_start|>dogs/1.jpg<|vision_end|>What breed is this?<|im_end|>\n
    <|im_start|>assistant\nA Border Collie.<|im_end|>\n

Supervised: Qwen-VL, as finetune.py masks it: the assistant's content, and <|im_start|>, <|im_end|> and
the newline after it in every turn (system and user too); the role words with their newline, the system
message and the user's content are not. Qwen2-VL, as qwen-vl-finetune's data_qwen.py masks it: only the
assistant's content with its <|im_end|> and newline. Adjacent segments with the same flag are joined,
except where the tokenizer must not merge across: the tokenizer encodes segment by segment, so a turn's
content starts a segment of its own in Qwen-VL (finetune.py tokenizes the role line, the newline and
the value apart: a value that begins with a newline gives `\n`, `\n` (198, 198), not `\n\n` (271)),
while Qwen2-VL's chat template renders the whole turn as one string. Nothing follows the last turn (the
trainer pads with <|endoftext|>, unsupervised).

Images, Qwen-VL: each `<img>PATH</img>` in a user turn becomes `Picture N: <img>PATH</img>\n`, N counting
from 1 across the whole conversation (a path shown again is a new picture). A `Picture K: ` already
written before the tag (with or without its space), and one newline already after it, are replaced, not
doubled, so the README's own form ("Picture 1: <img>..</img>\n...") renders the same as bare tags.
Qwen2-VL: the same match becomes `<|vision_start|>PATH<|vision_end|>`.

Grounding markup (<ref>, <box>, <quad> and their Qwen2-VL forms) is ordinary content, written in the
dialect rendered: a conversation in Qwen-VL's tags renders with Qwen2-VL's in the qwen2-vl dialect, and
the reverse.

Roles: "user" (or "human"), "assistant" (or "gpt"), and "system" as the first turn only, whose value
replaces the default system message "You are a helpful assistant.".

What is rejected (an Invalid; finetune.py would drop a leading assistant turn silently, we do not):
- `chat_no_conversations`: the record is not an object, or has neither a non-empty "conversations" nor
  "messages" list, or only a system turn;
- `chat_turn_malformed`: a turn that is not an object;
- `chat_unknown_role`: "from" ("role") is none of the roles above;
- `chat_value_not_string`: "value" ("content") missing or not a string;
- `chat_empty_value`: a user or assistant value that is empty or only whitespace;
- `chat_turn_order`: the turns after the system turn do not alternate user, assistant, user, ...
  starting with user and ending with assistant (a system turn after the first counts here too);
- `chat_special_token`: a value spelling a control or vision token of either dialect (<|endoftext|>,
  <|im_start|>, <|im_end|>, <|extra_N|>, <imgpad>, <|vision_start|>, <|image_pad|>, ...), which would
  break the turn or span structure;
- `chat_bad_image_tag`: an <img> (<video>) without its end tag (or the reverse), an empty path, or a
  path with <, > or a newline; in the messages layout, "images" ("videos") not a list of such paths;
- `chat_media_count`: the messages layout's `<image>` (`<video>`) placeholders and its "images"
  ("videos") differ in number;
- `chat_image_not_in_user`: an image or video in a system or assistant turn (it would be supervised);
- `video_unsupported`: a video in the Qwen-VL dialect, which has no video tokens.
"""

import re
from dataclasses import dataclass

from formats.dialects import DIALECTS, QWEN_VL, Dialect, translate_grounding
from formats.example import Invalid
from formats.reasons import (
    CHAT_BAD_IMAGE_TAG, CHAT_EMPTY_VALUE, CHAT_IMAGE_NOT_IN_USER, CHAT_MEDIA_COUNT, CHAT_NO_CONVERSATIONS, CHAT_SPECIAL_TOKEN,
    CHAT_TURN_MALFORMED, CHAT_TURN_ORDER, CHAT_UNKNOWN_ROLE, CHAT_VALUE_NOT_STRING, VIDEO_UNSUPPORTED,
)
from formats.templates import Segment

DEFAULT_SYSTEM = "You are a helpful assistant."
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}

_GROUNDING = {getattr(d, f) for d in DIALECTS.values() for f in ("ref", "ref_end", "box", "box_end", "quad", "quad_end")}
_CONTROL_TOKENS = re.compile("|".join(re.escape(t) for t in sorted(
    {t for d in DIALECTS.values() for t in d.specials} - _GROUNDING - {QWEN_VL.image, QWEN_VL.image_end}, key=len, reverse=True)))
_MEDIA = re.compile(r"(?:Picture \d+: ?)?<(img|video)>([^<>\n]+)</\1>\n?")
_LAYOUTS = (("conversations", "from", "value"), ("messages", "role", "content"))  # (list, role key, text key)
_PLACEHOLDERS = (("<image>", "images", "img"), ("<video>", "videos", "video"))  # placeholder, list, tag


@dataclass(frozen=True)
class Chat:
    """One conversation rendered: segments alternate unsupervised and supervised text."""

    key: str
    segments: list[Segment]
    images: list[str]  # the image (and video) paths in the order of their spans
    video_indices: tuple[int, ...] = ()  # which of them are videos

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)


def _add(segments: list[Segment], text: str, supervised: bool, join: bool = True) -> None:
    if join and segments and segments[-1][1] == supervised:
        segments[-1] = (segments[-1][0] + text, supervised)
    else:
        segments.append((text, supervised))


def _add_turn(segments: list[Segment], role: str, content: str, dialect: Dialect) -> None:
    markers, join = dialect.supervise_turn_markers, not dialect.chat_content_apart
    _add(segments, "<|im_start|>", markers)
    _add(segments, f"{role}\n", False)
    if role == "assistant":
        _add(segments, content + "<|im_end|>\n", True, join)
    else:
        _add(segments, content, False, join)
        _add(segments, "<|im_end|>\n", markers)


def _placeholders_as_tags(record: dict, turns: list) -> list | str:
    """The messages layout's turns with each `<image>` (`<video>`) replaced by the tag of its path, in
    order, or the reason and detail of why they cannot be."""
    out = [dict(turn) if isinstance(turn, dict) else turn for turn in turns]
    for placeholder, field, tag in _PLACEHOLDERS:
        paths = record.get(field, [])
        if not isinstance(paths, list) or not all(isinstance(p, str) and p and not re.search(r"[<>\n]", p) for p in paths):
            return CHAT_BAD_IMAGE_TAG, f"{field} is not a list of paths: {paths!r}"
        texts = [t.get("content") for t in out if isinstance(t, dict) and isinstance(t.get("content"), str)]
        found = sum(text.count(placeholder) for text in texts)
        if found != len(paths):
            return CHAT_MEDIA_COUNT, f"{found} {placeholder} placeholders but {len(paths)} {field}"
        remaining = iter(paths)
        for turn in out:
            if isinstance(turn, dict) and isinstance(turn.get("content"), str):
                pieces = turn["content"].split(placeholder)
                turn["content"] = pieces[0] + "".join(f"<{tag}>{next(remaining)}</{tag}>{piece}" for piece in pieces[1:])
    return out


def render(record, source: str, fallback_key: str = "", system: str = DEFAULT_SYSTEM, dialect: Dialect = QWEN_VL) -> Chat | Invalid:
    """One fine-tuning record (either layout) as a Chat in `dialect`, or an Invalid naming its first
    problem (see the module docstring). The key is the record's "id", else `fallback_key` (e.g. FILE:INDEX)."""
    key = fallback_key
    if isinstance(record, dict) and record.get("id") is not None:
        key = str(record["id"])

    def invalid(reason, detail):
        return Invalid(source, key, reason, detail)

    if not isinstance(record, dict):
        return invalid(CHAT_NO_CONVERSATIONS, f"the record is a {type(record).__name__}, not an object")
    field, role_key, text_key = next((layout for layout in _LAYOUTS if layout[0] in record), _LAYOUTS[0])
    turns = record.get(field)
    if not isinstance(turns, list) or not turns:
        return invalid(CHAT_NO_CONVERSATIONS, f"no {field}" if turns is None else f"{field} is {turns!r}")
    if field == "messages":
        turns = _placeholders_as_tags(record, turns)
        if isinstance(turns, tuple):
            return invalid(*turns)

    body, media, videos = [], [], []  # (role, content) after the system turn; media paths; video indices
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return invalid(CHAT_TURN_MALFORMED, f"turn {i} is a {type(turn).__name__}")
        role = ROLES.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            return invalid(CHAT_UNKNOWN_ROLE, f"turn {i}: {role_key} {turn.get(role_key)!r}")
        value = turn.get(text_key)
        if not isinstance(value, str):
            shown = "missing" if text_key not in turn else f"a {type(value).__name__}"
            return invalid(CHAT_VALUE_NOT_STRING, f"turn {i}: {text_key} is {shown}")
        if role != "system" and not value.strip():
            return invalid(CHAT_EMPTY_VALUE, f"turn {i} ({role})")
        if role == "system":
            if i != 0:
                return invalid(CHAT_TURN_ORDER, f"turn {i} is system, allowed only as turn 0")
        else:
            expected = "user" if len(body) % 2 == 0 else "assistant"
            if role != expected:
                return invalid(CHAT_TURN_ORDER, f"turn {i} is {role}, expected {expected}")
        found = _CONTROL_TOKENS.search(value)
        if found:
            return invalid(CHAT_SPECIAL_TOKEN, f"turn {i} ({role}) holds {found.group()}")
        tags = _MEDIA.findall(value)
        leftover = _MEDIA.sub("", value)
        if re.search(r"</?(?:img|video)>", leftover):
            return invalid(CHAT_BAD_IMAGE_TAG, f"turn {i} ({role})")
        if tags and role != "user":
            return invalid(CHAT_IMAGE_NOT_IN_USER, f"turn {i} ({role}) holds <{tags[0][0]}>")
        if any(tag == "video" for tag, _ in tags) and dialect.video_pad is None:
            return invalid(VIDEO_UNSUPPORTED, f"turn {i} ({role}): {dialect.name} has no video tokens")
        value = translate_grounding(value, dialect)
        if role == "system":
            system = value
            continue

        def span(match):
            if match.group(1) == "video":
                videos.append(len(media))
            media.append(match.group(2))
            prefix = f"Picture {len(media)}: " if dialect.picture_prefix else ""
            newline = "\n" if dialect.picture_prefix else ""
            return f"{prefix}{dialect.image}{match.group(2)}{dialect.image_end}{newline}"

        body.append((role, _MEDIA.sub(span, value)))

    if not body:
        return invalid(CHAT_NO_CONVERSATIONS, "only a system turn")
    if body[-1][0] != "assistant":
        return invalid(CHAT_TURN_ORDER, f"turn {len(turns) - 1} is user, expected the last to be assistant")

    segments: list[Segment] = []
    _add_turn(segments, "system", system, dialect)
    for role, content in body:
        _add_turn(segments, role, content, dialect)
    return Chat(key, segments, media, tuple(videos))
