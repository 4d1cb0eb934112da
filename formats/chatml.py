"""Stage-3 conversations in ChatML (Qwen-VL's finetune.py and its README; docs/recipe.md).

The input is one record of the public fine-tuning JSON list, images inline in the user's text:

    {"id": "identity_1", "conversations": [
        {"from": "user", "value": "<img>dogs/1.jpg</img>What breed is this?"},
        {"from": "assistant", "value": "A Border Collie."}]}

`render(record, source)` answers a `Chat`: the segments (text, supervised) and the image paths in order:

    <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
    <|im_start|>user\nPicture 1: <img>dogs/1.jpg</img>\nWhat breed is this?<|im_end|>\n
    <|im_start|>assistant\nA Border Collie.<|im_end|>\n

Supervised, as finetune.py masks it: the assistant's content, and <|im_start|>, <|im_end|> and the
newline after it in every turn (system and user too); the role words with their newline, the system
message and the user's content are not. Adjacent segments with the same flag are joined, so the
segments alternate. Nothing follows the last turn (finetune.py pads with <|endoftext|>, unsupervised).

Images: each `<img>PATH</img>` in a user turn becomes `Picture N: <img>PATH</img>\n`, N counting from 1
across the whole conversation (a path shown again is a new picture). A `Picture K: ` already written
before the tag (with or without its space), and one newline already after it, are replaced, not
doubled, so the README's own form ("Picture 1: <img>..</img>\n...") renders the same as bare tags.

Roles: "user" (or "human"), "assistant" (or "gpt"), and "system" as the first turn only, whose value
replaces the default system message "You are a helpful assistant.".

What is rejected (an Invalid; finetune.py would drop a leading assistant turn silently, we do not):
- `chat_no_conversations`: the record is not an object, or has no non-empty "conversations" list, or
  only a system turn;
- `chat_turn_malformed`: a turn that is not an object;
- `chat_unknown_role`: "from" is none of the roles above;
- `chat_value_not_string`: "value" missing or not a string;
- `chat_empty_value`: a user or assistant value that is empty or only whitespace;
- `chat_turn_order`: the turns after the system turn do not alternate user, assistant, user, ...
  starting with user and ending with assistant (a system turn after the first counts here too);
- `chat_special_token`: a value spelling <|endoftext|>, <|im_start|>, <|im_end|>, <|extra_N|> or
  <imgpad>, which would break the turn structure;
- `chat_bad_image_tag`: an <img> without its </img> (or the reverse), an empty path, or a path with
  <, > or a newline;
- `chat_image_not_in_user`: an image in a system or assistant turn (it would be supervised text).
<ref>, <box> and <quad> are ordinary content here (grounding conversations).
"""

import re
from dataclasses import dataclass

from formats.example import Invalid
from formats.reasons import CHAT_BAD_IMAGE_TAG, CHAT_EMPTY_VALUE, CHAT_IMAGE_NOT_IN_USER, CHAT_NO_CONVERSATIONS, CHAT_SPECIAL_TOKEN, CHAT_TURN_MALFORMED, CHAT_TURN_ORDER, CHAT_UNKNOWN_ROLE, CHAT_VALUE_NOT_STRING
from formats.templates import Segment

DEFAULT_SYSTEM = "You are a helpful assistant."
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


_CONTROL_TOKENS = re.compile(r"<\|(?:endoftext|im_start|im_end|extra_\d+)\|>|<imgpad>")
_IMAGE = re.compile(r"(?:Picture \d+: ?)?<img>([^<>\n]+)</img>\n?")


@dataclass(frozen=True)
class Chat:
    """One conversation rendered: segments alternate unsupervised and supervised text."""

    key: str
    segments: list[Segment]
    images: list[str]  # the image paths in the order of their Picture numbers

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)


def _add(segments: list[Segment], text: str, supervised: bool) -> None:
    if segments and segments[-1][1] == supervised:
        segments[-1] = (segments[-1][0] + text, supervised)
    else:
        segments.append((text, supervised))


def _add_turn(segments: list[Segment], role: str, content: str) -> None:
    _add(segments, "<|im_start|>", True)
    if role == "assistant":
        _add(segments, "assistant\n", False)
        _add(segments, content + "<|im_end|>\n", True)
    else:
        _add(segments, f"{role}\n{content}", False)
        _add(segments, "<|im_end|>\n", True)


def render(record, source: str, fallback_key: str = "", system: str = DEFAULT_SYSTEM) -> Chat | Invalid:
    """One fine-tuning record as a Chat, or an Invalid naming its first problem (see the module
    docstring). The key is the record's "id", else `fallback_key` (e.g. FILE:INDEX)."""
    key = fallback_key
    if isinstance(record, dict) and record.get("id") is not None:
        key = str(record["id"])

    def invalid(reason, detail):
        return Invalid(source, key, reason, detail)

    if not isinstance(record, dict):
        return invalid(CHAT_NO_CONVERSATIONS, f"the record is a {type(record).__name__}, not an object")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return invalid(CHAT_NO_CONVERSATIONS, "no conversations" if turns is None else f"conversations is {turns!r}")

    body, images = [], []  # (role, content) after the system turn; image paths in order
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return invalid(CHAT_TURN_MALFORMED, f"turn {i} is a {type(turn).__name__}")
        role = ROLES.get(turn.get("from")) if isinstance(turn.get("from"), str) else None
        if role is None:
            return invalid(CHAT_UNKNOWN_ROLE, f"turn {i}: from {turn.get('from')!r}")
        value = turn.get("value")
        if not isinstance(value, str):
            shown = "missing" if "value" not in turn else f"a {type(value).__name__}"
            return invalid(CHAT_VALUE_NOT_STRING, f"turn {i}: value is {shown}")
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
        leftover = _IMAGE.sub("", value)
        if "<img>" in leftover or "</img>" in leftover:
            return invalid(CHAT_BAD_IMAGE_TAG, f"turn {i} ({role})")
        if leftover != value and role != "user":
            return invalid(CHAT_IMAGE_NOT_IN_USER, f"turn {i} ({role}) holds <img>")
        if role == "system":
            system = value
            continue

        def picture(match):
            images.append(match.group(1))
            return f"Picture {len(images)}: <img>{match.group(1)}</img>\n"

        body.append((role, _IMAGE.sub(picture, value)))

    if not body:
        return invalid(CHAT_NO_CONVERSATIONS, "only a system turn")
    if body[-1][0] != "assistant":
        return invalid(CHAT_TURN_ORDER, f"turn {len(turns) - 1} is user, expected the last to be assistant")

    segments: list[Segment] = []
    _add_turn(segments, "system", system)
    for role, content in body:
        _add_turn(segments, role, content)
    return Chat(key, segments, images)
