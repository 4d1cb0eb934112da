"""Reading back the markup formats/boxes.py and formats/templates.py write into a sample's text:
`<img>REF</img>`, `<ref>PHRASE</ref>`, `<box>(x1,y1),(x2,y2)</box>` and `<quad>(x1,y1),...,(x4,y4)</quad>`.

`text_regions` finds each box and quad of a text with what it refers to:
- its image: the last `<img>` before it (Qwen-VL writes regions after the image they refer to; a chat
  with several pictures refers to the latest one), None when no image comes before it;
- its label: the `<ref>` phrase written just before it, nothing but whitespace or other regions between
  (`<ref>a bee</ref><box>..</box><box>..</box>`: both boxes are "a bee"; `<ref>This</ref><box>..</box> is`
  labels too), else None;
- its points on the [0, 1000) grid, or None when the coordinates do not parse.
"""

import re
from dataclasses import dataclass

_TAG_RE = re.compile(r"<img>(.*?)</img>|<ref>(.*?)</ref>|<box>(.*?)</box>|<quad>(.*?)</quad>", re.S)
_POINT = r"\(\s*(\d+)\s*,\s*(\d+)\s*\)"
_BOX_RE = re.compile(rf"\s*{_POINT}\s*,\s*{_POINT}\s*")
_QUAD_RE = re.compile(rf"\s*{_POINT}\s*,\s*{_POINT}\s*,\s*{_POINT}\s*,\s*{_POINT}\s*")


@dataclass
class TextRegion:
    """A <box> or <quad> of a text: its characters [start, end), its points (None if they do not parse),
    the <ref> phrase before it, the index of the image it refers to, and its index among the regions."""

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
        img, ref, box, quad = m.groups()
        if img is not None:
            image = 0 if image is None else image + 1
            label = None
        elif ref is not None:
            label, after_label = ref, m.end()
        else:
            body, kind = (box, "box") if box is not None else (quad, "quad")
            found = (_BOX_RE if kind == "box" else _QUAD_RE).fullmatch(body)
            points = None
            if found:
                values = [int(v) for v in found.groups()]
                points = list(zip(values[0::2], values[1::2]))
            here = label if label is not None and not text[after_label : m.start()].strip() else None
            if here is not None:
                after_label = m.end()  # the next region right after this one has the same label
            regions.append(TextRegion(kind, m.start(), m.end(), points, here, image, len(regions)))
    return regions
