"""What the data-set readers share: reading a data set's files (local paths or gs://, through
formats/files.py), naming an error or a file in a reject's detail, and taking a record's fields so that
a missing or mistyped one becomes an `Invalid` naming the field, never an exception that stops the rest.

A stage-2 converter builds each Example from `get_field`/`text_field`/`id_field` calls, which raise
`Malformed`; `convert_records` turns that into a "malformed_record" Invalid under the record's key and
goes on with the next record.
"""

import json
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator

from formats.example import Example, Invalid
from formats.files import open_file
from formats.reasons import FILE_UNREADABLE, MALFORMED


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


class Malformed(ValueError):
    """A record a converter cannot use; the message names the field."""


def _what(value) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def error_text(e: BaseException) -> str:
    return str(e) if isinstance(e, Malformed) else f"{type(e).__name__}: {e}"


def file_name(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


# --- fields --------------------------------------------------------------------------------------


def get_field(record, field: str, kind: type | tuple[type, ...]):
    """record[field], which must be present, not null and of `kind` (a JSON boolean is never a number)."""
    if not isinstance(record, dict):
        raise Malformed(f"record is {_what(record)}, not an object")
    value = record.get(field)
    if value is None:
        raise Malformed(f"field '{field}' missing")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = [_JSON_TYPES.get(k, k.__name__) for k in kinds]
        expected = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise Malformed(f"field '{field}': expected {expected}, got {_what(value)}")
    return value


def text_field(record, field: str) -> str:
    """record[field] as text, stripped and not empty; a number counts (an answer may be written as 3)."""
    value = str(get_field(record, field, (str, int, float))).strip()
    if not value:
        raise Malformed(f"field '{field}' is empty")
    return value


def item_text(value, label: str) -> str:
    """A value that is not a record's field (an array's item) as text; `label` names it, e.g. "answers[3]"."""
    return text_field({label: value}, label)


def text_list(record, field: str) -> list[str]:
    """record[field]: a non-empty array of texts, each as `text_field` takes it."""
    values = get_field(record, field, list)
    if not values:
        raise Malformed(f"field '{field}' is empty")
    return [item_text(v, f"{field}[{i}]") for i, v in enumerate(values)]


def id_field(record, field: str) -> str:
    """An id (an integer or a string) as a string."""
    return str(get_field(record, field, (int, str)))


def size_field(record, field: str) -> int | None:
    """An optional image width or height: None when absent, else a positive integer."""
    if not isinstance(record, dict) or record.get(field) is None:
        return None
    value = get_field(record, field, int)
    if value <= 0:
        raise Malformed(f"field '{field}' is {value}, not a positive size")
    return value


# --- files ---------------------------------------------------------------------------------------


def load_json(path: str):
    """A whole JSON file, parsed (the data sets ship one document per file; a large one takes memory)."""
    with open_file(path) as f:
        return json.load(f)


def read_json(source: str, path: str, kind: type, inner: str | None = None) -> tuple[object, Invalid | None]:
    """The records of a JSON file: its top-level value, or that value's field `inner`, of `kind`.
    Returns (records, None), or (None, an Invalid keyed by the path) when the file cannot be used."""
    try:
        data = load_json(path)
        if inner is not None:
            return get_field(data, inner, kind), None
        if not isinstance(data, kind):
            raise Malformed(f"top level: expected {_JSON_TYPES[kind]}, got {_what(data)}")
        return data, None
    except Exception as e:  # a missing file raises OSError, json raises ValueError
        return None, Invalid(source, path, FILE_UNREADABLE, error_text(e))


_SPACE = re.compile(r"[ \t\n\r]*")
MAX_ITEM_CHARS = 1 << 26  # an array element longer than this is taken for a broken file


def json_array_items(f, chunk_chars: int = 1 << 20) -> Iterator:
    """Each element of the JSON array a text file holds, decoded one at a time from chunks of the file,
    so that only one element is held whole. A ValueError says where the file stops being that array."""
    decoder = json.JSONDecoder()
    buf, pos, offset, eof = "", 0, 0, False
    state = "open"  # open: before "["; first: after "["; item: after ","; next: after an element
    while True:
        pos = _SPACE.match(buf, pos).end()
        complete = pos < len(buf)
        if complete and state in ("first", "item") and buf[pos] != "]":
            try:
                item, end = decoder.raw_decode(buf, pos)
                # a number is whole only where a delimiter follows ("-6." may go on as "-6.5e3")
                number = buf[pos] in "-0123456789"
                complete = eof or (end < len(buf) and (not number or buf[end] in " \t\r\n,]"))
            except json.JSONDecodeError as e:
                if eof or len(buf) - pos > MAX_ITEM_CHARS:
                    raise ValueError(f"{e.msg} at character {offset + e.pos}") from None
                complete = False  # the element may go on in the next chunk
        if not complete and not eof:  # read on, keeping only what is not consumed yet
            data = f.read(chunk_chars)
            offset, buf, pos, eof = offset + pos, buf[pos:] + data, 0, not data
            continue
        if pos == len(buf):
            raise ValueError("no JSON array" if state == "open" else f"the JSON array is not closed at character {offset + pos}")
        char = buf[pos]
        if state == "open":
            if char != "[":
                raise ValueError(f"not a JSON array: it starts with {char!r}")
            pos, state = pos + 1, "first"
        elif char == "]" and state in ("first", "next"):
            return
        elif state == "next":
            if char != ",":
                raise ValueError(f"expected ',' or ']' at character {offset + pos}, got {char!r}")
            pos, state = pos + 1, "item"
        elif char == "]":
            raise ValueError(f"a ',' before ']' at character {offset + pos}")
        else:
            yield item
            pos, state = end, "next"


# --- records -------------------------------------------------------------------------------------


def keyed(records: list | dict, key_field: str | None, where: str) -> Iterator[tuple[str, object]]:
    """(key, record) pairs: a dict's records under their dict keys; a list's under their `key_field`, or
    WHERE:INDEX for a record that has none (or when there is no id field)."""
    if isinstance(records, dict):
        yield from ((str(k), v) for k, v in records.items())
        return
    for index, record in enumerate(records):
        value = record.get(key_field) if key_field and isinstance(record, dict) else None
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        yield (str(value) if ok else f"{where}:{index}"), record


def image_table(records: list, id_fields: tuple[str, ...], build: Callable[[dict], tuple]) -> dict[int, tuple | Malformed]:
    """image id -> build(record), for the records of a data set's image list whose id is the first of
    `id_fields` present; the Malformed of a record `build` cannot use takes its place (see `lookup`)."""
    table: dict[int, tuple | Malformed] = {}
    for record in records:
        field = next((f for f in id_fields if isinstance(record, dict) and f in record), id_fields[0])
        try:
            image_id = get_field(record, field, int)
        except Malformed:
            continue  # without an id, nothing can point to it
        try:
            table[image_id] = build(record)
        except Malformed as e:
            table[image_id] = e
    return table


def lookup(table: dict[int, tuple | Malformed], image_id: int, where: str) -> tuple:
    """The image entry of `image_id` in an image_table built from `where` (a file or field name)."""
    if image_id not in table:
        raise Malformed(f"image_id {image_id} is not in {where}")
    if isinstance(table[image_id], Malformed):
        raise Malformed(f"image_id {image_id} in {where}: {table[image_id]}")
    return table[image_id]


def convert_records(source: str, records: Iterable[tuple[str, object]], build: Callable[[str, object], Example]) -> Iterator[Example | Invalid]:
    """build(key, record) for each pair; a record it finds Malformed becomes an Invalid under its key."""
    for key, record in records:
        try:
            yield build(key, record)
        except Malformed as e:
            yield Invalid(source, key, MALFORMED, str(e))
