"""The synthetic stage-2 sample: each set reads with its converter into exactly the recorded counts, the
planted faults give exactly the recorded rejects (at the converter, or at the pipeline's later checks),
the boxes are where the shapes and text lines were drawn, and the output is deterministic."""

import hashlib
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from formats.boxes import normalize_box, normalize_example
from formats.chatml import Chat, render
from formats.example import Example, Invalid
from formats.files import list_files
from formats.reasons import IMAGE_MISSING
from formats.sources import PER_FILE, convert
from formats.templates import check
from formats.tokenizer import QwenTokenizer
from synthetic.annotated_sets import BACKGROUNDS, COLOURS, CONVERTER, MANIFEST, STAGE2, make_stage2_sample

SETS = ["vqa:vqav2", "caption:coco", "referring:refcoco", "grounded_caption:refcoco", "grounding:grit", "referring:vg",
        "grounded_caption:vg", "ocr:jsonl", "ocr:pdf", "ocr:html", "text:text",
        "ocr:synthetic"]
RENDERED_PAGES = {"ocr:pdf", "ocr:html", "ocr:synthetic"}  # rendered page by page, so fewer of them


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    output = tmp_path_factory.mktemp("stage2_sample")
    manifest = make_stage2_sample(str(output), seed=0)
    return output, manifest


def parse(entry: dict) -> tuple[str, str, str, str]:
    """(task, format, path, image folder) of a set, as stage2's --source and --images give them."""
    head, _, path = entry["source"].partition("=")
    task, _, fmt = head.partition(":")
    images = entry["images"].partition("=")[2] if entry["images"] else (path if os.path.isdir(path) else os.path.dirname(path))
    if entry["images"]:
        assert entry["images"].partition("=")[0] == fmt  # --images is keyed by the format
    return task, fmt, path, images


def converted(entry: dict) -> tuple[str, list]:
    task, fmt, path, images = parse(entry)
    files = [path]
    if fmt in PER_FILE and os.path.isdir(path):
        files = sorted(f for pattern in PER_FILE[fmt] for f in list_files(path, pattern))
    return images, [item for f in files for item in convert(task, fmt, f)]


def later_reject(example: Example, images: str) -> Invalid | None:
    """What stage 2 does after the converter (pipelines/stage2.MakeSamples without Beam): read the image,
    normalize the boxes, check the example renders."""
    if example.task != "text":
        data = example.image_bytes
        if data is None:
            path = os.path.join(images, example.image)
            if not os.path.exists(path):
                return Invalid(example.source, example.key, IMAGE_MISSING, path)
            data = open(path, "rb").read()
        width, height = example.width, example.height
        if not (width and height):
            width, height = Image.open(io.BytesIO(data)).size
        example = normalize_example(example, width, height)
        if isinstance(example, Invalid):
            return example
    return check(example)


def test_manifest_is_written_and_returned(sample):
    output, manifest = sample
    assert json.loads((output / MANIFEST).read_text()) == manifest
    assert set(manifest["sets"]) == {*SETS, "sft"}
    sources = [manifest["stage2_args"][i + 1] for i, a in enumerate(manifest["stage2_args"]) if a == "--source"]
    assert sources == [manifest["sets"][s]["source"] for s in SETS]
    images = [manifest["stage2_args"][i + 1] for i, a in enumerate(manifest["stage2_args"]) if a == "--images"]
    assert sorted(images) == sorted({manifest["sets"][s]["images"] for s in SETS if manifest["sets"][s]["images"]})
    assert manifest["sft_args"] == ["--input", str(output / "chat" / "chat.json"), "--images", str(output / "chat")]
    for name in SETS:
        entry = manifest["sets"][name]
        assert entry["records"] >= (3 if name in RENDERED_PAGES else 10)
        assert entry["planted"] or name == "ocr:synthetic"  # pages made here: nothing to plant
        assert {p["caught_by"] for p in entry["planted"]} <= {CONVERTER, STAGE2}


@pytest.mark.parametrize("name", SETS)
def test_converter_counts_and_planted_rejects(sample, name):
    _, manifest = sample
    entry = manifest["sets"][name]
    images, items = converted(entry)
    examples = [i for i in items if isinstance(i, Example)]
    invalids = [i for i in items if isinstance(i, Invalid)]
    assert len(items) == entry["records"]
    assert len(examples) == entry["examples"]
    assert sorted((i.key, i.reason) for i in invalids) == sorted((p["key"], p["reason"]) for p in entry["planted"] if p["caught_by"] == CONVERTER)
    assert len({e.key for e in examples}) == len(examples)  # keys are unique: the uid is made from them

    later = [r for r in (later_reject(e, images) for e in examples) if r is not None]
    assert sorted((r.key, r.reason) for r in later) == sorted((p["key"], p["reason"]) for p in entry["planted"] if p["caught_by"] == STAGE2)
    assert len(examples) - len(later) == entry["samples"]


def test_refcoco_skips_its_other_splits(sample):
    output, manifest = sample
    from formats.sources.refer import read_refcoco

    every = list(read_refcoco(str(output / "refer" / "refcoco"), "referring", split=None))
    assert manifest["sets"]["referring:refcoco"]["other_split_refs"] > 0
    assert len(every) > manifest["sets"]["referring:refcoco"]["records"]


def colour_box(image: Image.Image, colour: str) -> tuple[int, int, int, int]:
    """The pixel box (x2, y2 exclusive) of the pixels of `colour`."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    close = np.abs(pixels - np.array(COLOURS[colour])).max(axis=2) < 45
    ys, xs = np.nonzero(close)
    assert len(xs) > 50, f"no {colour} shape"
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def named_colour(text: str) -> str | None:
    """The one shape colour a text names (None for a text about the background or more than one shape)."""
    found = [c for c in COLOURS if re.search(rf"\b{c}\b", text)]
    return found[0] if len(found) == 1 and "background" not in text and not any(b in text for b in BACKGROUNDS if " " in b) else None


def assert_box_on_shape(box, image: Image.Image, colour: str):
    """A box on the 1000 grid is where the shape of that colour was drawn, to within 6 px (JPEG blurs edges)."""
    width, height = image.size
    drawn = normalize_box(colour_box(image, colour), width, height)
    tolerance = (6 * 1000 // width + 1, 6 * 1000 // height + 1) * 2
    assert all(abs(a - b) <= t for a, b, t in zip(box, drawn, tolerance)), (box, drawn, colour)


@pytest.mark.parametrize("name", ["referring:refcoco", "grounded_caption:vg", "grounding:grit"])
def test_boxes_are_where_the_shapes_are(sample, name):
    _, manifest = sample
    images, items = converted(manifest["sets"][name])
    checked = 0
    for example in items:
        if not isinstance(example, Example) or later_reject(example, images) is not None:
            continue
        data = example.image_bytes or open(os.path.join(images, example.image), "rb").read()
        image = Image.open(io.BytesIO(data))
        normed = normalize_example(example, *image.size)
        labelled = [(normed.text, r) for r in normed.regions] + [(normed.text[s.start : s.end], r) for s in normed.spans for r in s.regions]
        for text, region in labelled:
            colour = named_colour(text)
            if colour:
                assert_box_on_shape(region.box, image, colour)
                checked += 1
    assert checked >= 20


def test_one_referring_example(sample):
    """The brief's check, spelled out: a RefCOCO expression's box, normalized, is its shape's."""
    _, manifest = sample
    images, items = converted(manifest["sets"]["referring:refcoco"])
    example = next(e for e in items if isinstance(e, Example) and later_reject(e, images) is None and named_colour(e.text))
    image = Image.open(os.path.join(images, example.image))
    assert image.size == (example.width, example.height)
    [region] = normalize_example(example).regions
    assert_box_on_shape(region.box, image, named_colour(example.text))


def test_ocr_regions_hold_the_ink(sample):
    output, manifest = sample
    images, items = converted(manifest["sets"]["ocr:jsonl"])
    pages = 0
    for example in items:
        if not isinstance(example, Example) or later_reject(example, images) is not None:
            continue
        image = Image.open(os.path.join(images, example.image))
        mask = Image.new("L", image.size, 0)
        draw = ImageDraw.Draw(mask)
        for text, region in example.lines:
            assert text.strip()
            points = region.quad or ((region.box[0], region.box[1]), (region.box[2], region.box[1]), (region.box[2], region.box[3]), (region.box[0], region.box[3]))
            draw.polygon(points, fill=255)
            line = Image.new("L", image.size, 0)
            ImageDraw.Draw(line).polygon(points, fill=255)
            ink = (np.asarray(image.convert("L")) < 128) & (np.asarray(line) > 0)
            assert ink.sum() > 20, f"{example.key}: no ink in the region of {text!r}"
        ink = np.asarray(image.convert("L")) < 128
        grown = mask.filter(ImageFilter.MaxFilter(5))  # the regions grown by 2 px: rotation and JPEG blur the edges
        assert not (ink & (np.asarray(grown) == 0)).any(), f"{example.key}: ink outside the line regions"
        assert all(isinstance(v, (int, float)) for _, r in example.lines for v in (r.box or [c for p in r.quad for c in p]))
        pages += 1
    assert pages == manifest["sets"]["ocr:jsonl"]["samples"]
    quads = [r for e in items if isinstance(e, Example) for _, r in e.lines if r.quad]
    rotated = [q for q in quads if q.quad[0][1] != q.quad[1][1]]
    assert rotated and len(quads) < sum(len(e.lines) for e in items if isinstance(e, Example))  # rotated quads, and boxes too


def test_text_has_documents_longer_than_a_sequence(sample):
    _, manifest = sample
    _, items = converted(manifest["sets"]["text:text"])
    tokenizer = QwenTokenizer()
    lengths = [len(tokenizer.encode(e.text)) for e in items if isinstance(e, Example)]
    assert sum(n > 2048 for n in lengths) == manifest["sets"]["text:text"]["long_documents"] == 3
    assert any(n < 2048 for n in lengths)
    assert any(e.lang == "zh" for e in items if isinstance(e, Example))


def test_chat_renders(sample):
    output, manifest = sample
    entry = manifest["sets"]["sft"]
    records = json.loads(open(entry["input"]).read())
    assert len(records) == entry["records"]
    rendered = [render(r, "chat") for r in records]
    refused = [c for c in rendered if isinstance(c, Invalid)]
    missing = [c for c in rendered if isinstance(c, Chat) and any(not os.path.exists(os.path.join(entry["images"], p)) for p in c.images)]
    found = [(c.key, c.reason) for c in refused] + [(c.key, IMAGE_MISSING) for c in missing]
    assert sorted(found) == sorted((p["key"], p["reason"]) for p in entry["planted"])
    good = [c for c in rendered if isinstance(c, Chat) and c not in missing]
    assert len(good) == entry["samples"]
    assert {len(c.images) for c in good} == {1, 2}
    turns = {c.text.count("<|im_start|>assistant") for c in good}
    assert min(turns) == 1 and max(turns) <= 3 and len(turns) > 1
    assert any("<ref>" in c.text and "<box>" in c.text for c in good)
    for record in records:  # image paths are relative to chat/, as the public format writes them
        for path in re.findall(r"<img>(.*?)</img>", json.dumps(record)):
            assert not os.path.isabs(path) and path.startswith("images/")
    QwenTokenizer().encode_segments(good[0].segments)  # the rendered text tokenizes


def tree_digest(folder) -> dict:
    return {os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(folder) for f in files if f != MANIFEST}


def test_deterministic_for_a_seed(tmp_path):
    first = make_stage2_sample(str(tmp_path / "a"), seed=3, per_set=16)
    second = make_stage2_sample(str(tmp_path / "b"), seed=3, per_set=16)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert json.dumps(first).replace(str(tmp_path / "a"), "") == json.dumps(second).replace(str(tmp_path / "b"), "")
    make_stage2_sample(str(tmp_path / "c"), seed=4, per_set=16)
    other = tree_digest(tmp_path / "c")
    assert other.keys() != tree_digest(tmp_path / "a").keys() or other != tree_digest(tmp_path / "a")


@pytest.mark.parametrize("per_set", [12, 25, 120])
def test_other_sizes_keep_their_counts(tmp_path, per_set):
    manifest = make_stage2_sample(str(tmp_path), seed=1, per_set=per_set)
    for name in SETS:
        entry = manifest["sets"][name]
        _, items = converted(entry)
        assert len(items) == entry["records"]
        assert sum(isinstance(i, Example) for i in items) == entry["examples"]
    assert manifest["sets"]["vqa:vqav2"]["records"] == per_set


def test_too_small_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 12"):
        make_stage2_sample(str(tmp_path), per_set=5)
