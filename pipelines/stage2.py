"""Stage 2 and stage 3 on Beam: annotated data sets -> samples/, packed/, rejected/ and report.json.

    python beam_runner.py stage2 --source caption:curated=stage1/curated --source vqa:vqav2=/data/vqav2 \\
        --images vqav2=/data/coco/train2014 --output stage2/ [--seq-len 2048] [--tokenizer qwen.tiktoken]
    python beam_runner.py sft --input chat.json --output sft/ [--images DIR] [--seq-len 2048]
    ... [--dialect qwen2-vl] [--min-pixels N] [--max-pixels N] [--video-fps 2] [--video-max-tokens 16384]

The graph: each --source is read by its converter (formats/sources/), one DoFn per source, spread over
the workers; each example's image is read from its image folder (bytes as stored, size from the
header unless the annotations give it), its boxes put on the 1000 grid (formats/boxes.py), its text
rendered (formats/templates.py; sft: formats/chatml.py) and tokenized (formats/tokenizer.py) ->
samples/. Samples go to the packer (formats/packing.py) in groups of one task and a bucket of uids,
about --pack-group each -> packed/. Whatever cannot become a sample, and a sample that cannot be
packed, is a rejected row with its reason, counted in the report; nothing is dropped silently. When the
pipeline is done, packed/_manifest.json lists each packed file's row groups, columns and dialects
(formats/parquet_manifest.py), so the trainer lists its shards without opening every footer.

Dialects (formats/dialects.py): `--dialect qwen-vl` (the default) writes Qwen-VL's tokens, each image
258 positions (the trainer resizes it to 448x448). `--dialect qwen2-vl` writes Qwen2-VL's: each image
keeps its resolution, resized by smart_resize into [--min-pixels, --max-pixels] (formats/
dynamic_resolution.py; an aspect ratio above 200 is a reject), and takes (h/28)*(w/28) pads; a video
(the `video` format, or `<video>` in a chat) is sampled at --video-fps and its frames resized so it takes at
most --video-max-tokens pads (formats/video.py; a video that cannot be read is a reject). The sizes,
grids and M-RoPE position ids (formats/mrope.py) are stored in samples/ and packed/ (formats/schemas.py),
so a trainer needs no second guess. Boxes stay on the same [0, 1000) grid of the original image.

Packing groups: a task of N samples gets round(N / --pack-group) buckets (the counts per task, a few
numbers, are the one side input), and a sample goes to the bucket its uid hashes to, so groups are
spread over the workers by key (not one worker per task) and each holds about --pack-group samples
(at 4096, within a few percent). The same inputs give the same groups, and each group is packed in
uid order, so a rerun writes the same sequences. Packing shuffles each sample once, images included:
on the in-process runner that data is held in memory, so large stage-2 runs belong on a distributed
runner (Dataflow, Spark, Flink).
"""

import io
import json
import logging
import os
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from PIL import Image

from cli.usage import ArgumentParser, UsageError
from formats import schemas
from formats.boxes import normalize_example
from formats.chatml import render as render_chat
from formats.dialects import DIALECTS, get_dialect
from formats.dynamic_resolution import FPS, MAX_PIXELS, MIN_PIXELS, image_grid, image_tokens, smart_resize
from formats.example import TEXT, Example, Invalid
from formats.files import exists, has_glob, is_dir, join, match, open_file
from formats.ids import sample_uid, sequence_uid
from formats.mrope import mrope_positions
from formats.packing import SEQ_LEN, Sample, document_starts, pack
from formats.parquet_manifest import MANIFEST, write_manifest
from formats.reasons import BAD_IMAGE_TAG, FILE_UNREADABLE, IMAGE_ASPECT_RATIO, IMAGE_MISSING, IMAGE_UNREADABLE, MALFORMED, VIDEO_UNSUPPORTED
from formats.sources import CONVERTERS, PER_FILE, convert
from formats.sources.records import Malformed
from formats.sources.text import jsonl_records
from formats.templates import check, render
from formats.tokenizer import ImageTagError, QwenTokenizer, VocabularyError
from formats.video import MAX_TOKENS as VIDEO_MAX_TOKENS, VideoError, read_video
from pipelines.runner import pipeline_options
from pipelines.spread import Spread
from pipelines.sink import REJECTED, GroupByUid, clear_outputs, group_file, write_rows

CHAT = "chat"  # the task name of stage-3 conversations
CHAT_FILES = ("*.json", "*.jsonl")  # what sft reads from a folder
MIXED = "mixed"  # the task of packed rows with --mix-tasks
PACK_GROUP = 4096  # samples per packing group: efficiency and cost both grow with it
log = logging.getLogger("stage2")



class Source(NamedTuple):
    """One --source: the task, the converter's format name, the annotations, the image folder, and the
    files the converter is run on (the path itself, or each file of it for per-file formats)."""

    task: str
    format: str
    path: str
    images: str
    files: tuple[str, ...]


def reject_row(task: str, item: Invalid) -> dict:
    uid = sample_uid(task, item.source, item.key)
    return {"uid": uid, "task": task, "source": item.source, "key": item.key, "reason": item.reason, "detail": item.detail}


def read_media_bytes(example: Example, folder: str) -> bytes | Invalid:
    """The bytes of the example's image (or video): its own, or its file under `folder`."""
    if example.image_bytes is not None:
        return example.image_bytes
    path = join(folder, example.image)
    try:
        with open_file(path, compression=None) as f:
            return f.read()
    except OSError as e:
        return Invalid(example.source, example.key, IMAGE_MISSING, f"{path}: {type(e).__name__}")


def read_image(example: Example, images: str) -> tuple[bytes, int, int] | Invalid:
    """(bytes, width, height) of the example's image: its own bytes or the file under `images`; the size
    from the annotations where they give it (their boxes are in that size), else from the header."""
    data = read_media_bytes(example, images)
    if isinstance(data, Invalid):
        return data
    width, height = example.width, example.height
    if not (width and height):
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... on bytes that are not an image
            return Invalid(example.source, example.key, IMAGE_UNREADABLE, f"{type(e).__name__}: {e}")
    return data, width, height


class Media(NamedTuple):
    """One image or video of a sample, as the row stores it: `data` is an image's bytes or a video's
    frames; `size` (height, width after resizing) and `grid` are None in Qwen-VL, whose images are fixed."""

    ref: str
    video: bool
    data: bytes | list[bytes]
    slots: int  # its pad tokens
    size: tuple[int, int] | None = None
    grid: tuple[int, int, int] | None = None
    original: tuple[int, int] | None = None  # an image's (width, height) as read: its boxes' frame


class MakeSamples(beam.DoFn):
    """Examples (or a converter's Invalids) -> sample rows in the settings' dialect; rejects tagged. The
    tokenizer loads once per worker."""

    def __init__(self, tokenizer_path: str | None, settings: dict):
        self.tokenizer_path = tokenizer_path
        self.settings = settings

    def setup(self):
        self.dialect = get_dialect(self.settings["dialect"])
        self.tokenizer = QwenTokenizer(self.tokenizer_path, self.dialect)

    def process(self, item, source: Source):
        if isinstance(item, Invalid):
            yield beam.pvalue.TaggedOutput(REJECTED, reject_row(source.task, item))
            return
        media = []
        if item.task != TEXT:
            found = self.read_media(item, source.images)
            if isinstance(found, Invalid):
                yield beam.pvalue.TaggedOutput(REJECTED, reject_row(source.task, found))
                return
            media = [found]
            if not item.video:
                item = normalize_example(item, *found.original)
        problem = item if isinstance(item, Invalid) else check(item)
        if problem:
            yield beam.pvalue.TaggedOutput(REJECTED, reject_row(source.task, problem))
            return
        yield from self.sample(source.task, item.source, item.key, render(item, self.dialect), media)

    def read_media(self, example: Example, folder: str) -> Media | Invalid:
        """The example's image (or video) with its pad count in the dialect."""
        ref = example.image or example.key
        if example.video:
            return self.read_video(example, folder, ref)
        found = read_image(example, folder)
        if isinstance(found, Invalid):
            return found
        data, width, height = found
        if self.dialect.image_slots is not None:
            return Media(ref, False, data, self.dialect.image_slots, original=(width, height))
        try:
            size = smart_resize(height, width, min_pixels=self.settings["min_pixels"], max_pixels=self.settings["max_pixels"])
        except ValueError as e:
            return Invalid(example.source, example.key, IMAGE_ASPECT_RATIO, str(e))
        grid = image_grid(*size)
        return Media(ref, False, data, image_tokens(grid), size, grid, (width, height))

    def read_video(self, example: Example, folder: str, ref: str) -> Media | Invalid:
        if self.dialect.video_pad is None:
            return Invalid(example.source, example.key, VIDEO_UNSUPPORTED, f"{self.dialect.name} has no video tokens")
        data = read_media_bytes(example, folder)
        if isinstance(data, Invalid):
            return data
        try:
            video = read_video(data, fps=self.settings["video_fps"], min_pixels=self.settings["min_pixels"],
                               max_tokens=self.settings["video_max_tokens"])
        except VideoError as e:
            return Invalid(example.source, example.key, e.reason, e.detail)
        return Media(ref, True, video.frames, video.tokens, video.size, video.grid)

    def sample(self, task: str, source: str, key: str, segments, media: list[Media]):
        fixed = self.dialect.image_slots is not None
        try:
            encoded = self.tokenizer.encode_segments(segments, None if fixed else [(m.slots, m.video) for m in media])
        except ImageTagError as e:
            yield beam.pvalue.TaggedOutput(REJECTED, reject_row(task, Invalid(source, key, BAD_IMAGE_TAG, str(e))))
            return
        Metrics.counter("stage2", f"samples_{task}").inc()
        images = [m for m in media if not m.video]
        videos = [m for m in media if m.video]
        row = {
            "uid": sample_uid(task, source, key),
            "task": task,
            "source": source,
            "key": key,
            "text": "".join(text for text, _ in segments),
            "input_ids": encoded.ids,
            "loss_mask": encoded.mask,
            "images": [m.data for m in images],
            "image_refs": [m.ref for m in images],
            "dialect": self.dialect.name,
        }
        if not fixed:
            image_grids, video_grids = [list(m.grid) for m in images], [list(m.grid) for m in videos]
            row.update({
                "image_sizes": [list(m.size) for m in images],
                "image_grid_thw": image_grids,
                "videos": [m.data for m in videos],
                "video_grid_thw": video_grids,
                "video_refs": [m.ref for m in videos],
                "mrope_position_ids": mrope_positions(encoded.ids, image_grids, video_grids).tolist(),
            })
        yield row


class MakeChatSamples(MakeSamples):
    """Fine-tuning records -> sample rows: ChatML segments, images and videos read from the image folder in order."""

    def process(self, item, source: Source):
        where, record = item
        if isinstance(record, Invalid):  # the file (or this line of it) could not be read
            yield beam.pvalue.TaggedOutput(REJECTED, reject_row(CHAT, record))
            return
        chat = render_chat(record, source.format, fallback_key=where, dialect=self.dialect)
        if isinstance(chat, Invalid):
            yield beam.pvalue.TaggedOutput(REJECTED, reject_row(CHAT, chat))
            return
        media = []
        size = 1 if self.dialect.image_slots is not None else None  # Qwen-VL needs no image's size here
        for i, path in enumerate(chat.images):
            example = Example(CHAT, source.format, chat.key, image=path, video=i in chat.video_indices, width=size, height=size)
            found = self.read_media(example, source.images)
            if isinstance(found, Invalid):
                yield beam.pvalue.TaggedOutput(REJECTED, reject_row(CHAT, found))
                return
            media.append(found)
        yield from self.sample(CHAT, source.format, chat.key, chat.segments, media)


def pack_group(group: tuple, seq_len: int, output: str, dialect_name: str = "qwen-vl"):
    """One (name, index, groups) group of sample rows, sorted by uid -> its files samples/NAME-*,
    packed/NAME-* and, when a sample cannot be packed, rejected/packing-NAME-* (sink.group_file); yields
    each sequence's counts and each reject (tagged), for the report. A packed row's images, videos and
    grids are its documents', in order; Qwen2-VL rows get their M-RoPE ids, restarting per document."""
    (name, index, groups), rows = group
    dialect = get_dialect(dialect_name)
    image_start = dialect.special_ids()[dialect.image]
    by_uid = {row["uid"]: row for row in rows}
    samples = [Sample(row["uid"], row["input_ids"], row["loss_mask"], row["images"] + (row.get("videos") or [])) for row in rows]
    # a sample without images is cut into seq_len pieces: pure text, the one stage-2 task without images;
    # a conversation is never cut (a long one is rejected)
    sequences, rejects = pack(samples, seq_len, split_text=name != CHAT, image_id=image_start)
    packed = []
    for s in sequences:
        docs = [by_uid[uid] for uid in s.uids]
        sources = [doc["source"] for doc in docs]
        row = {
            "uid": sequence_uid(s.uids, s.starts),
            "task": name,
            "source": sources[0] if len(set(sources)) == 1 else None,
            "input_ids": s.ids.tolist(),
            "loss_mask": s.mask.tolist(),
            "doc_ids": s.doc.tolist(),
            "position_ids": s.pos.tolist(),
            "images": joined(docs, "images"),
            "sample_uids": s.uids,
            "sources": sources,
            "dialect": dialect.name,
        }
        if dialect.image_slots is None:
            columns = ("image_sizes", "image_grid_thw", "videos", "video_grid_thw")
            row.update({column: joined(docs, column) for column in columns})
            row["mrope_position_ids"] = mrope_positions(s.ids, row["image_grid_thw"], row["video_grid_thw"], document_starts(s.doc)).tolist()
        packed.append(row)
    rejected = [{**{k: by_uid[r.uid][k] for k in ("uid", "task", "source", "key")}, "reason": r.reason, "detail": r.detail} for r in rejects]
    write_rows(group_file(FileSystems.join(output, "samples"), name, index, groups), rows, schemas.SAMPLES)
    write_rows(group_file(FileSystems.join(output, "packed"), name, index, groups), packed, schemas.PACKED)
    if rejected:
        write_rows(group_file(FileSystems.join(output, "rejected"), f"packing-{name}", index, groups), rejected, schemas.STAGE2_REJECTED)
    Metrics.counter("stage2", f"sequences_{name}").inc(len(packed))
    yield from map(packing_counts, packed)
    for row in rejected:
        yield beam.pvalue.TaggedOutput(REJECTED, row)


def joined(rows: list[dict], column: str) -> list:
    """The lists of `column` of the rows, one after another (a null as an empty list)."""
    return [value for row in rows for value in (row.get(column) or [])]


def write_rejects(group: tuple, output: str) -> str:
    """One (task, index, groups) group of reject rows, sorted by uid -> rejected/samples-TASK-*."""
    (task, index, groups), rows = group
    return write_rows(group_file(FileSystems.join(output, "rejected"), f"samples-{task}", index, groups), rows, schemas.STAGE2_REJECTED)


def packing_counts(row: dict) -> tuple[str, tuple[int, int, int]]:
    """(task, (sequences, tokens, document tokens)) of one packed row."""
    return row["task"], (1, len(row["doc_ids"]), sum(1 for d in row["doc_ids"] if d >= 0))


def build_report(samples, rejects, packing, settings: dict) -> dict:
    """report.json: samples per task and source, rejects per reason (and task, source), packing per task."""
    per_task: dict[str, dict] = {}
    for (task, source), n in samples:
        per_task.setdefault(task, {"samples": 0, "sources": {}, "rejected": {}})["samples"] += n
        per_task[task]["sources"][source] = n
    for (task, reason), n in rejects:
        rejected = per_task.setdefault(task, {"samples": 0, "sources": {}, "rejected": {}})["rejected"]
        rejected[reason] = rejected.get(reason, 0) + n
    tokens = documents = 0
    for task, (sequences, total, docs) in packing:
        per_task.setdefault(task, {"samples": 0, "sources": {}, "rejected": {}})
        per_task[task]["packed"] = {"sequences": sequences, "tokens": total, "efficiency": round(docs / total, 4) if total else 1.0}
        tokens, documents = tokens + total, documents + docs
    for t in per_task.values():  # counts arrive in no set order: sorted, so reruns write the same report
        t["sources"], t["rejected"] = dict(sorted(t["sources"].items())), dict(sorted(t["rejected"].items()))
    return {
        "stage": settings["stage"],
        "tasks": dict(sorted(per_task.items())),
        "total": {
            "samples": sum(t["samples"] for t in per_task.values()),
            "rejected": sum(n for _, n in rejects),
            "sequences": sum(t.get("packed", {}).get("sequences", 0) for t in per_task.values()),
            "packing_efficiency": round(documents / tokens, 4) if tokens else 1.0,
        },
        "settings": settings,
    }


def format_report(report: dict) -> str:
    lines = [f"{report['stage']}: samples, rejects and packing per task", ""]
    header = f"{'task':<18}{'samples':>10}{'rejected':>10}{'sequences':>11}{'efficiency':>12}"
    lines += [header, "-" * len(header)]
    for task, t in report["tasks"].items():
        packed = t.get("packed", {})
        eff = f"{100 * packed['efficiency']:.2f}%" if packed else "-"
        lines.append(f"{task:<18}{t['samples']:>10,}{sum(t['rejected'].values()):>10,}{packed.get('sequences', 0):>11,}{eff:>12}")
    total = report["total"]
    lines.append(f"{'total':<18}{total['samples']:>10,}{total['rejected']:>10,}{total['sequences']:>11,}{100 * total['packing_efficiency']:>11.2f}%")
    reasons: dict[str, int] = {}
    for t in report["tasks"].values():
        for reason, n in t["rejected"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    if reasons:
        lines += ["", "rejected: " + ", ".join(f"{reason} {n:,}" for reason, n in sorted(reasons.items()))]
    return "\n".join(lines)


class ReadSource(beam.PTransform):
    """A Source's records, spread over the workers: its converter's Examples and Invalids (with `chat`,
    the fine-tuning files' (FILE:INDEX, record) pairs). Its files are listed in the pipeline, a worker each."""

    def __init__(self, source: Source, chat: bool = False):
        super().__init__()
        self.source, self.chat = source, chat

    def expand(self, p):
        source, chat = self.source, self.chat
        return (
            p
            | "Path" >> beam.Create([source.path])
            | "Files" >> beam.FlatMap(source_files, None if chat else source.format)
            | "SpreadFiles" >> Spread()
            | "Convert" >> beam.FlatMap(read_chat if chat else lambda path, s: convert(s.task, s.format, path), source)
            | "Spread" >> Spread()
        )


def build_pipeline(p, sources: list[Source], output: str, settings: dict, chat: bool = False):
    """Add the stage-2 (or, with `chat`, the sft) graph to pipeline `p`."""
    seq_len, group = settings["seq_len"], settings["pack_group"]
    branches = []
    for i, source in enumerate(sources):
        label = f"{source.task}:{source.format}[{i}]"
        read = p | f"Read[{label}]" >> ReadSource(source, chat)
        vocabulary = None if settings["tokenizer_from_package"] else settings["tokenizer"]  # a worker's own wheel
        make = MakeChatSamples(vocabulary, settings) if chat else MakeSamples(vocabulary, settings)
        made = read | f"Samples[{label}]" >> beam.ParDo(make, source).with_outputs(REJECTED, main="samples")
        branches.append(made)
    samples = [b.samples for b in branches] | "AllSamples" >> beam.Flatten()
    rejected = [b[REJECTED] for b in branches] | "AllRejects" >> beam.Flatten()
    mixed = settings["mix_tasks"]
    packed = (
        samples
        | "PackingGroups" >> GroupByUid(lambda row: MIXED if mixed else row["task"], group)
        | "Pack" >> beam.FlatMap(pack_group, seq_len, output, settings["dialect"]).with_outputs(REJECTED, main="counts")
    )
    rejected | "RejectGroups" >> GroupByUid(lambda row: row["task"], PACK_GROUP) | "WriteRejects" >> beam.Map(write_rejects, output)

    def counted(pcoll, name, key):
        return beam.pvalue.AsSingleton(pcoll | f"Key[{name}]" >> beam.Map(key) | f"Count[{name}]" >> beam.combiners.Count.PerElement() | f"List[{name}]" >> beam.combiners.ToList())

    sample_counts = counted(samples, "samples", lambda row: (row["task"], row["source"]))
    reject_counts = counted(rejected, "rejects", lambda row: (row["task"], row["reason"]))
    packing_rejects = counted(packed[REJECTED], "packing-rejects", lambda row: (row["task"], row["reason"]))
    packing = beam.pvalue.AsSingleton(
        packed.counts
        | "SumPacking" >> beam.CombinePerKey(lambda values: tuple(map(sum, zip(*values))) if values else (0, 0, 0))
        | "ListPacking" >> beam.combiners.ToList()
    )

    def report(_, samples, rejects, more_rejects, packing):
        return build_report(samples, rejects + more_rejects, packing, settings)

    (
        p
        | "ReportStart" >> beam.Create([None])
        | "BuildReport" >> beam.Map(report, sample_counts, reject_counts, packing_rejects, packing)
        | "ToJson" >> beam.Map(lambda r: json.dumps(r, indent=2, ensure_ascii=False))
        | "WriteJson" >> beam.io.WriteToText(FileSystems.join(output, "report.json"), shard_name_template="")
    )


def read_chat(path: str, source: Source):
    """The records of a fine-tuning file, as (FILE:INDEX, record), FILE its name: a JSON list (INDEX from
    0), or JSON Lines (.jsonl, one record a line, as ms-swift reads them; INDEX the line from 1). A file
    that cannot be read -> one Invalid; a line that is not JSON -> an Invalid for that line, and the
    rest are read."""
    name = os.path.basename(path)
    try:
        if path.endswith(".jsonl"):
            return [(f"{name}:{n}", Invalid(source.format, f"{name}:{n}", MALFORMED, str(record)) if isinstance(record, Malformed) else record)
                    for n, record in jsonl_records(path)]
        with open_file(path, compression=None) as f:
            records = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [(f"{name}:0", Invalid(source.format, path, FILE_UNREADABLE, f"{type(e).__name__}: {e}"))]
    if not isinstance(records, list):
        return [(f"{name}:0", Invalid(source.format, path, FILE_UNREADABLE, "not a JSON list of records"))]
    return [(f"{name}:{i}", record) for i, record in enumerate(records)]


def parse_source(spec: str, images: dict[str, str]) -> Source:
    """TASK:FORMAT=PATH -> a Source whose image folder is --images FORMAT=DIR, else PATH's folder."""
    head, sep, path = spec.partition("=")
    task, colon, fmt = head.partition(":")
    if not (sep and colon and task and fmt and path):
        raise UsageError(f"--source {spec!r}: expected TASK:FORMAT=PATH, e.g. vqa:vqav2=/data/vqav2/")
    if (task, fmt) not in CONVERTERS:
        known = ", ".join(f"{t}:{f}" for t, f in sorted(CONVERTERS))
        raise UsageError(f"--source {spec!r}: no converter for {task}:{fmt} (known: {known})")
    if not has_glob(path) and not exists(path):
        raise UsageError(f"--source {spec!r}: {path} does not exist")
    folder = path if path.endswith("/") or is_dir(path) else os.path.dirname(path)
    return Source(task, fmt, path, images.get(fmt) or folder, _files(fmt, path))


def source_files(path: str, fmt: str | None) -> tuple[str, ...]:
    """What the converter runs on: for a per-file format (fmt None: the sft input, JSON or JSONL files),
    each file of a folder or glob; else the path. Listed by the launcher to check it, and again in the
    pipeline, so the graph holds only the path."""
    patterns = CHAT_FILES if fmt is None else PER_FILE.get(fmt)
    if patterns is None or not (path.endswith("/") or is_dir(path) or has_glob(path)):
        return (path,)
    patterns = [join(path, p) for p in patterns] if not has_glob(path) else [path]
    return tuple(sorted(f for pattern in patterns for f in match(pattern)))


def _files(fmt: str, path: str) -> tuple[str, ...]:
    files = source_files(path, fmt)
    if not files:
        raise UsageError(f"--source {fmt}={path}: no {' or '.join(PER_FILE[fmt])} files there")
    return files


def parse_images(specs: list[str]) -> dict[str, str]:
    """--images FORMAT=FOLDER ... -> {format: folder}."""
    images = {}
    for spec in specs:
        fmt, sep, folder = spec.partition("=")
        if not (sep and fmt and folder):
            raise UsageError(f"--images {spec!r}: expected FORMAT=FOLDER, e.g. vqav2=/data/coco/train2014")
        images[fmt] = folder
    return images


def _common_options(parser) -> None:
    parser.add_argument("--output", required=True, help="folder for samples/, packed/, rejected/ and report.json")
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN, help=f"tokens per packed sequence (default {SEQ_LEN})")
    parser.add_argument("--pack-group", type=int, default=PACK_GROUP, help=f"samples per packing group (default {PACK_GROUP})")
    parser.add_argument("--tokenizer", help="a qwen.tiktoken file (default: the one the dashscope wheel ships)")
    parser.add_argument("--mix-tasks", action="store_true", help="pack samples of all tasks together (fuller sequences; the paper packs one task per sequence)")
    parser.add_argument("--dialect", default="qwen-vl", choices=list(DIALECTS), help="the model's tokens and image spans (default qwen-vl)")
    parser.add_argument("--min-pixels", type=int, default=MIN_PIXELS, help=f"qwen2-vl: an image's least area after resizing, px (default {MIN_PIXELS})")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help=f"qwen2-vl: an image's largest area after resizing, px (default {MAX_PIXELS})")
    parser.add_argument("--video-fps", type=float, default=FPS, help=f"qwen2-vl: video frames sampled per second (default {FPS:g})")
    parser.add_argument("--video-max-tokens", type=int, default=VIDEO_MAX_TOKENS, help=f"qwen2-vl: a video's most pad tokens (default {VIDEO_MAX_TOKENS})")


def prepare(argv: list[str], chat: bool):
    """Everything checked before the pipeline starts; returns (sources, output, settings, Beam options)."""
    prog = "beam_runner.py sft" if chat else "beam_runner.py stage2"
    parser = ArgumentParser(prog=prog, description="Stage-3 ChatML samples." if chat else "Stage-2 multi-task samples.",
                            epilog="Any other option is a Beam pipeline option and goes to Beam as it is (e.g. --runner DataflowRunner ...); "
                                   "a misspelt one is an error before the run.")
    if chat:
        parser.add_argument("--input", required=True, help="a fine-tuning JSON list or .jsonl (or a folder or glob of them): id, conversations of from/value, or messages of role/content with images/videos")
        parser.add_argument("--images", help="the folder image paths are relative to (default: the input's folder)")
    else:
        parser.add_argument("--source", action="append", required=True, metavar="TASK:FORMAT=PATH", help="a data set's annotations (repeatable)")
        parser.add_argument("--images", action="append", default=[], metavar="FORMAT=FOLDER", help="where a format's images are (default: its PATH's folder)")
    _common_options(parser)
    args, beam_args = parser.parse_known_args(argv)
    options = pipeline_options(beam_args, prog.split()[-1])
    if args.seq_len < 16:
        raise UsageError(f"--seq-len must be >= 16, not {args.seq_len}")
    if args.pack_group < 1:
        raise UsageError(f"--pack-group must be >= 1, not {args.pack_group}")
    if not 0 < args.min_pixels <= args.max_pixels:
        raise UsageError(f"--min-pixels {args.min_pixels} and --max-pixels {args.max_pixels}: need 0 < min <= max")
    if args.video_fps <= 0 or args.video_max_tokens < 1:
        raise UsageError(f"--video-fps {args.video_fps:g} and --video-max-tokens {args.video_max_tokens}: both must be positive")
    try:
        tokenizer = QwenTokenizer(args.tokenizer)
    except VocabularyError as e:
        raise UsageError(str(e)) from None
    if chat:
        if not has_glob(args.input) and not exists(args.input):
            raise UsageError(f"--input {args.input} does not exist")
        files = source_files(args.input, None)
        if not files:
            raise UsageError(f"--input {args.input}: no .json or .jsonl files there")
        folder = args.input if args.input.endswith("/") or is_dir(args.input) else os.path.dirname(args.input) or "."
        name = os.path.splitext(os.path.basename(os.path.normpath(args.input)))[0] if not has_glob(args.input) else os.path.basename(os.path.normpath(folder))
        sources = [Source(CHAT, name, args.input, args.images or folder, files)]
    else:
        images = parse_images(args.images)
        sources = [parse_source(spec, images) for spec in args.source]
    settings = {
        "stage": "sft" if chat else "stage2",
        "sources": [{**s._asdict(), "files": len(s.files)} for s in sources],
        "seq_len": args.seq_len,
        "pack_group": args.pack_group,
        "mix_tasks": args.mix_tasks,
        "tokenizer": str(tokenizer.path),
        "tokenizer_from_package": args.tokenizer is None,
        "dialect": args.dialect,
    }
    if args.dialect != "qwen-vl":
        settings.update(min_pixels=args.min_pixels, max_pixels=args.max_pixels, video_fps=args.video_fps, video_max_tokens=args.video_max_tokens)
    return sources, args.output, settings, options


def run(argv: list[str], chat: bool = False) -> dict:
    """Run stage 2 (or sft) and return its report (also written to OUTPUT/report.json and printed)."""
    sources, output, settings, options = prepare(argv, chat)
    clear_outputs(output, ["samples/*.parquet*", "packed/*.parquet*", f"packed/{MANIFEST}", "rejected/*.parquet*", "report.json"], "files of an earlier run")
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, sources, output, settings, chat)
    write_manifest(FileSystems.join(output, "packed"))  # row groups per file, for the trainer (formats/parquet_manifest.py)
    with FileSystems.open(FileSystems.join(output, "report.json"), compression_type="uncompressed") as f:
        report = json.loads(f.read())
    print(format_report(report))
    return report
