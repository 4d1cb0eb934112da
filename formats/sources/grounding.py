"""GRIT (Kosmos-2's grounded image-text pairs) -> caption with grounding, referring grounding and grounded
captioning examples.

The layout, from the data set card (huggingface.co/datasets/zzliang/GRIT): one row per image-caption pair,
with `key`, `id`, `url`, `caption`, `width`, `height`, `noun_chunks` and `ref_exps`. Each noun chunk is
[start, end, x_min, y_min, x_max, y_max, score]: characters [start, end) of the caption and a box as
fractions of the image's width and height. `ref_exps` has the same form: each noun chunk's referring
expression (the chunk itself where it has no expansion), with the chunk's box. The card downloads the
images with img2dataset, keeping the GRIT columns (`--save_additional_columns`); img2dataset then writes,
per shard, a Parquet file with one row per input row: its own `key` (the image's name in the shard:
KEY.jpg in the webdataset tar, a `jpg` column in the parquet output format), `status`, and `width` and
`height` of the image as stored (after any resize), beside the GRIT columns.

`read_grit` takes one file of such rows:
- SHARD.tar: an img2dataset webdataset shard (the card's command): each sample's KEY.json is its row,
  KEY.jpg its image (carried as image_bytes); the failed downloads are the rows of SHARD.parquet beside
  it whose status is not success.
- SHARD.parquet: img2dataset's shard Parquet (parquet output format: the image in its `jpg` column; files
  output format: the image at SHARD/KEY.jpg), or a Parquet file of GRIT's own metadata.
- FILE.jsonl: rows as JSON objects, one a line.
Every row becomes:
- image: SHARD/KEY.jpg for img2dataset's rows (they have a `status`): where its files output format puts
  the image under its output folder (for a webdataset shard: the tar and its member). KEY.jpg for GRIT's
  metadata rows, whose key the card calls the file name of COYO-700M's img2dataset download.
- width, height: the row's. The boxes are fractions of the image, so they become pixels of the image
  the row describes: img2dataset's rows give the stored image's size, so resized downloads stay right.
  A row without a size cannot be placed: Invalid `image_size_missing`.
- a row img2dataset could not download (`status` other than success): Invalid `download_failed`.

Tasks:
- grounding: the caption, with a span for each label kept by `drop_nested_spans`, which applies
  Qwen-VL's GRIT rule (the paper's appendix on multi-task data: a greedy clean-up so that each
  image keeps the most box labels with no recursive ones). A label is a phrase of the caption with its
  boxes, as the caption shows it: <ref>phrase</ref><box>...</box>. The candidates are all of GRIT's:
  noun chunks and referring expressions, which contain their chunk ("a wire hanger with a paper cover"
  contains "a wire hanger"): such a pair would be one <ref> inside another, which is what "recursive"
  names. "Inside" is therefore about the caption's characters, not the boxes' geometry: a box inside
  another box (a cup in a hand) is an ordinary image and stays. Entries with the same characters are
  one label with all their boxes (a phrase GLIP found several times, or a chunk copied as its own
  referring expression).
- referring: one example per referring expression (entries with the same characters: one example with
  all their boxes): text = the expression, regions = its boxes. Key KEY:START-END.
- grounded_caption: the same examples, read the other way (regions in, text out).
"""

import json
from collections.abc import Iterable, Iterator

from formats.files import exists, open_file, tar_samples
from formats.example import GROUNDED_CAPTION, GROUNDING, REFERRING, Example, Invalid, Region, Span
from formats.reasons import DOWNLOAD_FAILED, FILE_UNREADABLE, IMAGE_SIZE_MISSING, MALFORMED, NO_REGIONS
from formats.sources.img2dataset import parquet_batches, sidecar
from formats.sources.records import Malformed, error_text, file_name, get_field, id_field, size_field
from formats.sources.text import jsonl_records

SOURCE = "grit"
TASKS = (GROUNDING, REFERRING, GROUNDED_CAPTION)
COLUMNS = ("key", "caption", "width", "height", "noun_chunks", "ref_exps", "status", "error_message", "jpg")


Labels = dict[tuple[int, int], tuple[Region, ...]]  # (start, end) of the caption -> its boxes


def drop_nested_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The largest set of the caption spans (start, end) in which no span is inside or crosses another,
    sorted by start: the labels a caption can carry as <ref>...</ref> without one inside another.

    Span a is inside span b when b.start <= a.start and a.end <= b.end; two spans that share characters
    without either being inside the other (they cross) cannot both be tagged either. So the kept spans
    are pairwise disjoint: one ends at or before the next starts. Greedy by earliest end (ties: the
    shorter first), which keeps the most spans possible (interval scheduling). Repeated spans count once.
    """
    kept: list[tuple[int, int]] = []
    for start, end in sorted(set(spans), key=lambda s: (s[1], -s[0])):
        if not kept or start >= kept[-1][1]:
            kept.append((start, end))
    return sorted(kept)


def _integral(value) -> int | None:
    """An int from a JSON or Parquet number that is whole (Parquet's lists hold 19.0), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if float(value).is_integer() else None


def _union(boxes: tuple[Region, ...], more: tuple[Region, ...]) -> tuple[Region, ...]:
    return boxes + tuple(b for b in more if b not in boxes)


def grit_labels(row: dict, column: str, caption: str, width: int, height: int) -> Labels:
    """One GRIT column (noun_chunks or ref_exps) as {(start, end): boxes in pixels}, or Malformed
    naming the first bad entry. A missing column has no labels."""
    labels: Labels = {}
    for i, entry in enumerate(row.get(column) or ()):
        where = f"{column}[{i}]"
        if not isinstance(entry, (list, tuple)) or len(entry) != 7:
            raise Malformed(f"{where}: expected [start, end, x_min, y_min, x_max, y_max, score], got {entry!r}")
        start, end = _integral(entry[0]), _integral(entry[1])
        if start is None or end is None or not 0 <= start < end <= len(caption):
            raise Malformed(f"{where}: characters [{entry[0]!r}, {entry[1]!r}) are not in the caption ({len(caption)} characters)")
        if not caption[start:end].strip():
            raise Malformed(f"{where}: characters [{start}, {end}) of the caption are blank")
        fractions = entry[2:6]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in fractions):
            raise Malformed(f"{where}: box {list(fractions)!r} is not 4 numbers")
        x1, y1, x2, y2 = fractions
        region = Region(box=(x1 * width, y1 * height, x2 * width, y2 * height))
        labels[(start, end)] = _union(labels.get((start, end), ()), (region,))
    return labels


def grit_examples(row, task: str, where: str, shard: str = "") -> Iterator[Example | Invalid]:
    """The examples of one GRIT row (a dict of its columns) for `task`, or one Invalid saying why there
    are none; `where` (FILE:ROW) keys a row without a key; `shard` names the img2dataset shard it is in."""
    try:
        key = id_field(row, "key")
    except Malformed as e:
        yield Invalid(SOURCE, where, MALFORMED, str(e))
        return
    if row.get("status", "success") != "success":
        yield Invalid(SOURCE, key, DOWNLOAD_FAILED, f"{row.get('status')}: {row.get('error_message')}")
        return
    try:
        caption = get_field(row, "caption", str)
        if not caption.strip():
            raise Malformed("field 'caption' is empty")
        width, height = size_field(row, "width"), size_field(row, "height")
        if width is None or height is None:
            yield Invalid(SOURCE, key, IMAGE_SIZE_MISSING, f"width {row.get('width')!r}, height {row.get('height')!r}")
            return
        chunks = grit_labels(row, "noun_chunks", caption, width, height)
        refs = grit_labels(row, "ref_exps", caption, width, height)
    except Malformed as e:
        yield Invalid(SOURCE, key, MALFORMED, str(e))
        return
    file = f"{shard}/{key}.jpg" if shard and "status" in row else f"{key}.jpg"
    image = dict(source=SOURCE, image=file, image_bytes=row.get("jpg"), width=width, height=height)
    if task == GROUNDING:
        labels = dict(chunks)
        for span, boxes in refs.items():
            labels[span] = _union(labels.get(span, ()), boxes)
        kept = drop_nested_spans(labels)
        if not kept:
            yield Invalid(SOURCE, key, NO_REGIONS, "no noun chunk or referring expression")
            return
        yield Example(task, key=key, text=caption, spans=tuple(Span(s, e, labels[(s, e)]) for s, e in kept), **image)
        return
    if not refs:
        yield Invalid(SOURCE, key, NO_REGIONS, "no referring expression")
        return
    for start, end in sorted(refs):
        yield Example(task, key=f"{key}:{start}-{end}", text=caption[start:end].strip(), regions=refs[(start, end)], **image)


def _parquet_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(row number from 1, row) of a Parquet file, only the columns GRIT's rows use."""
    number = 0
    for batch in parquet_batches(path, COLUMNS):
        for row in batch:
            number += 1
            yield number, row


def _webdataset_rows(path: str) -> Iterator[tuple[int, dict | Malformed]]:
    """(number, row) of an img2dataset webdataset shard: each sample's KEY.json with its KEY.jpg as `jpg`,
    then the rows of the shard's Parquet whose download failed (they are not in the tar)."""
    number = 0
    with open_file(path, compression=None) as f:
        for key, members in tar_samples(f):
            number += 1
            try:
                row = json.loads(members["json"])
            except (KeyError, ValueError) as e:
                yield number, Malformed(f"sample {key}: no readable {key}.json ({error_text(e)})")
                continue
            if isinstance(row, dict) and "jpg" not in members:
                yield number, Malformed(f"sample {key}: no {key}.jpg")
                continue
            yield number, {**row, "jpg": members["jpg"]} if isinstance(row, dict) else row
    if exists(sidecar(path)):
        for _, row in _parquet_rows(sidecar(path)):
            if row.get("status") != "success":
                number += 1
                yield number, row


def read_grit(path: str, task: str) -> Iterator[Example | Invalid]:
    """Examples for `task` (grounding, referring or grounded_caption) from one GRIT file: an img2dataset
    webdataset shard (.tar), Parquet (img2dataset's shard Parquet, or GRIT's metadata) or JSONL."""
    if task not in TASKS:
        raise ValueError(f"GRIT feeds the tasks {', '.join(TASKS)}, not {task!r}")
    return _read_grit(path, task)


def _read_grit(path: str, task: str) -> Iterator[Example | Invalid]:
    if path.endswith(".tar"):
        rows = _webdataset_rows(path)
    else:
        rows = jsonl_records(path) if path.endswith(".jsonl") else _parquet_rows(path)
    shard = file_name(path).rpartition(".")[0]
    count = 0
    try:
        for number, row in rows:
            count += 1
            if isinstance(row, Malformed):
                yield Invalid(SOURCE, f"{file_name(path)}:{number}", MALFORMED, str(row))
            else:
                yield from grit_examples(row, task, f"{file_name(path)}:{number}", shard)
    except Exception as e:  # pyarrow and tarfile raise several types for a file cut off or of another kind
        yield Invalid(SOURCE, path, FILE_UNREADABLE, f"read {count} rows, then {error_text(e)}")
