"""Captioning converters: COCO Captions, and our own stage-1 curated corpus. Each yields one Example
(task caption) per caption, or an Invalid for a record it cannot use.

- COCO: every caption is its own example (five or so per image): they are five views of one image, and
  each is a good target; the pipeline may sample among them. Image: file_name, in the split's folder
  (train2017/); width and height from images[].
- Stage-1 curated Parquet: image bytes carried in the row; image = SOURCE/KEY names it in rejects.
"""

from collections.abc import Iterator

from formats.files import list_files, open_file, parquet_file
from formats.example import CAPTION, Example, Invalid
from formats.reasons import FILE_UNREADABLE, MALFORMED, UNSUPPORTED_LANGUAGE
from formats.sources.records import Malformed, convert_records, error_text, file_name, get_field, id_field, image_table, keyed, lookup, read_json, size_field, text_field

COCO = "coco"
CURATED = "curated"  # the source of an Invalid that no row's source names (an unreadable file)
LANGUAGES = ("en", "zh")
CURATED_COLUMNS = ("source", "key", "caption", "image", "width", "height", "lang")
BATCH_ROWS = 256


def read_coco_captions(path: str) -> Iterator[Example | Invalid]:
    """COCO Captions (cocodataset.org; pycocotools' layout): captions_{split}.json, {info, licenses,
    images: [{id, file_name, width, height, ...}], annotations: [{id, image_id, caption}]}: one Example per
    annotation, key its id. An annotation whose image is missing or malformed in images[] is malformed."""
    data, bad = read_json(COCO, path, dict)
    if bad:
        yield bad
        return
    try:
        images, annotations = get_field(data, "images", list), get_field(data, "annotations", list)
    except Malformed as e:
        yield Invalid(COCO, path, FILE_UNREADABLE, str(e))
        return
    by_id = image_table(images, ("id",), lambda r: (text_field(r, "file_name"), size_field(r, "width"), size_field(r, "height")))

    def build(key, annotation):
        file, width, height = lookup(by_id, get_field(annotation, "image_id", int), "images")
        return Example(CAPTION, COCO, id_field(annotation, "id"), image=file, width=width, height=height, text=text_field(annotation, "caption"))

    yield from convert_records(COCO, keyed(annotations, "id", file_name(path)), build)


def _curated_example(row: dict, where: str) -> Example | Invalid:
    """One curated row; `where` (FILE:ROW) keys it when it has no key."""
    source = row.get("source") if isinstance(row.get("source"), str) else CURATED
    key = row.get("key") if isinstance(row.get("key"), str) else where
    try:
        source, key = get_field(row, "source", str), get_field(row, "key", str)
        image_bytes, caption = get_field(row, "image", bytes), text_field(row, "caption")
        width, height = size_field(row, "width"), size_field(row, "height")
    except Malformed as e:
        return Invalid(source, key, MALFORMED, str(e))
    lang = row.get("lang")
    if lang not in LANGUAGES:
        return Invalid(source, key, UNSUPPORTED_LANGUAGE, f"lang {lang!r}: not one of {', '.join(LANGUAGES)}")
    return Example(CAPTION, source, key, lang=lang, image=f"{source}/{key}", image_bytes=image_bytes, width=width, height=height, text=caption)


def _curated_file(path: str) -> Iterator[Example | Invalid]:
    rows = 0
    try:
        with open_file(path, compression=None) as f:
            parquet = parquet_file(f)
            columns = [c for c in CURATED_COLUMNS if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                for row in batch.to_pylist():
                    yield _curated_example(row, f"{file_name(path)}:{rows}")
                    rows += 1
    except Exception as e:  # pyarrow raises several types for a file that is not (or no longer) Parquet
        yield Invalid(CURATED, path, FILE_UNREADABLE, f"read {rows} rows, then {error_text(e)}")


def read_curated(path: str) -> Iterator[Example | Invalid]:
    """Our stage-1 output (formats/schemas.py CURATED): its curated/ folder of *.parquet files (or one
    file), read in batches of 256 rows, never whole. Per row: source and key as the row has them (so the
    uid, a hash of the two, stays stage 1's), the caption, the image bytes (image = "SOURCE/KEY" names
    it), width, height, and lang, which must be en or zh (otherwise "unsupported_language")."""
    files = [path] if path.endswith(".parquet") else list_files(path, "*.parquet")
    if not files:
        yield Invalid(CURATED, path, FILE_UNREADABLE, "no .parquet file in the folder")
    for file in files:
        yield from _curated_file(file)
