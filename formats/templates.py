"""The seven stage-2 task formats (Qwen-VL paper §3.2, from the appendix's examples), in either dialect.

`render(example, dialect)` turns a normalized Example (formats/boxes.py) into segments of text, each with
whether it is supervised: the prompt (not supervised), then the target, which ends with <|endoftext|>.
The image (or video) is written `<img>PATH</img>` (its file name, or the key where it has none); the
tokenizer expands it later. The table is Qwen-VL's markup; Qwen2-VL (formats/dialects.py) writes the same
prompts and targets with its own tags: `<|vision_start|>PATH<|vision_end|>`, `<|object_ref_start|>..`,
`<|box_start|>..<|box_end|>`, `<|quad_start|>..<|quad_end|>`. The Qwen2-VL paper gives no stage-2
prompts of its own, so the task wording is Qwen-VL's in both.

| task | prompt | target |
|---|---|---|
| caption | `<img>P</img>Generate the caption in English:` | ` CAPTION<eos>` |
| vqa | `<img>P</img> QUESTION Answer:` | ` ANSWER<eos>` |
| grounding | `<img>P</img>Generate the caption in English with grounding:` | ` A <ref>bee</ref><box>..</box><eos>` |
| referring | `<img>P</img><ref>EXPRESSION</ref>` | `<box>..</box><box>..</box><eos>` (one per region) |
| grounded_caption | `<img>P</img><ref>This</ref><box>..</box> is` | ` DESCRIPTION<eos>` |
| ocr | `<img>P</img>OCR with grounding:` | `<ref>LINE</ref><quad>..</quad><ref>LINE</ref><box>..</box>...<eos>` |
| text | (none) | `DOCUMENT<eos>`: the whole document supervised |

Decisions where the paper leaves them open:
- Whitespace is the table's: an instruction ends with its colon and no space; a target that continues
  the text starts with one space (caption, vqa, grounding, grounded_caption); tags abut with no space
  (`</ref><box>`, `</quad><ref>`), and OCR lines follow each other with nothing between them. A
  referring or OCR target starts with its first tag, no space.
- Chinese (lang "zh"): the instructions stay English and name the language, as the paper's one example
  ("Generate the caption in Chinese:") does: `Generate the caption in Chinese:`, `Generate the caption
  in Chinese with grounding:`; `Answer:` and `OCR with grounding:` are the same in both languages, and
  the target still starts with one space after the colon. Grounded captioning is the start of a
  sentence in the caption's own language, so it is translated: `<ref>这</ref><box>..</box>是`, with the
  description following with no space (Chinese does not space words).
- Pure text: no prompt, no image; the whole document is supervised and ends with <|endoftext|>.

`check(example)` says why an example cannot be rendered, as an Invalid; `render` raises ValueError for
those (run `check` first on data).
"""

import re

from formats.dialects import DIALECTS, QWEN_VL, Dialect, render_region
from formats.example import CAPTION, GROUNDED_CAPTION, GROUNDING, OCR, REFERRING, TASKS, TEXT, VQA, Example, Invalid
from formats.reasons import FIELD_EMPTY, LANG_UNKNOWN, REGION_NOT_NORMALIZED, SPAN_INVALID, TASK_UNKNOWN, TEXT_SPECIAL_TOKEN

EOS = "<|endoftext|>"

Segment = tuple[str, bool]  # text, and whether the model is trained to predict it

# The prompt (after the image) and the target (before <eos>) of each task, per language: {text} is the
# example's text, {question} its question, {regions} its regions as box/quad tags, {spans} the text
# with its grounded phrases tagged, {lines} the OCR lines tagged; {ref} and {ref_end} the phrase tags.
TEMPLATES = {
    "en": {
        CAPTION: ("Generate the caption in English:", " {text}"),
        VQA: (" {question} Answer:", " {text}"),
        GROUNDING: ("Generate the caption in English with grounding:", " {spans}"),
        REFERRING: ("{ref}{text}{ref_end}", "{regions}"),
        GROUNDED_CAPTION: ("{ref}This{ref_end}{regions} is", " {text}"),
        OCR: ("OCR with grounding:", "{lines}"),
        TEXT: ("", "{text}"),
    },
    "zh": {
        CAPTION: ("Generate the caption in Chinese:", " {text}"),
        VQA: (" {question} Answer:", " {text}"),
        GROUNDING: ("Generate the caption in Chinese with grounding:", " {spans}"),
        REFERRING: ("{ref}{text}{ref_end}", "{regions}"),
        GROUNDED_CAPTION: ("{ref}这{ref_end}{regions}是", "{text}"),
        OCR: ("OCR with grounding:", "{lines}"),
        TEXT: ("", "{text}"),
    },
}


# The special tokens and tags of both dialects, in the form text would spell them.
SPECIAL_TOKENS = re.compile("|".join(re.escape(t) for t in sorted({t for d in DIALECTS.values() for t in d.specials}, key=len, reverse=True)))

_NEEDS = {  # the fields each task needs non-empty
    CAPTION: ("text",),
    VQA: ("question", "text"),
    GROUNDING: ("text", "spans"),
    REFERRING: ("text", "regions"),
    GROUNDED_CAPTION: ("text", "regions"),
    OCR: ("lines",),
    TEXT: ("text",),
}


def _regions_on_grid(regions) -> bool:
    def ok(v):
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1000

    for r in regions:
        values = r.box if r.box is not None else [v for p in (r.quad or ()) for v in p]
        if (r.box is None) == (r.quad is None) or not all(ok(v) for v in values):
            return False
    return True


def check(example: Example) -> Invalid | None:
    """None when `render` can render the example, else an Invalid naming the first problem."""

    def invalid(reason, detail):
        return Invalid(example.source, example.key, reason, detail)

    if example.task not in TASKS:
        return invalid(TASK_UNKNOWN, repr(example.task))
    if example.lang not in TEMPLATES:
        return invalid(LANG_UNKNOWN, repr(example.lang))
    for field in _NEEDS[example.task]:
        if not getattr(example, field):
            return invalid(FIELD_EMPTY, f"{example.task} needs {field}")
    texts = {"text": example.text, "question": example.question}
    if example.task != TEXT:
        texts["image"] = example.image or example.key
    texts.update({f"lines[{i}]": line for i, (line, _) in enumerate(example.lines)})
    for name, value in texts.items():
        found = SPECIAL_TOKENS.search(value)
        if found:
            return invalid(TEXT_SPECIAL_TOKEN, f"{name} holds {found.group()}")
    end = 0
    for i, span in enumerate(example.spans):
        if not (end <= span.start < span.end <= len(example.text)):
            detail = f"spans[{i}]: [{span.start}, {span.end}) after {end} in a text of {len(example.text)}"
            return invalid(SPAN_INVALID, detail)
        if not span.regions:
            return invalid(SPAN_INVALID, f"spans[{i}] has no region")
        end = span.end
    for i, (line, _) in enumerate(example.lines):
        if not line:
            return invalid(FIELD_EMPTY, f"ocr needs the text of lines[{i}]")
    regions = [*example.regions, *(r for s in example.spans for r in s.regions), *(r for _, r in example.lines)]
    if not _regions_on_grid(regions):
        return invalid(REGION_NOT_NORMALIZED, "normalize the example (formats.boxes.normalize_example) first")
    return None


def tag_spans(example: Example, dialect: Dialect) -> str:
    """The text with each grounded phrase in ref tags followed by its regions."""
    out, end = [], 0
    for span in example.spans:
        out.append(example.text[end : span.start])
        out.append(f"{dialect.ref}{example.text[span.start : span.end]}{dialect.ref_end}")
        out.extend(render_region(dialect, r) for r in span.regions)
        end = span.end
    out.append(example.text[end:])
    return "".join(out)


def render(example: Example, dialect: Dialect = QWEN_VL) -> list[Segment]:
    """The example as [(prompt, False), (target, True)] in `dialect`'s markup; pure text is
    [(document + <eos>, True)]."""
    problem = check(example)
    if problem is not None:
        raise ValueError(f"{problem.reason}: {problem.detail}")
    prompt, target = TEMPLATES[example.lang][example.task]
    fields = {
        "text": example.text,
        "question": example.question,
        "regions": "".join(render_region(dialect, r) for r in example.regions),
        "spans": tag_spans(example, dialect) if example.task == GROUNDING else "",
        "lines": "".join(f"{dialect.ref}{line}{dialect.ref_end}{render_region(dialect, r)}" for line, r in example.lines),
        "ref": dialect.ref,
        "ref_end": dialect.ref_end,
    }
    target = target.format(**fields) + EOS
    if example.task == TEXT:
        return [(target, True)]
    image = example.image or example.key
    return [(f"{dialect.image}{image}{dialect.image_end}" + prompt.format(**fields), False), (target, True)]
