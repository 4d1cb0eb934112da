"""A deterministic synthetic stage-2 input: one small data set per converter, each in its published layout,
with images rendered here, so that `beam_runner.py stage2` (and `sft`) run every task offline.

`make_stage2_sample(output, seed, per_set)` writes, under OUTPUT:

    coco/train2014/COCO_train2014_%012d.jpg       the COCO images (VQA v2, COCO Captions and RefCOCO share them)
    coco/annotations/captions_train2014.json      COCO Captions: {info, licenses, images, annotations}
    vqav2/v2_OpenEnded_mscoco_train2014_questions.json, vqav2/v2_mscoco_train2014_annotations.json
    refer/refcoco/refs(unc).p, refer/refcoco/instances.json   the refer toolkit's layout (a protocol-2 pickle)
    grit/00000.parquet, grit/00001.parquet (+ _stats.json)    img2dataset's parquet output of GRIT: its
                                                  metadata columns, GRIT's id/noun_chunks/ref_exps, the image in `jpg`
    vg/image_data.json, vg/region_descriptions.json, vg/VG_100K/ID.jpg, vg/VG_100K_2/ID.jpg   Visual Genome v1.2
    ocr/pages.jsonl, ocr/images/NNNN.jpg          our OCR manifest (formats/sources/ocr.py): rendered text lines
    pdf/doc-N.pdf, pdf/broken.pdf                 PDF pages for OCR (formats/sources/pdf.py): lines of prose
    html/page-N.html                              HTML pages for OCR (formats/sources/html_pages.py): paragraphs
    ocr-synth/pages.jsonl, ocr-synth/images/      synthetic document pages (synthetic/documents.py) from the text set
    text/docs.jsonl                               pure text, some documents longer than 2048 tokens
    chat/chat.json, chat/images/NNN.jpg           the public fine-tuning list (formats/chatml.py), 1-3 turns
    chat/messages.jsonl, chat/videos/clip.mp4     the same in the messages layout, and two about a video (qwen2-vl)
    video/captions.jsonl, video/qa.jsonl, video/clips/   video captions and QA (formats/sources/video.py; qwen2-vl)
    stage2_sample.json                            what to pass to stage2 and sft, and what each set must give

Each data set's fields are those its converter reads (formats/sources/*.py, whose docstrings cite the
published layouts) plus the fields the real files carry beside them (question_type, answer_confidence,
sentences' raw and tokens, img2dataset's status and sha256...). Departures: COCO's image entries carry
no coco_url or flickr_url and GRIT's rows no CLIP similarities (the images are ours, nothing to link or
score); RefCOCO's and instances.json's categories are the shapes, not COCO's 80.

The images are scenes of two to four shapes (square, rectangle, circle, ellipse, triangle), each in a
colour no other shape of its scene has, at known pixel boxes, on a plain background; sizes vary from
320 to 800 px, square and not. So every text is true: "the red rectangle on the left" names exactly one
shape, its box is where that shape was drawn (a shape's box is [x1, x2) x [y1, y2): x2 - x1 pixels
wide, as COCO's [x, y, width, height]), the VQA answers and captions describe the scene. The OCR pages
are text lines rendered with Pillow's bundled font (ImageFont.load_default at a size), some rotated,
each recorded with its true box or quad (clockwise from the text's top-left corner).

Every set also holds a few planted bad records, recorded in stage2_sample.json with the reject each
must give and where: `converter` (the converter yields an Invalid: a malformed record, a failed download,
a row without regions) or `stage2` (later in the pipeline: the image file is missing, a box lies outside
its image (formats/boxes.py), a text holds a special token (formats/templates.py), a conversation is
refused by formats/chatml.render). Per set: `records` is what the converter goes through (questions,
caption annotations, the train split's sentences plus one per unusable ref, regions, rows, lines,
conversations), `examples` = records - converter rejects, `samples` = examples - stage-2 rejects.
Refs of RefCOCO's other splits (val, testA) are written too; the converter skips them by design, so
they are counted apart (`other_split_refs`), never as rejects.

Deterministic: each set draws from its own random.Random seeded with (seed, set), so the files are
byte-identical for a seed and one set's size never shifts another's content.
"""

import hashlib
import io
import json
import math
import os
import pickle
import random
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pymupdf
from PIL import Image, ImageDraw, ImageFont

from formats.boxes import normalize_box
from formats.reasons import (BOX_OUTSIDE_IMAGE, CHAT_MEDIA_COUNT, CHAT_TURN_ORDER, CHAT_UNKNOWN_ROLE, DOWNLOAD_FAILED, FILE_UNREADABLE, IMAGE_MISSING, MALFORMED, NO_REGIONS, PAGE_TOO_FEW_CHARS, TEXT_SPECIAL_TOKEN, VIDEO_UNREADABLE)
from formats import schemas
from synthetic.ocr_sample import make_ocr_sample
from synthetic.videos import write_video

CONVERTER, STAGE2 = "converter", "stage2"  # where a planted record is caught
MANIFEST = "stage2_sample.json"

COLOURS = {  # name -> RGB, far apart so that a shape's pixels are told from the others' and the background's
    "red": (215, 35, 35),
    "blue": (35, 75, 215),
    "green": (30, 160, 60),
    "yellow": (240, 205, 20),
    "orange": (250, 130, 10),
    "purple": (130, 50, 175),
    "black": (20, 20, 20),
}
BACKGROUNDS = {"white": (250, 250, 250), "grey": (200, 200, 200), "beige": (235, 222, 190), "light blue": (200, 225, 245)}
KINDS = ("square", "rectangle", "circle", "ellipse", "triangle")
SIZES = ((640, 480), (480, 640), (320, 320), (800, 600), (512, 384), (800, 450), (375, 500), (600, 400),
         (427, 640), (720, 540), (333, 500), (640, 427), (500, 500), (800, 533))
NUMBERS = ("zero", "one", "two", "three", "four", "five")
JPEG_QUALITY = 90
FIXED_TIME = 1_700_000_000


# --- scenes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2 and y2 exclusive

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: str
    shapes: tuple[Shape, ...]

    def position(self, shape: Shape) -> str | None:
        """Where the shape is, when it is clearly somewhere: "on the left", "at the top"..."""
        x1, y1, x2, y2 = shape.box
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        if cx < self.width / 3:
            return "on the left"
        if cx > 2 * self.width / 3:
            return "on the right"
        if cy < self.height / 3:
            return "at the top"
        if cy > 2 * self.height / 3:
            return "at the bottom"
        return None

    def described(self, shape: Shape) -> str:
        pos = self.position(shape)
        return f"{shape.name} {pos}" if pos else shape.name


def make_scene(rng: random.Random, size: tuple[int, int] | None = None) -> Scene:
    """Two to four shapes of distinct colours, apart from each other and inside the image."""
    width, height = size or rng.choice(SIZES)
    colours = rng.sample(sorted(COLOURS), len(COLOURS))
    wanted = rng.randint(2, 4)
    shapes: list[Shape] = []
    short = min(width, height)
    for _ in range(400):
        if len(shapes) == wanted:
            break
        kind = rng.choice(KINDS)
        side = rng.uniform(0.16, 0.32) * short
        if kind in ("rectangle", "ellipse"):
            aspect = rng.choice((rng.uniform(1.6, 2.2), 1 / rng.uniform(1.6, 2.2)))
            w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
        else:
            w = h = side
        w, h = int(min(w, width * 0.45)), int(min(h, height * 0.45))
        x1, y1 = rng.randint(8, width - w - 8), rng.randint(8, height - h - 8)
        box = (x1, y1, x1 + w, y1 + h)
        gap = 10
        if any(box[0] < b[2] + gap and b[0] < box[2] + gap and box[1] < b[3] + gap and b[1] < box[3] + gap for b in (s.box for s in shapes)):
            continue
        shapes.append(Shape(colours[len(shapes)], kind, box))
    if len(shapes) < 2:  # cannot happen at these sizes; kept so a scene is never trivial
        raise RuntimeError("could not place two shapes")
    return Scene(width, height, rng.choice(sorted(BACKGROUNDS)), tuple(shapes))


def draw_scene(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene.width, scene.height), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x1, y1, x2, y2 = shape.box
        fill = COLOURS[shape.colour]
        if shape.kind in ("square", "rectangle"):
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif shape.kind in ("circle", "ellipse"):
            draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        else:
            draw.polygon([(x1, y2 - 1), ((x1 + x2 - 1) / 2, y1), (x2 - 1, y2 - 1)], fill=fill)
    return image


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write_json(path: str, data, **kwargs) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, **kwargs)


def write_jsonl(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def planted(key: str, reason: str, caught_by: str, what: str) -> dict:
    return {"key": key, "reason": reason, "caught_by": caught_by, "what": what}


def summary(source: str, images: str | None, records: int, bad: list[dict], **more) -> dict:
    at_converter = sum(p["caught_by"] == CONVERTER for p in bad)
    examples = records - at_converter
    return {"source": source, "images": images, "records": records, "examples": examples,
            "samples": examples - (len(bad) - at_converter), "planted": bad, **more}


def _rng(seed: int, name: str) -> random.Random:
    return random.Random(f"{seed}:{name}")


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- COCO images, VQA v2, COCO Captions, RefCOCO -------------------------------------------------

COCO_NAME = "COCO_train2014_{:012d}.jpg"


@dataclass(frozen=True)
class CocoImage:
    id: int
    scene: Scene

    @property
    def file_name(self) -> str:
        return COCO_NAME.format(self.id)


def make_coco_images(output: str, seed: int, count: int) -> tuple[list[CocoImage], CocoImage]:
    """`count` COCO images written to coco/train2014/, and one more whose file is never written."""
    rng = _rng(seed, "coco")
    ids = rng.sample(range(9, 581_930), count + 1)
    images = [CocoImage(i, make_scene(rng)) for i in ids]
    for image in images[:-1]:
        write_bytes(os.path.join(output, "coco", "train2014", image.file_name), jpeg(draw_scene(image.scene)))
    return images[:-1], images[-1]


def vqa_questions(rng: random.Random, scene: Scene) -> list[tuple[str, str, str, str]]:
    """(question, answer, question_type, answer_type) about the scene, all true."""
    kinds = [s.kind for s in scene.shapes]
    out = [("How many shapes are there?", str(len(scene.shapes)), "how many", "number"),
           ("What color is the background?", scene.background, "what color is the", "other")]
    for shape in scene.shapes:
        out.append((f"What shape is the {shape.colour} object?", shape.kind, "what shape is the", "other"))
        if kinds.count(shape.kind) == 1:
            out.append((f"What color is the {shape.kind}?", shape.colour, "what color is the", "other"))
    present = {s.name for s in scene.shapes}
    shape = rng.choice(scene.shapes)
    other = f"{rng.choice([c for c in COLOURS if c != shape.colour])} {shape.kind}"
    for name in (shape.name, other):
        out.append((f"Is there a {name} in the picture?", "yes" if name in present else "no", "is there a", "yes/no"))
    rng.shuffle(out)
    return out


def vqa_answers(rng: random.Random, answer: str, answer_type: str) -> list[dict]:
    """Ten annotators' answers, most of them the true one (so the majority answer is it)."""
    wrong = {"number": [str(n) for n in range(1, 6) if str(n) != answer], "yes/no": ["no" if answer == "yes" else "yes"]}
    pool = wrong.get(answer_type) or [a for a in (*COLOURS, *KINDS, *BACKGROUNDS) if a != answer]
    given = [answer] * 10
    for i in rng.sample(range(10), rng.randint(0, 3)):
        given[i] = rng.choice(pool)
    return [{"answer": a, "answer_confidence": rng.choice(("yes", "yes", "maybe")) if a == answer else rng.choice(("maybe", "no")),
             "answer_id": i + 1} for i, a in enumerate(given)]


def make_vqav2(output: str, seed: int, n: int, images: list[CocoImage], missing: CocoImage) -> dict:
    rng = _rng(seed, "vqav2")
    questions, annotations = [], []
    per_image = {image.id: vqa_questions(rng, image.scene) for image in [*images, missing]}

    def add(image: CocoImage, annotate: bool = True, drop: str | None = None) -> str:
        asked = sum(q["image_id"] == image.id for q in questions)
        question, answer, qtype, atype = per_image[image.id][asked % len(per_image[image.id])]
        question_id = image.id * 1000 + asked
        record = {"image_id": image.id, "question": question, "question_id": question_id}
        if drop:
            del record[drop]
        questions.append(record)
        if annotate:
            annotations.append({"question_type": qtype, "multiple_choice_answer": answer, "answers": vqa_answers(rng, answer, atype),
                                "image_id": image.id, "answer_type": atype, "question_id": question_id})
        return str(question_id)

    bad = []
    good = n - 3
    for i in range(good):
        add(images[i % len(images)])
    bad.append(planted(add(rng.choice(images), annotate=False), MALFORMED, CONVERTER, "a question with no annotation"))
    bad.append(planted(add(rng.choice(images), drop="question"), MALFORMED, CONVERTER, "a question without its 'question' field"))
    bad.append(planted(add(missing), IMAGE_MISSING, STAGE2, f"a question on {missing.file_name}, which is not in train2014/"))
    order = list(range(len(questions)))
    rng.shuffle(order)
    questions = [questions[i] for i in order]
    folder = os.path.join(output, "vqav2")
    info = {"description": "synthetic VQA v2 sample (synthetic/annotated_sets.py)", "version": "2.0", "year": 2017}
    license = {"name": "Creative Commons Attribution 4.0 International License", "url": "http://creativecommons.org/licenses/by/4.0/"}
    write_json(os.path.join(folder, "v2_OpenEnded_mscoco_train2014_questions.json"),
               {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": license, "data_subtype": "train2014", "questions": questions})
    write_json(os.path.join(folder, "v2_mscoco_train2014_annotations.json"),
               {"info": info, "license": license, "data_subtype": "train2014", "annotations": annotations, "data_type": "mscoco"})
    return summary(f"vqa:vqav2={folder}", f"vqav2={os.path.join(output, 'coco', 'train2014')}", len(questions), bad)


def coco_captions_of(rng: random.Random, scene: Scene) -> list[str]:
    names = [s.name for s in scene.shapes]
    a = [f"a {n}" if n[0] not in "aeiou" else f"an {n}" for n in names]
    count = NUMBERS[len(names)]
    first = rng.choice(scene.shapes)
    captions = [
        f"{_and(a)} on a {scene.background} background",
        f"{count} coloured shapes on a plain {scene.background} background",
        f"a simple drawing of {_and(a)}",
        f"{count} flat shapes, one of them {'an' if first.name[0] in 'aeiou' else 'a'} {scene.described(first)}",
        f"a {scene.background} picture with {_and(a)}",
        f"some geometric shapes including {a[-1]}",
    ]
    rng.shuffle(captions)
    return [_sentence(c) for c in captions[:5]]


def make_coco_captions(output: str, seed: int, n: int, images: list[CocoImage], missing: CocoImage) -> dict:
    rng = _rng(seed, "coco-captions")
    ann_ids = iter(rng.sample(range(10_000, 830_000), n))
    annotations, bad = [], []
    good = n - 4
    for image in images * (good // (5 * len(images)) + 1):
        if len(annotations) == good:
            break
        for caption in coco_captions_of(rng, image.scene)[: good - len(annotations)]:
            annotations.append({"image_id": image.id, "id": next(ann_ids), "caption": caption})
    unknown = next(i for i in range(1, 1_000_000) if i not in {im.id for im in [*images, missing]})
    record = {"image_id": unknown, "id": next(ann_ids), "caption": "A red square next to a blue circle."}
    annotations.append(record)
    bad.append(planted(str(record["id"]), MALFORMED, CONVERTER, f"an annotation whose image_id {unknown} is not in images[]"))
    record = {"image_id": images[0].id, "id": next(ann_ids)}
    annotations.append(record)
    bad.append(planted(str(record["id"]), MALFORMED, CONVERTER, "an annotation without its caption"))
    record = {"image_id": missing.id, "id": next(ann_ids), "caption": coco_captions_of(rng, missing.scene)[0]}
    annotations.append(record)
    bad.append(planted(str(record["id"]), IMAGE_MISSING, STAGE2, f"a caption of {missing.file_name}, listed in images[] but not in train2014/"))
    record = {"image_id": images[-1].id, "id": next(ann_ids), "caption": coco_captions_of(rng, images[-1].scene)[0] + "<|endoftext|>"}
    annotations.append(record)
    bad.append(planted(str(record["id"]), TEXT_SPECIAL_TOKEN, STAGE2, "a caption spelling <|endoftext|>"))
    rng.shuffle(annotations)
    listed = sorted({im.id: im for im in [*images, missing]}.values(), key=lambda im: im.id)
    data = {
        "info": {"description": "synthetic COCO Captions sample (synthetic/annotated_sets.py)", "version": "1.0", "year": 2014},
        "licenses": [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"}],
        "images": [{"license": 4, "file_name": im.file_name, "height": im.scene.height, "width": im.scene.width,
                    "date_captured": "2013-11-14 16:28:13", "id": im.id} for im in listed],
        "annotations": annotations,
    }
    path = os.path.join(output, "coco", "annotations", "captions_train2014.json")
    write_json(path, data)
    return summary(f"caption:coco={path}", f"coco={os.path.join(output, 'coco', 'train2014')}", len(annotations), bad)


CATEGORIES = [{"supercategory": "shape", "id": i + 1, "name": k} for i, k in enumerate(KINDS)]


def refcoco_expressions(scene: Scene, shape: Shape) -> list[str]:
    """Expressions that name exactly this shape of the scene (its colour is its own), as RefCOCO's sent."""
    pos = scene.position(shape)
    out = [f"{shape.colour} {shape.kind}", f"the {shape.name}"]
    out.append(f"{shape.name} {pos}" if pos else f"{shape.colour} one")
    if pos:
        out.append(f"{shape.colour} {shape.kind.split()[-1]} {pos.split()[-1]}")
    return out


def make_refcoco(output: str, seed: int, n: int, images: list[CocoImage], missing: CocoImage) -> dict:
    """refs(unc).p and instances.json. Every shape of every image is an instance; the refs are on them."""
    rng = _rng(seed, "refcoco")
    ann_ids = iter(rng.sample(range(100_000, 2_200_000), sum(len(im.scene.shapes) for im in [*images, missing]) + 1))
    instances_images, anns, targets = [], [], []  # targets: (image, shape, ann_id)
    for image in [*images, missing]:
        scene = image.scene
        instances_images.append({"license": 4, "file_name": image.file_name, "height": scene.height, "width": scene.width,
                                 "date_captured": "2013-11-14 16:28:13", "id": image.id})
        for shape in scene.shapes:
            x1, y1, x2, y2 = shape.box
            ann_id = next(ann_ids)
            anns.append({"segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]], "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0,
                         "image_id": image.id, "bbox": [x1, y1, x2 - x1, y2 - y1], "category_id": KINDS.index(shape.kind) + 1, "id": ann_id})
            targets.append((image, shape, ann_id))
    # RefCOCO splits by image: the last image that is written goes to val, the one before to testA
    other_split = {images[-1].id: "val", images[-2].id: "testA"}
    train = [t for t in targets if t[0].id not in other_split and t[0] is not missing]
    refs, bad = [], []
    next_ref, next_sent = rng.randint(1, 40_000), rng.randint(1, 100_000)

    def add_ref(image: CocoImage, shape: Shape, ann_id: int, sentences: int, split: str = "train", drop_sent: bool = False) -> tuple[int, list[int]]:
        nonlocal next_ref, next_sent
        chosen = rng.sample(refcoco_expressions(image.scene, shape), sentences)
        sents = []
        for sent in chosen:
            sents.append({"tokens": sent.split(), "raw": _sentence(sent), "sent_id": next_sent, "sent": sent})
            next_sent += 1
        if drop_sent:
            del sents[0]["sent"]
        refs.append({"sent_ids": [s["sent_id"] for s in sents], "file_name": f"COCO_train2014_{image.id:012d}_{ann_id}.jpg", "ann_id": ann_id,
                     "ref_id": next_ref, "image_id": image.id, "split": split, "sentences": sents, "category_id": KINDS.index(shape.kind) + 1})
        next_ref += 1
        return len(refs) - 1, [s["sent_id"] for s in sents]

    good = n - 4
    counts = [1] * min(good, len(train))
    while sum(counts) < good:
        i = rng.randrange(len(counts))
        if counts[i] < 3:
            counts[i] += 1
    if sum(counts) != good:
        raise RuntimeError("not enough shapes for the RefCOCO sentences")
    for (image, shape, ann_id), k in zip(train, counts):
        add_ref(image, shape, ann_id, k)
    for image, shape, ann_id in targets:
        if image.id in other_split:
            add_ref(image, shape, ann_id, rng.randint(1, 2), split=other_split[image.id])
    other = len(refs) - len(counts)
    image, shape, _ = train[0]
    index, _ = add_ref(image, shape, next(ann_ids), 1)  # an ann_id that instances.json does not have
    bad.append(planted(f"refs(unc).p:{index}", MALFORMED, CONVERTER, "a ref whose ann_id is not in instances.json"))
    image, shape, ann_id = train[1]
    _, [sent_id] = add_ref(image, shape, ann_id, 1, drop_sent=True)
    bad.append(planted(str(sent_id), MALFORMED, CONVERTER, "a sentence without its 'sent'"))
    image, shape, ann_id = next(t for t in targets if t[0] is missing)
    _, [sent_id] = add_ref(image, shape, ann_id, 1)
    bad.append(planted(str(sent_id), IMAGE_MISSING, STAGE2, f"a ref on {missing.file_name}, which is not in train2014/"))
    # a box outside the image: an instance of the first train image placed beyond its right edge
    image = train[2][0]
    outside = {"segmentation": [[1, 1, 2, 1, 2, 2]], "area": 400.0, "iscrowd": 0, "image_id": image.id,
               "bbox": [image.scene.width + 15, 10, 20, 20], "category_id": 1, "id": next(i for i in range(1, 10**6) if i not in {a["id"] for a in anns})}
    anns.append(outside)
    shape = Shape(rng.choice(sorted(COLOURS)), "square", (0, 0, 1, 1))
    _, [sent_id] = add_ref(image, shape, outside["id"], 1)
    bad.append(planted(str(sent_id), BOX_OUTSIDE_IMAGE, STAGE2, f"a ref whose bbox {outside['bbox']} lies beyond the {image.scene.width}x{image.scene.height} image"))
    folder = os.path.join(output, "refer", "refcoco")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "refs(unc).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)  # the toolkit's files come from Python 2's cPickle
    write_json(os.path.join(folder, "instances.json"), {
        "info": {"description": "synthetic RefCOCO sample (synthetic/annotated_sets.py)"}, "images": instances_images,
        "licenses": [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"}],
        "type": "instances", "annotations": anns, "categories": CATEGORIES})
    records = good + len(bad)
    images_arg = f"refcoco={os.path.join(output, 'coco', 'train2014')}"
    return {task: summary(f"{task}:refcoco={folder}", images_arg, records, bad, other_split_refs=other)
            for task in ("referring", "grounded_caption")}


# --- GRIT ----------------------------------------------------------------------------------------

GRIT_SCHEMA = schemas.IMG2DATASET_METADATA.append(pa.field("id", pa.int64())) \
    .append(pa.field("noun_chunks", pa.list_(pa.list_(pa.float64())))) \
    .append(pa.field("ref_exps", pa.list_(pa.list_(pa.float64())))) \
    .append(pa.field("jpg", pa.binary()))
GRIT_SHARD_SIZE = 10_000  # img2dataset's number_sample_per_shard default: keys have 4 + 5 digits


def grit_caption(scene: Scene) -> tuple[str, list[list[float]], list[list[float]]]:
    """A caption naming each shape, its noun chunks ("a red square") and referring expressions ("a red
    square on the left", or the chunk itself), with boxes as fractions of the image."""
    caption, chunks, refs = "", [], []
    shapes = sorted(scene.shapes, key=lambda s: s.box[0])
    for i, shape in enumerate(shapes):
        if i:
            caption += " and " if i == len(shapes) - 1 else ", "
        start = len(caption)
        caption += ("an " if shape.name[0] in "aeiou" else "a ") + shape.name
        end = len(caption)
        pos = scene.position(shape)
        if pos:
            caption += " " + pos
        x1, y1, x2, y2 = shape.box
        box = [x1 / scene.width, y1 / scene.height, x2 / scene.width, y2 / scene.height]
        score = round(0.55 + 0.4 * ((x1 * 7 + y1 * 3) % 100) / 100, 4)
        chunks.append([float(start), float(end), *box, score])
        refs.append([float(start), float(len(caption)), *box, score])
    caption += f", on a {scene.background} background"
    return caption, chunks, refs


def make_grit(output: str, seed: int, n: int) -> dict:
    rng = _rng(seed, "grit")
    folder = os.path.join(output, "grit")
    rows = []
    bad_at = dict(zip(rng.sample(range(n), 4), ("failed", "span", "empty", "outside")))
    bad = []
    for i in range(n):
        shard, index = divmod(i, (n + 1) // 2)
        key = f"{shard * GRIT_SHARD_SIZE + index:09d}"
        scene = make_scene(rng)
        caption, chunks, refs = grit_caption(scene)
        kind = bad_at.get(i)
        url = f"https://images.example.com/grit/{hashlib.sha1(f'{seed}:{i}'.encode()).hexdigest()[:16]}.jpg"
        row = {"caption": caption, "url": url, "key": key, "status": "success", "error_message": None, "width": scene.width, "height": scene.height,
               "original_width": scene.width, "original_height": scene.height, "exif": "{}", "sha256": None,
               "id": rng.randrange(10**12, 10**13), "noun_chunks": chunks, "ref_exps": refs, "jpg": None, "_shard": shard}
        if kind == "failed":
            row.update(status="failed_to_download", error_message="<urlopen error [Errno -2] Name or service not known>",
                       width=None, height=None, original_width=None, original_height=None, exif=None)
            bad.append(planted(key, DOWNLOAD_FAILED, CONVERTER, "a row img2dataset could not download"))
        else:
            if kind == "span":
                row["noun_chunks"] = [*chunks[:-1], [float(len(caption) - 3), float(len(caption) + 9), *chunks[-1][2:]]]
                bad.append(planted(key, MALFORMED, CONVERTER, "a noun chunk running past the caption's end"))
            elif kind == "empty":
                row.update(noun_chunks=[], ref_exps=[])
                bad.append(planted(key, NO_REGIONS, CONVERTER, "a row with no noun chunk and no referring expression"))
            elif kind == "outside":
                extra = " beside a white sticker"
                start = len(caption)
                row["caption"] = caption + extra
                sticker = [float(start + 8), float(len(caption + extra)), 1.05, 0.2, 1.3, 0.4, 0.6]  # "a white sticker", beyond the right edge
                row.update(noun_chunks=[*chunks, sticker], ref_exps=[*refs, sticker])
                bad.append(planted(key, BOX_OUTSIDE_IMAGE, STAGE2, "a noun chunk whose box lies beyond the image's right edge"))
            data = jpeg(draw_scene(scene))
            row.update(jpg=data, sha256=hashlib.sha256(data).hexdigest())
        rows.append(row)
    os.makedirs(folder, exist_ok=True)
    for shard in sorted({r["_shard"] for r in rows}):
        part = [r for r in rows if r["_shard"] == shard]
        table = pa.table({f.name: pa.array([r[f.name] for r in part], f.type) for f in GRIT_SCHEMA}, schema=GRIT_SCHEMA)
        pq.write_table(table, os.path.join(folder, f"{shard:05d}.parquet"), row_group_size=100)
        successes = sum(r["status"] == "success" for r in part)
        write_json(os.path.join(folder, f"{shard:05d}_stats.json"), {
            "count": len(part), "successes": successes, "failed_to_download": len(part) - successes, "failed_to_resize": 0,
            "duration": 1.0, "start_time": FIXED_TIME, "end_time": FIXED_TIME + 1,
            "status_dict": {"success": successes, **({"<urlopen error [Errno -2] Name or service not known>": len(part) - successes} if successes < len(part) else {})},
        }, indent=4)
    return summary(f"grounding:grit={folder}", None, n, bad)


# --- Visual Genome -------------------------------------------------------------------------------


def vg_phrases(scene: Scene, shape: Shape) -> list[str]:
    pos = scene.position(shape)
    out = [f"{'an' if shape.name[0] in 'aeiou' else 'a'} {shape.name}", f"{shape.name} {pos}" if pos else f"the {shape.name}"]
    return out


def make_vg(output: str, seed: int, n: int) -> dict:
    rng = _rng(seed, "vg")
    folder = os.path.join(output, "vg")
    good = n - 4
    ids = iter(rng.sample(range(1, 2_417_998), n + 4))
    region_ids = iter(rng.sample(range(1, 5_000_000), n + 4))
    image_data, entries, bad = [], [], []
    count = 0
    scenes = {}

    def new_image(write: bool = True) -> tuple[int, Scene]:
        image_id = next(ids)
        scene = make_scene(rng)
        sub = "VG_100K" if image_id < 2_400_000 and image_id % 3 else "VG_100K_2"
        image_data.append({"width": scene.width, "url": f"https://cs.stanford.edu/people/rak248/{sub}/{image_id}.jpg", "height": scene.height,
                           "image_id": image_id, "coco_id": None, "flickr_id": None})
        if write:
            write_bytes(os.path.join(folder, sub, f"{image_id}.jpg"), jpeg(draw_scene(scene)))
        scenes[image_id] = scene
        return image_id, scene

    def region(image_id: int, box: tuple[float, float, float, float], phrase: str | None) -> dict:
        x1, y1, x2, y2 = box
        r = {"region_id": next(region_ids), "width": x2 - x1, "height": y2 - y1, "image_id": image_id, "phrase": phrase, "y": y1, "x": x1}
        if phrase is None:
            del r["phrase"]
        return r

    while count < good:
        image_id, scene = new_image()
        regions = [region(image_id, s.box, p) for s in scene.shapes for p in vg_phrases(scene, s)]
        regions.append(region(image_id, (0, 0, scene.width, scene.height), f"{NUMBERS[len(scene.shapes)]} shapes on a {scene.background} background"))
        rng.shuffle(regions)
        regions = regions[: good - count]
        count += len(regions)
        entries.append({"regions": regions, "id": image_id})
    first = entries[0]
    scene = scenes[first["id"]]
    r = region(first["id"], scene.shapes[0].box, None)
    first["regions"].append(r)
    bad.append(planted(str(r["region_id"]), MALFORMED, CONVERTER, "a region without its phrase"))
    x = scene.width + 10
    r = region(first["id"], (x, 20, x + 40, 60), "a grey box beside the picture")
    first["regions"].append(r)
    bad.append(planted(str(r["region_id"]), BOX_OUTSIDE_IMAGE, STAGE2, f"a region at x={x}, beyond the {scene.width} px wide image"))
    unknown = next(i for i in range(1, 10**7) if i not in scenes)
    scene = make_scene(rng)
    r = region(unknown, scene.shapes[0].box, vg_phrases(scene, scene.shapes[0])[0])
    entries.append({"regions": [r], "id": unknown})
    bad.append(planted(str(r["region_id"]), MALFORMED, CONVERTER, f"a region of image {unknown}, which image_data.json does not list"))
    image_id, scene = new_image(write=False)
    r = region(image_id, scene.shapes[0].box, vg_phrases(scene, scene.shapes[0])[0])
    entries.append({"regions": [r], "id": image_id})
    bad.append(planted(str(r["region_id"]), IMAGE_MISSING, STAGE2, f"a region of {image_data[-1]['url'].split('/', 5)[-1]}, whose file is not there"))
    write_json(os.path.join(folder, "image_data.json"), image_data)
    write_json(os.path.join(folder, "region_descriptions.json"), entries)
    records = sum(len(e["regions"]) for e in entries)
    return {task: summary(f"{task}:vg={folder}", None, records, bad) for task in ("referring", "grounded_caption")}


# --- OCR -----------------------------------------------------------------------------------------

OCR_WORDS = ("total", "invoice", "date", "amount", "paid", "order", "shipping", "address", "street", "open", "daily",
             "coffee", "tea", "bread", "fresh", "market", "station", "exit", "platform", "north", "south", "price",
             "item", "quantity", "receipt", "thank", "you", "welcome", "menu", "special", "today", "only", "sale")


def ocr_text(rng: random.Random) -> str:
    words = [rng.choice(OCR_WORDS) for _ in range(rng.randint(1, 5))]
    if rng.random() < 0.5:
        words.append(rng.choice((f"{rng.randint(1, 99)}.{rng.randint(0, 99):02d}", f"No. {rng.randint(1, 999)}", f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")))
    text = " ".join(words)
    return text[0].upper() + text[1:]


def rotate_point(x: float, y: float, centre: tuple[float, float], new_centre: tuple[float, float], degrees: float) -> tuple[float, float]:
    """Where Image.rotate(degrees, expand=True) (counter-clockwise on screen) moves the point (x, y)."""
    a = math.radians(degrees)
    dx, dy = x - centre[0], y - centre[1]
    return new_centre[0] + dx * math.cos(a) + dy * math.sin(a), new_centre[1] - dx * math.sin(a) + dy * math.cos(a)


def render_page(rng: random.Random) -> tuple[Image.Image, list[dict]]:
    """A page of text lines in reading order, each {"text", "quad" or "box"} where its ink is."""
    width, height = rng.choice(SIZES)
    page = Image.new("RGB", (width, height), rng.choice(((250, 250, 245), (245, 240, 225), (235, 240, 250))))
    font = ImageFont.load_default(size=rng.choice((18, 22, 26, 30, 36)))
    ink = rng.choice(((15, 15, 15), (20, 30, 90), (90, 20, 20)))
    lines, y = [], rng.randint(10, 30)
    for _ in range(12):
        if len(lines) == 6:
            break
        text = ocr_text(rng)
        while font.getbbox(text)[2] - font.getbbox(text)[0] > width - 40 and " " in text:
            text = text.rsplit(" ", 1)[0]
        left, top, right, bottom = font.getbbox(text)
        tw, th = right - left, bottom - top
        angle = rng.choice((0, 0, 0, rng.uniform(-12, 12)))
        pad = 4
        canvas = Image.new("L", (tw + 2 * pad, th + 2 * pad), 0)
        ImageDraw.Draw(canvas).text((pad - left, pad - top), text, font=font, fill=255)
        corners = [(pad, pad), (pad + tw, pad), (pad + tw, pad + th), (pad, pad + th)]  # clockwise from top-left
        if angle:
            centre = (canvas.width / 2, canvas.height / 2)
            canvas = canvas.rotate(angle, resample=Image.BICUBIC, expand=True)
            corners = [rotate_point(x, yy, centre, (canvas.width / 2, canvas.height / 2), angle) for x, yy in corners]
        if y + canvas.height > height - 10 or canvas.width > width - 20:
            continue  # does not fit: another line may
        x = rng.randint(10, width - 10 - canvas.width)
        page.paste(Image.new("RGB", canvas.size, ink), (x, y), canvas)
        quad = [[round(cx + x, 1), round(cy + y, 1)] for cx, cy in corners]
        if angle == 0 and rng.random() < 0.5:
            lines.append({"text": text, "box": [quad[0][0], quad[0][1], quad[2][0], quad[2][1]]})
        else:
            lines.append({"text": text, "quad": quad})
        y += canvas.height + rng.randint(6, 40)
    return page, lines


def make_ocr(output: str, seed: int, n: int) -> dict:
    rng = _rng(seed, "ocr")
    folder = os.path.join(output, "ocr")
    records, bad = [], []
    kinds = dict(zip(rng.sample(range(n), 4), ("not_json", "box_and_quad", "outside", "missing")))
    for i in range(n):
        key = f"{i + 1:04d}"
        page, lines = render_page(rng)
        kind = kinds.get(i)
        record = {"image": f"images/{key}.jpg", "width": page.width, "height": page.height, "lines": lines, "lang": "en", "key": key}
        if rng.random() < 0.25:  # without a size: the pipeline reads the image's header
            del record["width"], record["height"]
        if kind != "missing":
            write_bytes(os.path.join(folder, "images", f"{key}.jpg"), jpeg(page))
        line = json.dumps(record, ensure_ascii=False)
        where = f"pages.jsonl:{i + 1}"
        if kind == "not_json":
            line = line[: len(line) // 2]
            bad.append(planted(where, MALFORMED, CONVERTER, "a line cut off in the middle (not JSON)"))
        elif kind == "box_and_quad":
            lines[0] = {**lines[0], "box": [0, 0, 10, 10], "quad": [[0, 0], [10, 0], [10, 10], [0, 10]]}
            line = json.dumps(record, ensure_ascii=False)
            bad.append(planted(where, MALFORMED, CONVERTER, "a line with both a quad and a box"))
        elif kind == "outside":
            w, h = page.size
            record["lines"] = [*lines, {"text": "Page 2", "box": [w + 5, h - 30, w + 80, h - 5]}]
            line = json.dumps(record, ensure_ascii=False)
            bad.append(planted(key, BOX_OUTSIDE_IMAGE, STAGE2, f"a line whose box lies beyond the {w} px wide page"))
        elif kind == "missing":
            bad.append(planted(key, IMAGE_MISSING, STAGE2, f"images/{key}.jpg is not there"))
        records.append(line)
    path = os.path.join(folder, "pages.jsonl")
    write_jsonl(path, records)
    return summary(f"ocr:jsonl={path}", None, n, bad)


# --- PDF pages and synthetic document pages -------------------------------------------------------------


def make_pdfs(output: str, seed: int, n: int) -> dict:
    """n A4 PDF pages of sentences in Helvetica, two a file, every third page shown rotated by 90 degrees; planted:
    the last page holds two characters (page_too_few_chars) and broken.pdf is not a PDF (file_unreadable).
    Saved without a new /ID or dates, so the bytes depend on the seed alone."""
    rng = _rng(seed, "pdf")
    folder = os.path.join(output, "pdf")
    os.makedirs(folder, exist_ok=True)
    bad = []
    for first in range(0, n, 2):
        path = os.path.join(folder, f"doc-{first // 2 + 1}.pdf")
        document = pymupdf.open()
        for number in range(first, min(first + 2, n)):
            page = document.new_page(width=595, height=842)  # A4 in points: 1190 x 1684 px at 144 dpi
            if number == n - 1:
                page.insert_text((60, 80), "Hi", fontsize=14)
                bad.append(planted(f"{path}:{number - first + 1}", PAGE_TOO_FEW_CHARS, CONVERTER, "a page with two characters"))
            else:
                for line in range(rng.randint(4, 10)):
                    sentence = _sentence(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(SUBJECTS)}")
                    page.insert_text((50, 70 + 44 * line), sentence, fontsize=14)
            if number % 3 == 2:
                page.set_rotation(90)
        document.save(path, no_new_id=True)
    broken = os.path.join(folder, "broken.pdf")
    write_bytes(broken, b"%PDF-1.7\n% cut off before its first object\n")
    bad.append(planted(broken, FILE_UNREADABLE, CONVERTER, "a file that is not a whole PDF"))
    return summary(f"ocr:pdf={folder}", None, n + 1, bad)


def make_html_pages(output: str, seed: int, n: int) -> dict:
    """n HTML pages of short paragraphs in DejaVu Sans (stage 2 renders them in headless Chromium); planted:
    the last page holds two characters (page_too_few_chars)."""
    rng = _rng(seed, "html")
    folder = os.path.join(output, "html")
    bad = []
    for number in range(1, n + 1):
        path = os.path.join(folder, f"page-{number}.html")
        if number == n:
            body = "<p>Hi</p>"
            bad.append(planted(path, PAGE_TOO_FEW_CHARS, CONVERTER, "a page with two characters"))
        else:
            paragraphs = [" ".join(_sentence(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(SUBJECTS)}") for _ in range(rng.randint(2, 4)))
                          for _ in range(rng.randint(2, 3))]
            body = "".join(f"<p>{paragraph}</p>" for paragraph in paragraphs)
        page = f'<!doctype html><html><head><meta charset="utf-8"></head><body style="font: 18px DejaVu Sans; margin: 40px">{body}</body></html>'
        write_bytes(path, page.encode())
    return summary(f"ocr:html={folder}", None, n, bad)


def make_synthetic_pages(output: str, seed: int, n: int) -> dict:
    """n synthetic document pages (make-ocr-sample) from a corpus of 20 paragraphs of prose."""
    rng = _rng(seed, "ocr-synth")
    folder = os.path.join(output, "ocr-synth")
    corpus = os.path.join(folder, "corpus.txt")
    write_jsonl(corpus, [prose(rng, rng.randint(40, 80)).replace("\n\n", " ") for _ in range(20)])
    make_ocr_sample(corpus, folder, n, seed=seed, language="en")
    return summary(f"ocr:jsonl={os.path.join(folder, 'pages.jsonl')}", None, n, [])


# --- pure text -----------------------------------------------------------------------------------

SUBJECTS = ("the red square", "a small blue circle", "the long green rectangle", "every yellow triangle", "the purple ellipse",
            "an orange shape", "the drawing", "each figure", "the black outline", "a careful reader")
VERBS = ("sits beside", "leans towards", "is larger than", "hides behind", "points at", "is painted next to", "mirrors",
         "is placed above", "slowly follows", "outshines")
CLAUSES = ("while the background stays plain", "as the light changes", "because the page is small", "although nobody asked",
           "and the grid of a thousand steps measures it", "before the next picture begins", "in the middle of the afternoon",
           "so that the box around it is easy to draw")
ZH = ("红色的正方形在左边。", "蓝色的圆形比绿色的长方形小。", "背景是浅灰色的。", "每个形状都有自己的颜色。", "黄色的三角形在图片的上方。", "这幅图里一共有三个形状。")


def prose(rng: random.Random, words: int) -> str:
    """English paragraphs of about `words` words."""
    paragraphs, count = [], 0
    while count < words:
        sentences = []
        for _ in range(rng.randint(3, 7)):
            s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(SUBJECTS)}"
            if rng.random() < 0.6:
                s += f" {rng.choice(CLAUSES)}"
            if rng.random() < 0.2:
                s += f", {rng.randint(2, 999)} times"
            sentences.append(_sentence(s))
            count += len(s.split())
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def make_text(output: str, seed: int, n: int) -> dict:
    """n documents (at least 7): three long ones (about 2,600, 3,500 and 6,000 words: more than 2048 tokens
    each), one Chinese, the rest short; three of them planted."""
    rng = _rng(seed, "text")
    n = max(n, 7)
    lengths = [2600, 3500, 6000] + [rng.randint(40, 600) for _ in range(n - 7)]
    rng.shuffle(lengths)
    lines, bad = [], []
    for i, words in enumerate(lengths):
        lines.append(json.dumps({"text": prose(rng, words), "key": f"doc-{i + 1:03d}"}))
    lines.append(json.dumps({"text": "".join(rng.choice(ZH) for _ in range(12)), "lang": "zh", "key": f"doc-{len(lines) + 1:03d}"}, ensure_ascii=False))
    key = f"doc-{len(lines) + 1:03d}"
    lines.append(json.dumps({"text": prose(rng, 60) + "<|endoftext|>" + prose(rng, 30), "key": key}))
    bad.append(planted(key, TEXT_SPECIAL_TOKEN, STAGE2, "a document spelling <|endoftext|> in its text"))
    lines.append(json.dumps({"text": "   ", "key": f"doc-{len(lines) + 1:03d}"}))
    bad.append(planted(f"docs.jsonl:{len(lines)}", MALFORMED, CONVERTER, "a document whose text is blank"))
    lines.append('{"text": "a line cut off in the mid')
    bad.append(planted(f"docs.jsonl:{len(lines)}", MALFORMED, CONVERTER, "a line cut off in the middle (not JSON)"))
    path = os.path.join(output, "text", "docs.jsonl")
    write_jsonl(path, lines)
    return summary(f"text:text={path}", None, len(lines), bad, long_documents=3)


# --- fine-tuning conversations -------------------------------------------------------------------


def grid_box(scene: Scene, shape: Shape) -> str:
    x1, y1, x2, y2 = normalize_box(shape.box, scene.width, scene.height)
    return f"({x1},{y1}),({x2},{y2})"


def chat_turns(rng: random.Random, pictures: list[tuple[str, Scene]]) -> list[tuple[str, str]]:
    """(question, answer) turns about one or two pictures, all true."""
    if len(pictures) == 2:
        (_, a), (_, b) = pictures
        total = len(a.shapes) + len(b.shapes)
        colour = rng.choice(sorted({s.colour for s in (*a.shapes, *b.shapes)}))
        where = [i + 1 for i, (_, sc) in enumerate(pictures) if any(s.colour == colour for s in sc.shapes)]
        turns = [("How many shapes are there in the two pictures together?", f"There are {total}: {len(a.shapes)} in the first picture and {len(b.shapes)} in the second."),
                 (f"Which picture has something {colour}?", "Both of them." if len(where) == 2 else f"Picture {where[0]}.")]
        return turns[: rng.randint(1, 2)]
    scene = pictures[0][1]
    shape = rng.choice(scene.shapes)
    turns = [
        ("What do you see in this picture?", _sentence(f"{_and([('an ' if s.name[0] in 'aeiou' else 'a ') + scene.described(s) for s in scene.shapes])} on a {scene.background} background")),
        (f"Where is the {shape.name}?", f"<ref>the {shape.name}</ref><box>{grid_box(scene, shape)}</box>"),
        (f"What colour is the {shape.kind} {scene.position(shape) or 'in the picture'}?" if [s.kind for s in scene.shapes].count(shape.kind) == 1 else f"What shape is the {shape.colour} one?",
         _sentence(f"it is {shape.colour}") if [s.kind for s in scene.shapes].count(shape.kind) == 1 else _sentence(f"it is a {shape.kind}")),
        ("How many shapes are there?", _sentence(f"there are {NUMBERS[len(scene.shapes)]}")),
    ]
    first = turns.pop(rng.randrange(len(turns)))
    rng.shuffle(turns)
    return [first, *turns[: rng.randint(0, 2)]]


def make_chat(output: str, seed: int, n: int) -> dict:
    rng = _rng(seed, "chat")
    folder = os.path.join(output, "chat")
    count = max(4, n // 4)
    scenes = []
    for i in range(count):
        scene = make_scene(rng)
        path = f"images/{i + 1:03d}.jpg"
        write_bytes(os.path.join(folder, path), jpeg(draw_scene(scene)))
        scenes.append((path, scene))
    records, bad = [], []
    kinds = dict(zip(rng.sample(range(n), 3), ("assistant_first", "unknown_role", "missing")))
    for i in range(n):
        key = f"identity_{i}"
        kind = kinds.get(i)
        pictures = rng.sample(scenes, 2 if rng.random() < 0.25 else 1)
        if kind == "missing":
            pictures = [(f"images/{count + 1:03d}.jpg", make_scene(rng))]
            bad.append(planted(key, IMAGE_MISSING, STAGE2, f"a conversation showing {pictures[0][0]}, which is not there"))
        turns = chat_turns(rng, pictures)
        tags = "".join(f"Picture {j + 1}: <img>{p}</img>\n" for j, (p, _) in enumerate(pictures)) if rng.random() < 0.5 else "".join(f"<img>{p}</img>" for p, _ in pictures)
        conversation = []
        for t, (question, answer) in enumerate(turns):
            conversation.append({"from": "user", "value": (tags if t == 0 else "") + question})
            conversation.append({"from": "assistant", "value": answer})
        if i % 7 == 3:
            conversation.insert(0, {"from": "system", "value": "You are a helpful assistant who describes pictures."})
        if kind == "assistant_first":
            conversation.insert(1 if conversation[0]["from"] == "system" else 0, {"from": "assistant", "value": "Hello! Send me a picture."})
            bad.append(planted(key, CHAT_TURN_ORDER, STAGE2, "a conversation that starts with the assistant"))
        elif kind == "unknown_role":
            conversation[-1] = {**conversation[-1], "from": "bot"}
            bad.append(planted(key, CHAT_UNKNOWN_ROLE, STAGE2, "a turn from 'bot'"))
        records.append({"id": key, "conversations": conversation})
    path = os.path.join(folder, "chat.json")
    write_json(path, records, indent=2)
    # sft has no converter: formats/chatml.render refuses a record, so every planted one is caught at stage 2
    return {"input": path, "images": folder, "records": n, "examples": n, "samples": n - len(bad), "planted": bad, "images_on_disk": count,
            "messages": make_messages(folder, seed, records, bad)}


_IMAGE_TAG = re.compile(r"(?:Picture \d+: ?)?<img>([^<>\n]+)</img>\n?")


def as_messages(record: dict) -> dict:
    """A record of the conversations layout in the messages layout (LLaMA-Factory, ms-swift): each image
    tag, with its picture number and newline, as an `<image>` placeholder, the paths in "images"."""
    images = [path for turn in record["conversations"] for path in _IMAGE_TAG.findall(turn["value"])]
    messages = [{"role": turn["from"], "content": _IMAGE_TAG.sub("<image>", turn["value"])} for turn in record["conversations"]]
    return {"id": record["id"], "messages": messages, "images": images}


def make_messages(folder: str, seed: int, records: list[dict], bad: list[dict]) -> dict:
    """chat/messages.jsonl: the same conversations in the messages layout, then two about a video
    (chat/videos/), one planted record whose placeholders and images differ in number, and one whose
    video is not there. For the qwen2-vl dialect (the qwen-vl one has no video)."""
    rng = _rng(seed, "messages")
    write_video(os.path.join(folder, "videos", "clip.mp4"), seconds=3, fps=10, width=224, height=160, seed=seed)
    lines = [as_messages(r) for r in records]
    video_turns = [("<video>What happens in this clip?", "A coloured pattern moves across the frame."),
                   ("<video>How long is this clip?", "About three seconds.")]
    for i, (question, answer) in enumerate(video_turns):
        lines.append({"id": f"video_{i}", "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                      "videos": ["videos/clip.mp4"]})
    more = [planted("video_missing", IMAGE_MISSING, STAGE2, "a conversation about videos/gone.mp4, which is not there"),
            planted("count_mismatch", CHAT_MEDIA_COUNT, STAGE2, "two <image> placeholders and one image")]
    lines.append({"id": "video_missing", "messages": [{"role": "user", "content": "<video>What is this?"}, {"role": "assistant", "content": "A clip."}],
                  "videos": ["videos/gone.mp4"]})
    picture = rng.choice([path for line in lines for path in line.get("images", [])])
    lines.append({"id": "count_mismatch", "messages": [{"role": "user", "content": "<image><image>Compare."}, {"role": "assistant", "content": "Same."}],
                  "images": [picture]})
    path = os.path.join(folder, "messages.jsonl")
    write_jsonl(path, [json.dumps(line, ensure_ascii=False) for line in lines])
    planted_all = [*bad, *more]
    return {"input": path, "images": folder, "records": len(lines), "examples": len(lines), "samples": len(lines) - len(planted_all), "planted": planted_all}


# --- videos: captions and questions --------------------------------------------------------------


def make_videos(output: str, seed: int, n: int) -> dict[str, dict]:
    """video/clips/clip-N.mp4 (2-4 s at 10 fps, sizes that differ), video/captions.jsonl and video/qa.jsonl
    (formats/sources/video.py), for the qwen2-vl dialect. Planted: a clip that is not a video, a clip that
    is not there, a caption line that is not JSON, a question without its answer."""
    rng = _rng(seed, "video")
    folder = os.path.join(output, "video")
    clips = []
    for i in range(n):
        seconds, (width, height) = rng.choice((2, 3, 4)), rng.choice(((160, 120), (224, 128), (128, 176)))
        name = f"clips/clip-{i}.mp4"
        write_video(os.path.join(folder, name), seconds=seconds, fps=10, width=width, height=height, seed=seed + i)
        clips.append((name, seconds, width, height))
    write_bytes(os.path.join(folder, "clips", "broken.mp4"), rng.randbytes(4096))
    captions, questions, caption_bad, qa_bad = [], [], [], []
    for i, (name, seconds, width, height) in enumerate(clips):
        captions.append({"id": f"c{i}", "video": name, "caption": f"A {seconds}-second clip of a coloured pattern moving, {width} by {height} pixels."})
        questions.append({"id": f"q{i}", "video": name, "question": "How long is the clip?", "answer": f"{seconds} seconds."})
    captions.append({"id": "broken", "video": "clips/broken.mp4", "caption": "Not a video at all."})
    caption_bad.append(planted("broken", VIDEO_UNREADABLE, STAGE2, "clips/broken.mp4 holds random bytes"))
    captions.append({"id": "gone", "video": "clips/gone.mp4", "caption": "A clip that was never written."})
    caption_bad.append(planted("gone", IMAGE_MISSING, STAGE2, "clips/gone.mp4 is not there"))
    lines = [json.dumps(c) for c in captions]
    lines.append(lines[0][: len(lines[0]) // 2])
    caption_bad.append(planted(f"captions.jsonl:{len(lines)}", MALFORMED, CONVERTER, "a line cut off in the middle (not JSON)"))
    write_jsonl(os.path.join(folder, "captions.jsonl"), lines)
    questions.append({"id": "no_answer", "video": clips[0][0], "question": "What is it?"})
    qa_bad.append(planted(f"qa.jsonl:{len(questions)}", MALFORMED, CONVERTER, "a question without its answer"))
    write_jsonl(os.path.join(folder, "qa.jsonl"), [json.dumps(q) for q in questions])
    return {
        "caption:video": summary(f"caption:video={os.path.join(folder, 'captions.jsonl')}", None, len(lines), caption_bad),
        "vqa:video": summary(f"vqa:video={os.path.join(folder, 'qa.jsonl')}", None, len(questions), qa_bad),
    }


# --- all of it -----------------------------------------------------------------------------------


def make_stage2_sample(output: str, seed: int = 0, per_set: int = 40) -> dict:
    """Write every set under `output` and OUTPUT/stage2_sample.json; return what that file holds:
    stage2_args (the --source and --images arguments for all the sets), sft_args, and per set its
    --source and --images, its counts (records, examples, samples) and its planted bad records."""
    if per_set < 12:
        raise ValueError(f"per_set {per_set}: at least 12 records per set (a few of them are planted faults)")
    os.makedirs(output, exist_ok=True)
    images, missing = make_coco_images(output, seed, max(6, per_set // 3 + 2))
    refcoco = make_refcoco(output, seed, per_set, images, missing)
    vg = make_vg(output, seed, per_set)
    sets = {
        "vqa:vqav2": make_vqav2(output, seed, per_set, images, missing),
        "caption:coco": make_coco_captions(output, seed, per_set, images, missing),
        "referring:refcoco": refcoco["referring"],
        "grounded_caption:refcoco": refcoco["grounded_caption"],
        "grounding:grit": make_grit(output, seed, per_set),
        "referring:vg": vg["referring"],
        "grounded_caption:vg": vg["grounded_caption"],
        "ocr:jsonl": make_ocr(output, seed, per_set),
        "ocr:pdf": make_pdfs(output, seed, per_set // 4),
        "ocr:html": make_html_pages(output, seed, max(3, per_set // 8)),
        "text:text": make_text(output, seed, per_set // 4),
    }
    sets["ocr:synthetic"] = make_synthetic_pages(output, seed, per_set // 4)
    args, seen = [], set()
    for entry in sets.values():
        args += ["--source", entry["source"]]
    for entry in sets.values():
        if entry["images"] and entry["images"] not in seen:
            seen.add(entry["images"])
            args += ["--images", entry["images"]]
    chat = make_chat(output, seed, per_set)
    messages = chat.pop("messages")
    videos = make_videos(output, seed, 3)
    manifest = {
        "seed": seed,
        "per_set": per_set,
        "stage2_args": args,
        "sft_args": ["--input", chat["input"], "--images", chat["images"]],
        "sets": {**sets, "sft": chat},
        # the qwen2-vl dialect's extras: the video sets (stage2_args plus these), and the conversations in
        # the messages layout with two about a video
        "video_args": [arg for entry in videos.values() for arg in ("--source", entry["source"])],
        "video_sets": videos,
        "sft_messages_args": ["--input", messages["input"], "--images", messages["images"]],
        "sft_messages": messages,
    }
    write_json(os.path.join(output, MANIFEST), manifest, indent=2)
    return manifest
