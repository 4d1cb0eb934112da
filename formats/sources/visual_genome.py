"""Visual Genome (visualgenome.org; the field names as the visual_genome_python_driver and Hugging Face's
loader read them): its question answers -> vqa examples (`read_vg_qa`), its region descriptions ->
referring and grounded captioning examples, one per region, its box from [x, y, width, height] (`read_vg`).

region_descriptions.json is a list with one entry per image, {id (the image id; image_id in some
versions), regions: [{region_id (id in v1.0), image_id, phrase, x, y, width, height}]}; image_data.json
is a list of {image_id (id before v1.2), url, width, height, coco_id, flickr_id}, the url ending in
VG_100K/ID.jpg or VG_100K_2/ID.jpg: the image is those last two parts, relative to the folder holding
both image folders. `read_vg` takes the folder with both files, or region_descriptions.json with
image_data.json beside it, and reads region_descriptions.json one image at a time (the file is several
hundred MB). Key: the region_id.
"""

import io
import posixpath
from collections.abc import Iterator
from urllib.parse import urlparse

from formats.example import VQA, Example, Invalid
from formats.files import join, open_file
from formats.reasons import FILE_UNREADABLE, MALFORMED
from formats.sources.records import (
    Malformed,
    convert_records,
    error_text,
    file_name,
    get_field,
    id_field,
    image_table,
    json_array_items,
    keyed,
    lookup,
    read_json,
    size_field,
    text_field,
)
from formats.sources.refer import check_task, xywh_region

VG = "vg"


def vg_image(record: dict) -> tuple[str, int | None, int | None]:
    """(image, width, height) of an image_data.json entry: the image is its url's last two parts."""
    url = text_field(record, "url")
    parts = [p for p in urlparse(url).path.split("/") if p]
    if len(parts) < 2:
        raise Malformed(f"field 'url' {url!r} names no FOLDER/FILE")
    return "/".join(parts[-2:]), size_field(record, "width"), size_field(record, "height")


def read_vg_qa(path: str) -> Iterator[Example | Invalid]:
    """Visual Genome QA (visualgenome.org; the visual_genome_python_driver's local.py and utils.py): in
    the folder `path`, question_answers.json ([{id (the image), qas: [{qa_id, image_id, question, answer,
    q_objects, a_objects}]}]) and image_data.json ([{image_id (id before v1.2), url, width, height, coco_id,
    flickr_id}]). The images unzip into VG_100K/ (images.zip) and VG_100K_2/ (images2.zip) and only the url
    (https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg) says which: the image is the url's last two
    parts, "VG_100K_2/1.jpg", relative to the folder holding both; width and height from image_data.json.
    Answers are kept as written (they often end with a period: "Green.")."""
    image_data, bad = read_json(VG, join(path, "image_data.json"), list)
    entries, bad_qas = read_json(VG, join(path, "question_answers.json"), list)
    if bad or bad_qas:
        yield from (b for b in (bad, bad_qas) if b)
        return
    images = image_table(image_data, ("image_id", "id"), vg_image)

    def build(key, qa):
        file, width, height = lookup(images, get_field(qa, "image_id", int), "image_data.json")
        return Example(VQA, VG, id_field(qa, "qa_id"), image=file, width=width, height=height, question=text_field(qa, "question"), text=text_field(qa, "answer"))

    for index, entry in enumerate(entries):
        try:
            qas = get_field(entry, "qas", list)
        except Malformed as e:
            yield Invalid(VG, f"question_answers.json:{index}", MALFORMED, str(e))
            continue
        yield from convert_records(VG, keyed(qas, "qa_id", f"question_answers.json:{index}"), build)


def read_vg(path: str, task: str) -> Iterator[Example | Invalid]:
    """Examples for `task`, one per region, from Visual Genome's folder (region_descriptions.json and
    image_data.json) or its region_descriptions.json with image_data.json beside it."""
    check_task(task, "Visual Genome")
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
                yield from _vg_examples(entry, f"{file_name(regions_path)}:{count - 1}", images, task)
    except Exception as e:  # a missing file, JSON that breaks off, bytes that are not UTF-8
        yield Invalid(VG, regions_path, FILE_UNREADABLE, f"read {count} images, then {error_text(e)}")


def _vg_examples(entry, where: str, images: dict, task: str) -> Iterator[Example | Invalid]:
    """The examples of one region_descriptions.json entry (one image's regions); `where` is FILE:INDEX."""
    try:
        image_id = get_field(entry, "id" if isinstance(entry, dict) and "id" in entry else "image_id", int)
        regions = get_field(entry, "regions", list)
    except Malformed as e:
        yield Invalid(VG, where, MALFORMED, str(e))
        return
    key_field = "id" if regions and isinstance(regions[0], dict) and "region_id" not in regions[0] else "region_id"

    def build(key, region):
        file, width, height = lookup(images, image_id, "image_data.json")
        box = xywh_region([get_field(region, f, (int, float)) for f in ("x", "y", "width", "height")], "x, y, width, height")
        return Example(task, VG, id_field(region, key_field), image=file, width=width, height=height, text=text_field(region, "phrase"), regions=(box,))

    yield from convert_records(VG, keyed(regions, key_field, f"image {image_id}"), build)
