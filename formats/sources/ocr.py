"""OCR with grounding: a JSONL manifest of text lines and where they are -> OCR examples.

No public data set ships quadrilateral line labels in one common layout (SynthDoG's release writes only
the text; PDF and HTML pages need a renderer that records them), so this is our
own format, written by whatever renders or extracts the pages. One JSON object per line:

    {"image": "synthdog/0001.jpg",
     "width": 800, "height": 600,
     "lines": [{"text": "It is managed", "quad": [[568, 121], [625, 131], [624, 182], [567, 172]]},
               {"text": "Total 12", "box": [10, 20, 110, 48]}],
     "lang": "en",
     "key": "0001"}

- image: the image file, relative to the image folder the pipeline is given.
- width, height (optional): the image's size in pixels; without them the pipeline reads the image's.
- lines: at least one, in reading order; each a text and exactly one of quad (four [x, y] corners in
  pixels, clockwise from the top-left one, as formats/example.Region takes them) or box ([x1, y1, x2, y2]
  in pixels: top-left, bottom-right).
- lang (optional): en (the default) or zh, which picks the prompt's language.
- key (or id, optional): the record's id; else the image path is the key.
A line of the file that is not such an object is a `malformed_record` Invalid keyed FILE:LINE (line
numbers from 1), its detail naming the field; the geometry itself is checked by formats/boxes.py.
"""

from collections.abc import Iterator

from formats.example import OCR, Example, Invalid, Region
from formats.reasons import FILE_UNREADABLE, MALFORMED
from formats.sources.records import Malformed, error_text, file_name, get_field, item_text, size_field, text_field
from formats.sources.text import jsonl_records, language, record_key


def _numbers(values, count: int, what: str) -> tuple:
    if not isinstance(values, list) or len(values) != count:
        raise Malformed(f"{what}: expected {count} numbers, got {values!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise Malformed(f"{what}: expected numbers, got {values!r}")
    return tuple(values)


def ocr_line(line, where: str) -> tuple[str, Region]:
    """(text, region) of one entry of "lines"; `where` names it, e.g. "lines[2]"."""
    if not isinstance(line, dict):
        raise Malformed(f"{where}: expected an object, got {line!r}")
    words = item_text(line.get("text"), f"{where}.text")
    if ("quad" in line) == ("box" in line):
        raise Malformed(f"{where}: needs exactly one of quad and box")
    if "box" in line:
        return words, Region(box=_numbers(line["box"], 4, f"{where}.box"))
    quad = line["quad"]
    if not isinstance(quad, list) or len(quad) != 4:
        raise Malformed(f"{where}.quad: expected 4 [x, y] points, got {quad!r}")
    return words, Region(quad=tuple(_numbers(p, 2, f"{where}.quad[{i}]") for i, p in enumerate(quad)))


def ocr_example(record, source: str) -> Example:
    """The OCR example of one manifest record, or Malformed naming the field."""
    image = text_field(record, "image")
    lines = get_field(record, "lines", list)
    if not lines:
        raise Malformed("field 'lines' is empty")
    return Example(
        OCR,
        source,
        record_key(record) or image,
        lang=language(record),
        image=image,
        width=size_field(record, "width"),
        height=size_field(record, "height"),
        lines=tuple(ocr_line(line, f"lines[{i}]") for i, line in enumerate(lines)),
    )


def ocr_record(example: Example) -> dict:
    """The manifest record of an OCR example, the inverse of `ocr_example` (the image bytes aside: they go
    to the file the record's "image" names)."""
    record = {"image": example.image}
    if example.width is not None and example.height is not None:
        record.update(width=example.width, height=example.height)
    record["lines"] = [
        {"text": text, "quad": [list(p) for p in region.quad]} if region.quad is not None else {"text": text, "box": list(region.box)}
        for text, region in example.lines
    ]
    return {**record, "lang": example.lang, "key": example.key}


def read_ocr(path: str, source: str = "ocr") -> Iterator[Example | Invalid]:
    """OCR examples from one JSONL manifest in the format above, one per line."""
    lines = 0
    try:
        for number, record in jsonl_records(path):
            lines += 1
            try:
                if isinstance(record, Malformed):
                    raise record
                yield ocr_example(record, source)
            except Malformed as e:
                yield Invalid(source, f"{file_name(path)}:{number}", MALFORMED, str(e))
    except Exception as e:  # a file that cannot be opened or read
        yield Invalid(source, path, FILE_UNREADABLE, f"read {lines} lines, then {error_text(e)}")
