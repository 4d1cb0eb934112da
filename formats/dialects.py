"""The two token dialects, Qwen-VL's and Qwen2-VL's, as data, and the markup each writes for a grounded
phrase, a quad and an image.

Both write coordinates on the same [0, 1000) grid as `(x1,y1),(x2,y2)` (`formats.boxes`); they differ in
the tags around them and in the image span:

| | `qwen-vl` (Qwen-VL paper §2.2, `tokenization_qwen.py`) | `qwen2-vl` (Qwen2-VL paper, arXiv 2409.12191, §2.2.1; its `tokenizer_config.json`) |
|---|---|---|
| phrase | `<ref>the eyes</ref>` | `<|object_ref_start|>the eyes<|object_ref_end|>` |
| box | `<box>(176,106),(232,160)</box>` | `<|box_start|>(176,106),(232,160)<|box_end|>` |
| quad | `<quad>..</quad>` | `<|quad_start|>..<|quad_end|>` |
| image | `<img>`, 256 `<imgpad>`, `</img>` | `<|vision_start|>`, n `<|image_pad|>`, `<|vision_end|>` (n from the image's size) |

Ids: both vocabularies are qwen.tiktoken's 151,643 byte-level BPE ranks followed by the dialect's special
tokens in order (`special_ids`). Qwen2-VL's are `<|endoftext|>`, `<|im_start|>`,
`<|im_end|>` (151643-151645, as in Qwen-VL) then its eleven vision tokens, `<|object_ref_start|>` 151646
to `<|video_pad|>` 151656, where Qwen-VL has `<|extra_0|>`..`<|extra_10|>`.
"""

from dataclasses import dataclass

from formats.boxes import NormBox, NormQuad, format_box, format_quad

N_RANKS = 151_643  # BPE ranks in qwen.tiktoken; ids 0-255 are the single bytes
ENDOFTEXT = "<|endoftext|>"  # end of document; also the pad token
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
EXTRAS = tuple(f"<|extra_{i}|>" for i in range(205))
REF, REF_END, BOX, BOX_END, QUAD, QUAD_END = "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>"
IMG, IMG_END, IMGPAD = "<img>", "</img>", "<imgpad>"


def special_ids(specials: tuple[str, ...]) -> dict[str, int]:
    """Ids of special tokens, assigned in their order right after the BPE ranks, from 151643."""
    return {token: N_RANKS + i for i, token in enumerate(specials)}


@dataclass(frozen=True)
class Dialect:
    """One model's markup tokens; `image_slots` is the fixed pad count of an image, None when it varies."""

    name: str
    ref: str  # opens a grounded phrase
    ref_end: str
    box: str  # opens a box's coordinates
    box_end: str
    quad: str
    quad_end: str
    image: str  # opens an image span
    image_end: str
    image_pad: str  # one slot of an image's features
    video_pad: str | None  # one slot of a video's features; None: no video
    image_slots: int | None
    specials: tuple[str, ...]  # the special tokens, in id order after the BPE ranks
    picture_prefix: bool  # chats: `Picture N: ` before each image and a newline after it (formats/chatml.py)
    supervise_turn_markers: bool  # chats: <|im_start|> and <|im_end|>\n supervised in every turn, not only the assistant's
    chat_content_apart: bool  # chats: a turn's content tokenized apart from its role line (no BPE merge across)

    def special_ids(self) -> dict[str, int]:
        """Each special token's id."""
        return special_ids(self.specials)

    @property
    def vision_tokens(self) -> tuple[str, ...]:
        """The tokens that belong only inside an image or video span."""
        return (self.image, self.image_end, self.image_pad) + ((self.video_pad,) if self.video_pad else ())


QWEN_VL = Dialect(
    name="qwen-vl",
    ref=REF,
    ref_end=REF_END,
    box=BOX,
    box_end=BOX_END,
    quad=QUAD,
    quad_end=QUAD_END,
    image=IMG,
    image_end=IMG_END,
    image_pad=IMGPAD,
    video_pad=None,
    image_slots=256,
    specials=(ENDOFTEXT, IM_START, IM_END) + EXTRAS + (REF, REF_END, BOX, BOX_END, QUAD, QUAD_END, IMG, IMG_END, IMGPAD),
    picture_prefix=True,  # Qwen-VL's finetune.py and chat format
    supervise_turn_markers=True,  # finetune.py's mask
    chat_content_apart=True,  # finetune.py: tokenizer(role) + nl + tokenizer(value)
)

QWEN2_VL = Dialect(
    name="qwen2-vl",
    ref="<|object_ref_start|>",
    ref_end="<|object_ref_end|>",
    box="<|box_start|>",
    box_end="<|box_end|>",
    quad="<|quad_start|>",
    quad_end="<|quad_end|>",
    image="<|vision_start|>",
    image_end="<|vision_end|>",
    image_pad="<|image_pad|>",
    video_pad="<|video_pad|>",
    image_slots=None,
    specials=(ENDOFTEXT, IM_START, IM_END)
    + ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>")
    + ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"),
    picture_prefix=False,  # the released chat template puts the span inline
    supervise_turn_markers=False,  # Qwen's qwen-vl-finetune (data_qwen.py): the assistant's content and <|im_end|>\n only
    chat_content_apart=False,  # its chat template renders a whole turn, tokenized as one string
)

DIALECTS = {d.name: d for d in (QWEN_VL, QWEN2_VL)}


def get_dialect(name: str) -> Dialect:
    """The dialect called `name`."""
    if name not in DIALECTS:
        raise ValueError(f"unknown dialect {name!r}: one of {', '.join(DIALECTS)}")
    return DIALECTS[name]


def row_dialect(row: dict) -> Dialect:
    """The dialect of a sample or packed row's ids: its `dialect` column, Qwen-VL where null or absent
    (files written before the column)."""
    return get_dialect(row.get("dialect") or QWEN_VL.name)


def translate_grounding(text: str, dialect: Dialect) -> str:
    """`text` with the other dialects' phrase, box and quad tags written as `dialect`'s."""
    for other in DIALECTS.values():
        if other is not dialect:
            for field in ("ref", "ref_end", "box", "box_end", "quad", "quad_end"):
                text = text.replace(getattr(other, field), getattr(dialect, field))
    return text


def render_region(dialect: Dialect, region) -> str:
    """A normalized Region (formats/example.py: a box or a quad on the grid) in its tags."""
    return render_box(dialect, region.box) if region.box is not None else render_quad(dialect, region.quad)


def render_box(dialect: Dialect, box: NormBox, phrase: str | None = None) -> str:
    """A grid box in its tags, after its phrase in ref tags when given:
    `<|object_ref_start|>the eyes<|object_ref_end|><|box_start|>(176,106),(232,160)<|box_end|>`."""
    ref = "" if phrase is None else f"{dialect.ref}{phrase}{dialect.ref_end}"
    return f"{ref}{dialect.box}{format_box(box)}{dialect.box_end}"


def render_quad(dialect: Dialect, quad: NormQuad, phrase: str | None = None) -> str:
    """A grid quad in its tags, after its phrase (an OCR line) in ref tags when given."""
    ref = "" if phrase is None else f"{dialect.ref}{phrase}{dialect.ref_end}"
    return f"{ref}{dialect.quad}{format_quad(quad)}{dialect.quad_end}"


def _span_tokens(dialect: Dialect, slots: int, video: bool) -> tuple[str, str, str]:
    """The start, pad and end tokens of an image (a video) span of `slots` pads, checked."""
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"an image has a positive number of slots, not {slots!r}")
    if dialect.image_slots is not None and slots != dialect.image_slots:
        raise ValueError(f"a {dialect.name} image has {dialect.image_slots} slots, not {slots}")
    if video and dialect.video_pad is None:
        raise ValueError(f"{dialect.name} has no video token")
    return dialect.image, dialect.video_pad if video else dialect.image_pad, dialect.image_end


def image_span(dialect: Dialect, slots: int, video: bool = False) -> str:
    """An image (a video) as text: the start tag, `slots` pads, the end tag."""
    start, pad, end = _span_tokens(dialect, slots, video)
    return start + pad * slots + end


def image_span_ids(dialect: Dialect, slots: int, video: bool = False) -> list[int]:
    """The ids of `image_span(dialect, slots, video)`."""
    ids = dialect.special_ids()
    start, pad, end = (ids[t] for t in _span_tokens(dialect, slots, video))
    return [start] + [pad] * slots + [end]
