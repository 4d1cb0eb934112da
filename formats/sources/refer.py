"""RefCOCO, RefCOCO+ and RefCOCOg -> referring grounding and grounded captioning
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

"""

import io
import pickle
import posixpath
from collections.abc import Iterator


from formats.files import join, open_file
from formats.example import GROUNDED_CAPTION, REFERRING, Example, Invalid, Region
from formats.reasons import FILE_UNREADABLE, MALFORMED
from formats.sources.records import Malformed, convert_records, error_text, file_name, get_field, id_field, image_table, keyed, lookup, read_json, size_field, text_field

TASKS = (REFERRING, GROUNDED_CAPTION)
SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}  # the refs file read by default


def check_task(task: str, data_set: str) -> None:
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
    check_task(task, "RefCOCO")
    folder = posixpath.dirname(path) if path.endswith(".p") else path.rstrip("/")
    source = file_name(folder).lower()
    if source not in SPLIT_BY:
        raise ValueError(f"{path}: the folder's name says which data set it is: one of {', '.join(SPLIT_BY)}, not {source!r}")
    refs_path = path if path.endswith(".p") else join(folder, f"refs({split_by or SPLIT_BY[source]}).p")
    return _read_refcoco(refs_path, join(folder, "instances.json"), source, task, split)


def _coco_image(record: dict) -> tuple[str, int | None, int | None]:
    return text_field(record, "file_name"), size_field(record, "width"), size_field(record, "height")


def _boxes(annotations: list) -> dict[int, Region | Malformed]:
    """instances.json's annotations as annotation id -> its box (or what is wrong with it)."""
    table: dict[int, Region | Malformed] = {}
    for record in annotations:
        if isinstance(record, dict) and isinstance(record.get("id"), int):
            try:
                table[record["id"]] = xywh_region(get_field(record, "bbox", list), "field 'bbox'")
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
        images = image_table(get_field(instances, "images", list), ("id",), _coco_image)
        boxes = _boxes(get_field(instances, "annotations", list))
    except Malformed as e:
        yield Invalid(source, instances_path, FILE_UNREADABLE, str(e))
        return
    refs, bad = _read_refs(source, refs_path)
    if bad:
        yield bad
        return
    for index, ref in enumerate(refs):
        try:
            if split is not None and get_field(ref, "split", str) != split:
                continue
            ref_id = id_field(ref, "ref_id")
            file, width, height = lookup(images, get_field(ref, "image_id", int), "instances.json")
            ann_id = get_field(ref, "ann_id", int)
            box = boxes.get(ann_id, Malformed(f"ann_id {ann_id} is not in instances.json"))
            if isinstance(box, Malformed):
                raise Malformed(f"ann_id {ann_id} in instances.json: {box}" if ann_id in boxes else str(box))
            sentences = get_field(ref, "sentences", list)
        except Malformed as e:
            yield Invalid(source, f"{file_name(refs_path)}:{index}", MALFORMED, str(e))
            continue

        def build(key, sentence, file=file, width=width, height=height, box=box):
            sent_id = id_field(sentence, "sent_id")
            return Example(task, source, sent_id, image=file, width=width, height=height, text=text_field(sentence, "sent"), regions=(box,))

        yield from convert_records(source, keyed(sentences, "sent_id", f"ref {ref_id}"), build)
