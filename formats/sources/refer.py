"""RefCOCO, RefCOCO+, RefCOCOg and Visual Genome regions -> referring grounding and grounded captioning
examples: one example per expression, its box in pixels (x1, y1, x2, y2) from the data set's
[x, y, width, height]. Referring: text = the expression, regions = its box (the target); grounded
captioning: the same example read the other way (the box in, the expression out).

RefCOCO family, in the refer toolkit's layout (github.com/lichengunc/refer: refer.py and its README):
DATA_ROOT/refcoco/, DATA_ROOT/refcoco+/, DATA_ROOT/refcocog/, each holding
- refs(SPLITBY).p: a pickle of a list of refs, each {ref_id, ann_id, image_id, category_id, split,
  sentences: [{sent, raw, tokens, sent_id}], sent_ids, file_name}. A ref's file_name carries the
  annotation id as a suffix; the toolkit ignores it and so do we.
- instances.json: COCO style; images [{id, file_name, width, height}], annotations [{id, image_id,
  bbox: [x, y, width, height], ...}]. The images are COCO train2014's (COCO_train2014_%012d.jpg).
Splits: refcoco and refcoco+ by unc (train, val, testA, testB), refcoco also by google; refcocog by
google (train, val) and umd (train, val, test). `read_refcoco` reads refs(unc).p for refcoco and
refcoco+ and refs(umd).p for refcocog unless told `split_by`, and keeps only the refs of `split`:
"train" by default, so that the expressions of the benchmarks' val and test splits never reach
training (None keeps all). The folder's name is the source. Text: the sentence's `sent` (the toolkit's
cleaned form, which evaluations compare against); key: its sent_id. The pickle is read by
`load_plain_pickle`, which refuses every global: a file that would import or call anything (os.system,
a class) is an error, never run.

Visual Genome (visualgenome.org; the field names as the visual_genome_python_driver and Hugging Face's
loader read them): region_descriptions.json is a list with one entry per image, {id (the image id;
image_id in some versions), regions: [{region_id (id in v1.0), image_id, phrase, x, y, width, height}]};
image_data.json is a list of {image_id (id before v1.2), url, width, height, coco_id, flickr_id}, the url
ending in VG_100K/ID.jpg or VG_100K_2/ID.jpg: the image is those last two parts, relative to the folder
holding both image folders. `read_vg` takes the folder with both files, or region_descriptions.json
with image_data.json beside it, and reads region_descriptions.json one image at a time (the file is
several hundred MB). Key: the region_id.
"""

import io
import json
import pickle
import posixpath
import re
from collections.abc import Iterator


from formats.files import join, open_file
from formats.example import GROUNDED_CAPTION, REFERRING, Example, Invalid, Region
from formats.reasons import FILE_UNREADABLE, MALFORMED
from formats.sources.common import Malformed, convert, error_text, get, ident, image_table, keyed, lookup, name, read_json, size, text, vg_image

TASKS = (REFERRING, GROUNDED_CAPTION)
SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}  # the refs file read by default
VG = "vg"


def _check_task(task: str, data_set: str) -> None:
    if task not in TASKS:
        raise ValueError(f"{data_set} feeds the tasks {', '.join(TASKS)}, not {task!r}")


def xywh_region(values, what: str) -> Region:
    """A box written as [x, y, width, height] as a Region (x1, y1, x2, y2), or Malformed."""
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise Malformed(f"{what}: expected [x, y, width, height], got {values!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise Malformed(f"{what}: expected 4 numbers, got {list(values)!r}")
    x, y, w, h = values
    return Region(box=(x, y, x + w, y + h))


# --- a pickle of plain data ----------------------------------------------------------------------


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global: no class, function or module can be named, so nothing can be imported or
    called. What remains is plain data: lists, dicts, tuples, sets, strings, bytes, numbers, None."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only plain data (lists, dicts, strings, numbers) is read")


def load_plain_pickle(data: bytes):
    """The plain data a pickle holds, or pickle.UnpicklingError when it names any global. Strings pickled
    by Python 2 (the refer toolkit's files) are read as UTF-8."""
    return _PlainUnpickler(io.BytesIO(data), encoding="utf-8").load()


# --- RefCOCO, RefCOCO+, RefCOCOg -----------------------------------------------------------------


def read_refcoco(path: str, task: str, split: str | None = "train", split_by: str | None = None) -> Iterator[Example | Invalid]:
    """Examples for `task` from a refer-toolkit data set folder (DATA_ROOT/refcoco, refcoco+ or refcocog)
    or one refs(SPLITBY).p file in it; only the refs of `split` (None: every split)."""
    _check_task(task, "RefCOCO")
    folder = posixpath.dirname(path) if path.endswith(".p") else path.rstrip("/")
    source = name(folder).lower()
    if source not in SPLIT_BY:
        raise ValueError(f"{path}: the folder's name says which data set it is: one of {', '.join(SPLIT_BY)}, not {source!r}")
    refs_path = path if path.endswith(".p") else join(folder, f"refs({split_by or SPLIT_BY[source]}).p")
    return _read_refcoco(refs_path, join(folder, "instances.json"), source, task, split)


def _coco_image(record: dict) -> tuple[str, int | None, int | None]:
    return text(record, "file_name"), size(record, "width"), size(record, "height")


def _boxes(annotations: list) -> dict[int, Region | Malformed]:
    """instances.json's annotations as annotation id -> its box (or what is wrong with it)."""
    table: dict[int, Region | Malformed] = {}
    for record in annotations:
        if isinstance(record, dict) and isinstance(record.get("id"), int):
            try:
                table[record["id"]] = xywh_region(get(record, "bbox", list), "field 'bbox'")
            except Malformed as e:
                table[record["id"]] = e
    return table


def _read_refs(source: str, path: str) -> tuple[list | None, Invalid | None]:
    try:
        with open_file(path, compression=None) as f:
            refs = load_plain_pickle(f.read())
        if not isinstance(refs, list):
            raise ValueError(f"expected a list of refs, got {type(refs).__name__}")
        return refs, None
    except Exception as e:  # a missing file, a refused global, a truncated pickle...
        return None, Invalid(source, path, FILE_UNREADABLE, error_text(e))


def _read_refcoco(refs_path: str, instances_path: str, source: str, task: str, split: str | None) -> Iterator[Example | Invalid]:
    instances, bad = read_json(source, instances_path, dict)
    if bad:
        yield bad
        return
    try:
        images = image_table(get(instances, "images", list), ("id",), _coco_image)
        boxes = _boxes(get(instances, "annotations", list))
    except Malformed as e:
        yield Invalid(source, instances_path, FILE_UNREADABLE, str(e))
        return
    refs, bad = _read_refs(source, refs_path)
    if bad:
        yield bad
        return
    for index, ref in enumerate(refs):
        try:
            if split is not None and get(ref, "split", str) != split:
                continue
            ref_id = ident(ref, "ref_id")
            file, width, height = lookup(images, get(ref, "image_id", int), "instances.json")
            ann_id = get(ref, "ann_id", int)
            box = boxes.get(ann_id, Malformed(f"ann_id {ann_id} is not in instances.json"))
            if isinstance(box, Malformed):
                raise Malformed(f"ann_id {ann_id} in instances.json: {box}" if ann_id in boxes else str(box))
            sentences = get(ref, "sentences", list)
        except Malformed as e:
            yield Invalid(source, f"{name(refs_path)}:{index}", MALFORMED, str(e))
            continue

        def build(key, sentence, file=file, width=width, height=height, box=box):
            sent_id = ident(sentence, "sent_id")
            return Example(task, source, sent_id, image=file, width=width, height=height, text=text(sentence, "sent"), regions=(box,))

        yield from convert(source, keyed(sentences, "sent_id", f"ref {ref_id}"), build)


# --- Visual Genome -------------------------------------------------------------------------------

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


def read_vg(path: str, task: str) -> Iterator[Example | Invalid]:
    """Examples for `task`, one per region, from Visual Genome's folder (region_descriptions.json and
    image_data.json) or its region_descriptions.json with image_data.json beside it."""
    _check_task(task, "Visual Genome")
    folder = posixpath.dirname(path) if path.endswith(".json") else path.rstrip("/")
    regions_path = path if path.endswith(".json") else join(folder, "region_descriptions.json")
    return _read_vg(regions_path, join(folder, "image_data.json"), task)


def _read_vg(regions_path: str, images_path: str, task: str) -> Iterator[Example | Invalid]:
    image_data, bad = read_json(VG, images_path, list)
    if bad:
        yield bad
        return
    images = image_table(image_data, ("image_id", "id"), vg_image)
    count = 0
    try:
        with open_file(regions_path, compression=None) as raw:
            for entry in json_array_items(io.TextIOWrapper(raw, encoding="utf-8")):
                count += 1
                yield from _vg_examples(entry, f"{name(regions_path)}:{count - 1}", images, task)
    except Exception as e:  # a missing file, JSON that breaks off, bytes that are not UTF-8
        yield Invalid(VG, regions_path, FILE_UNREADABLE, f"read {count} images, then {error_text(e)}")


def _vg_examples(entry, where: str, images: dict, task: str) -> Iterator[Example | Invalid]:
    """The examples of one region_descriptions.json entry (one image's regions); `where` is FILE:INDEX."""
    try:
        image_id = get(entry, "id" if isinstance(entry, dict) and "id" in entry else "image_id", int)
        regions = get(entry, "regions", list)
    except Malformed as e:
        yield Invalid(VG, where, MALFORMED, str(e))
        return
    id_field = "id" if regions and isinstance(regions[0], dict) and "region_id" not in regions[0] else "region_id"

    def build(key, region):
        file, width, height = lookup(images, image_id, "image_data.json")
        box = xywh_region([get(region, f, (int, float)) for f in ("x", "y", "width", "height")], "x, y, width, height")
        return Example(task, VG, ident(region, id_field), image=file, width=width, height=height, text=text(region, "phrase"), regions=(box,))

    yield from convert(VG, keyed(regions, id_field, f"image {image_id}"), build)
