"""Stage-3 conversations built from single-turn examples, as the Qwen-VL paper built part of its SFT data
"via strategy concatenation" to teach localization and multi-image comprehension, mixed with pure-text
dialogue (Qwen-VL paper §3.3; the appendix's ChatML, `Picture N: <img>PATH</img>\\n` before each image).

Every function is plain and deterministic: a `seed` and its input decide the output, through a
`random.Random` of its own seeded with the seed, the mode and the smallest uid of the input (no global
random state), and the input is sorted by uid first, so the order it arrives in does not matter.

The input is normalized Examples (formats/boxes.normalize_example, so boxes are on the [0, 1000) grid)
of the tasks caption, vqa, grounding, referring and grounded_caption, `image` holding the path the
conversation shows. The output is our conversations layout, what `sft --input` reads (formats/chatml.py):

    {"id": "multi-turn-9c1f...", "conversations": [
        {"from": "user", "value": "Picture 1: <img>/data/coco/1.jpg</img>\\nWhat color is the ellipse?"},
        {"from": "assistant", "value": "green"}, ...],
     "parts": ["<uid>", ...]}

`parts` are the uids of the examples used, in turn order (formats/ids.sample_uid of task, source and
key: the uid stage 2 gives the same example), and the id is the mode and a digest of the parts, so a
conversation traces back to its examples. Boxes are in Qwen-VL's markup (`<ref>..</ref><box>..</box>`):
the record is dialect-neutral and `sft --dialect` writes its own tags. Each image is shown once, in the
first user turn.

One example as a question and answer (`turn`; Chinese examples, lang "zh", take the Chinese wording):

| task | question | answer |
|---|---|---|
| caption | `Describe the image briefly.` | the caption |
| grounding | `Describe the image briefly, with grounding.` | the caption, phrases as `<ref>..</ref><box>..</box>` |
| vqa | the question | the answer |
| referring | `Locate EXPRESSION in the image.` | `<ref>EXPRESSION</ref><box>..</box>` (each region) |
| grounded_caption | `Describe the region <box>..</box>.` | the description |
"""

import random

from formats.chatml import ROLES, render as render_chat
from formats.dialects import QWEN_VL, render_region
from formats.example import CAPTION, GROUNDED_CAPTION, GROUNDING, REFERRING, TEXT, VQA, Example, Invalid
from formats.ids import pair_uid, sample_uid
from formats.reasons import CHAT_TEXT_HAS_IMAGE
from formats.templates import tag_spans

MULTI_TURN, MULTI_IMAGE, TASK, TEXT_MODE = "multi-turn", "multi-image", "task", "text"
MODES = (MULTI_TURN, MULTI_IMAGE, TASK)  # what sft-build --mode chooses from; text is mixed in by --text
TASKS = (CAPTION, GROUNDING, VQA, REFERRING, GROUNDED_CAPTION)  # the examples it reads; task concatenation's turn order
TURN_TASKS = (VQA, REFERRING, GROUNDED_CAPTION)  # multi-turn concatenation's: one question, one short answer
MAX_TURNS = 4
MIN_PICTURES, MAX_PICTURES = 2, 4

QUESTIONS = {
    "en": {
        CAPTION: "Describe the image briefly.",
        GROUNDING: "Describe the image briefly, with grounding.",
        REFERRING: "Locate {text} in the image.",
        GROUNDED_CAPTION: "Describe the region {regions}.",
    },
    "zh": {
        CAPTION: "简要描述这张图片。",
        GROUNDING: "简要描述这张图片，并框出描述中的物体。",
        REFERRING: "框出图中的{text}。",
        GROUNDED_CAPTION: "描述区域{regions}。",
    },
}

# Multi-image questions: (question, answer) of a group of pictures, each known by its caption. {n} is a
# picture's number, {caption} its caption, {captions} every picture's caption in a numbered line.
WHICH, DESCRIBE, EACH = "which", "describe", "each"
PICTURE_QUESTIONS = {
    "en": {
        WHICH: ('Which picture matches the caption "{caption}"?', "Picture {n}."),
        DESCRIBE: ("Describe picture {n}.", "{caption}"),
        EACH: ("Describe each picture briefly.", "{captions}"),
    },
    "zh": {
        WHICH: ("哪张图片符合描述“{caption}”？", "第{n}张图片。"),
        DESCRIBE: ("描述第{n}张图片。", "{caption}"),
        EACH: ("分别简要描述每张图片。", "{captions}"),
    },
}
CAPTION_LINE = {"en": "Picture {n}: {caption}", "zh": "第{n}张：{caption}"}


def uid(example: Example) -> str:
    """The example's uid, as stage 2 gives it (formats/ids.sample_uid)."""
    return sample_uid(example.task, example.source, example.key)


def turn(example: Example) -> tuple[str, str]:
    """One example as (question, answer), by the module docstring's table."""
    if example.task == VQA:
        return example.question, example.text
    regions = "".join(render_region(QWEN_VL, r) for r in example.regions)
    question = QUESTIONS[example.lang][example.task].format(text=example.text, regions=regions)
    if example.task == GROUNDING:
        return question, tag_spans(example, QWEN_VL)
    if example.task == REFERRING:
        return question, f"{QWEN_VL.ref}{example.text}{QWEN_VL.ref_end}{regions}"
    return question, example.text


def conversation(mode: str, parts: list[Example], turns: list[tuple[str, str]], images: list[str]) -> dict:
    """A record of our layout: `images` as `Picture N: <img>PATH</img>\\n` before the first question."""
    uids = [uid(e) for e in parts]
    pictures = "".join(f"Picture {n}: <img>{path}</img>\n" for n, path in enumerate(images, 1))
    turns_out = []
    for i, (question, answer) in enumerate(turns):
        turns_out.append({"from": "user", "value": (pictures if i == 0 else "") + question})
        turns_out.append({"from": "assistant", "value": answer})
    return {"id": f"{mode}-{pair_uid(mode, ' '.join(uids))}", "conversations": turns_out, "parts": uids}


def _sorted_rng(examples, seed: int, mode: str) -> tuple[list[Example], random.Random]:
    ordered = sorted(examples, key=uid)
    return ordered, random.Random(f"{seed}/{mode}/{uid(ordered[0]) if ordered else ''}")


def _by_lang(examples: list[Example]) -> list[list[Example]]:
    return [[e for e in examples if e.lang == lang] for lang in sorted({e.lang for e in examples})]


def multi_turn(examples, max_turns: int = MAX_TURNS, seed: int = 0) -> list[dict]:
    """Multi-turn concatenation: the vqa, referring and grounded_caption examples of ONE image (the caller
    groups them) -> conversations of 2 to `max_turns` turns about it. Per language, the examples (sorted
    by uid) are shuffled with the seed, then each goes, in that order, to the first conversation that
    has fewer than `max_turns` turns and not the same question (exact string), else opens a new one. A
    conversation left with one turn is not multi-turn: it is dropped, and its example is unused."""
    ordered, rng = _sorted_rng([e for e in examples if e.task in TURN_TASKS], seed, MULTI_TURN)
    out = []
    for group in _by_lang(ordered):
        rng.shuffle(group)
        opened: list[list[tuple[Example, tuple[str, str]]]] = []
        for example in group:
            qa = turn(example)
            home = next((c for c in opened if len(c) < max_turns and all(q != qa[0] for _, (q, _) in c)), None)
            if home is None:
                home = []
                opened.append(home)
            home.append((example, qa))
        for c in opened:
            if len(c) >= 2:
                out.append(conversation(MULTI_TURN, [e for e, _ in c], [qa for _, qa in c], [c[0][0].image]))
    return out


def task_concatenation(examples, seed: int = 0) -> list[dict]:
    """Task concatenation: the examples of ONE image -> per language one conversation with a turn of each
    task the image has, in the order caption, grounding, vqa, referring, grounded_caption (the whole
    image first, then its parts), each the seed's choice among the image's examples of that task. An
    image with examples of one task only makes none."""
    ordered, rng = _sorted_rng([e for e in examples if e.task in TASKS], seed, TASK)
    out = []
    for group in _by_lang(ordered):
        parts = [rng.choice(of_task) for task in TASKS if (of_task := [e for e in group if e.task == task])]
        if len(parts) >= 2:
            out.append(conversation(TASK, parts, [turn(e) for e in parts], [parts[0].image]))
    return out


def multi_image(examples, seed: int = 0, min_pictures: int = MIN_PICTURES, max_pictures: int = MAX_PICTURES) -> list[dict]:
    """Multi-image concatenation: caption examples of many images -> conversations of 2 to 4 pictures and
    one question about them by number. Per language: one caption per image (the seed's choice among its
    captions); the images shuffled with the seed; cut in groups whose sizes are drawn uniformly from
    [min_pictures, max_pictures] (a last group too small for `min_pictures` is unused); per group one of
    the three questions of PICTURE_QUESTIONS, uniformly, and for `which` and `describe` one picture,
    uniformly. `which` needs its caption to name one picture: when another picture of the group has the
    same caption, `describe` is asked instead. Parts: the captions in picture order."""
    ordered, rng = _sorted_rng([e for e in examples if e.task == CAPTION], seed, MULTI_IMAGE)
    out = []
    for group in _by_lang(ordered):
        per_image: dict[str, list[Example]] = {}
        for e in group:
            per_image.setdefault(e.image, []).append(e)
        captions = [rng.choice(per_image[image]) for image in sorted(per_image)]
        rng.shuffle(captions)
        while len(captions) >= min_pictures:
            size = rng.randint(min_pictures, max_pictures)
            pictures, captions = captions[:size], captions[size:]
            out.append(_picture_question(pictures, rng))
    return out


def _picture_question(pictures: list[Example], rng: random.Random) -> dict:
    lang = pictures[0].lang
    kind = rng.choice((WHICH, DESCRIBE, EACH))
    n = rng.randint(1, len(pictures))
    caption = pictures[n - 1].text
    if kind == WHICH and [p.text for p in pictures].count(caption) > 1:
        kind = DESCRIBE
    captions = "\n".join(CAPTION_LINE[lang].format(n=i, caption=p.text) for i, p in enumerate(pictures, 1))
    question, answer = (s.format(n=n, caption=caption, captions=captions) for s in PICTURE_QUESTIONS[lang][kind])
    return conversation(MULTI_IMAGE, pictures, [(question, answer)], [p.image for p in pictures])


def text_conversation(record, source: str, fallback_key: str) -> dict | Invalid:
    """A pure-text dialogue (a record of either layout formats/chatml.py reads, without images) -> our
    layout, its system turn kept, id `text-UID`, parts [sample_uid("text", source, its id or
    fallback_key)]; a record chatml refuses -> its Invalid; one with an image or video ->
    `chat_text_has_image`."""
    chat = render_chat(record, source, fallback_key)
    if isinstance(chat, Invalid):
        return chat
    if chat.images:
        return Invalid(source, chat.key, CHAT_TEXT_HAS_IMAGE, f"{len(chat.images)} image or video tags")
    field, role, text = ("conversations", "from", "value") if "conversations" in record else ("messages", "role", "content")
    part = sample_uid(TEXT, source, chat.key)
    turns = [{"from": ROLES[t[role]], "value": t[text]} for t in record[field]]
    return {"id": f"{TEXT_MODE}-{part}", "conversations": turns, "parts": [part]}


def text_schedule(total: int, texts: int) -> list[bool]:
    """Which of `total` positions hold text, `texts` of them spread evenly (Bresenham's line: position i
    is text when floor((i + 1) * texts / total) steps up), so every prefix holds its share within one."""
    return [(i + 1) * texts // total > i * texts // total for i in range(total)]


def mix_text(conversations: list[dict], texts: list[dict], ratio: float) -> list[dict]:
    """The conversations with pure-text ones interleaved so that text makes `ratio` of the whole (the paper
    mixes pure-text dialogue into SFT, §3.3): round(n * ratio / (1 - ratio)) of the texts for n
    conversations, which puts the share within half a conversation of `ratio`; fewer when fewer texts are
    given (all of them). Both lists are sorted by id, the texts used are the first ones, and they are
    placed by `text_schedule`: the same inputs give the same file."""
    if not 0 <= ratio < 1:
        raise ValueError(f"a text ratio is in [0, 1), not {ratio}")
    conversations, texts = sorted(conversations, key=lambda c: c["id"]), sorted(texts, key=lambda c: c["id"])
    wanted = min(len(texts), round(len(conversations) * ratio / (1 - ratio)))
    sources = iter(conversations), iter(texts[:wanted])
    return [next(sources[is_text]) for is_text in text_schedule(len(conversations) + wanted, wanted)]
