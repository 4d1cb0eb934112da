"""Reading back the markup formats/dialects.py writes into a sample's text, in either dialect: an image
span `<img>REF</img>` or `<|vision_start|>REF<|vision_end|>` (an image or a video), a phrase
`<ref>PHRASE</ref>` or `<|object_ref_start|>PHRASE<|object_ref_end|>`, a box `<box>(x1,y1),(x2,y2)</box>`
or `<|box_start|>..<|box_end|>`, a quad `<quad>(x1,y1),...,(x4,y4)</quad>` or `<|quad_start|>..<|quad_end|>`.
The tags are the Dialect objects' own strings; both dialects' tags are read by the same rules.

`text_regions` finds each box and quad of a text with what it refers to:
- its image: the last image span before it (Qwen-VL and Qwen2-VL write regions after the image they
  refer to; a chat with several pictures refers to the latest one), None when no image comes before it;
- its label: the ref phrase written just before it, nothing but whitespace or other regions between
  (`<ref>a bee</ref><box>..</box><box>..</box>`: both boxes are "a bee"; `<ref>This</ref><box>..</box> is`
  labels too), else None;
- its points on the [0, 1000) grid, or None when the coordinates do not parse.
"""

import re
from dataclasses import dataclass

from formats.dialects import DIALECTS

_KINDS = ("image", "ref", "box", "quad")  # a Dialect's fields: the tag opening each kind; `<kind>_end` closes it
# One group per kind per dialect, in _KINDS order: the group that matched tells the kind.
_TAG_RE = re.compile("|".join(f"{re.escape(getattr(d, kind))}(.*?){re.escape(getattr(d, kind + '_end'))}"
                              for d in DIALECTS.values() for kind in _KINDS), re.S)
_POINT = r"\(\s*(\d+)\s*,\s*(\d+)\s*\)"
_POINTS_RE = {"box": re.compile(rf"\s*{_POINT}\s*,\s*{_POINT}\s*"),
              "quad": re.compile(rf"\s*{_POINT}\s*,\s*{_POINT}\s*,\s*{_POINT}\s*,\s*{_POINT}\s*")}


@dataclass
class TextRegion:
    """A box or quad of a text: its characters [start, end), its points (None if they do not parse), the
    ref phrase before it, the index of the image it refers to, and its index among the regions."""

    kind: str  # "box" or "quad"
    start: int
    end: int
    points: list[tuple[int, int]] | None
    label: str | None
    image: int | None
    index: int


def text_regions(text: str) -> list[TextRegion]:
    """The boxes and quads of a text, in order, each with its image and label (see the module docstring)."""
    regions, image, label, after_label = [], None, None, -1
    for m in _TAG_RE.finditer(text):
        kind, body = _KINDS[(m.lastindex - 1) % len(_KINDS)], m.group(m.lastindex)
        if kind == "image":
            image = 0 if image is None else image + 1
            label = None
        elif kind == "ref":
            label, after_label = body, m.end()
        else:
            found = _POINTS_RE[kind].fullmatch(body)
            points = None
            if found:
                values = [int(v) for v in found.groups()]
                points = list(zip(values[0::2], values[1::2]))
            here = label if label is not None and not text[after_label : m.start()].strip() else None
            if here is not None:
                after_label = m.end()  # the next region right after this one has the same label
            regions.append(TextRegion(kind, m.start(), m.end(), points, here, image, len(regions)))
    return regions
