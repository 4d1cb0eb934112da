"""Stage-3 conversations built on Beam from stage-2 data sets (formats/conversations.py) -> OUT/chat/ (JSONL
shards), which `sft --input OUT/chat/` reads as they are, beside rejected/ and report.json.

    python beam_runner.py sft-build --source vqa:vqav2=/data/vqav2 --images vqav2=/data/coco/train2014 \\
        --source caption:coco=/data/coco/annotations/captions_train2014.json --images coco=/data/coco/train2014 \\
        --source referring:refcoco=/data/refer/refcoco --images refcoco=/data/coco/train2014 \\
        --output sft-data/ [--mode multi-turn,multi-image,task] [--max-turns 4] \\
        [--text dialogue.jsonl --text-ratio 0.2] [--seed 0]
    python beam_runner.py sft --input sft-data/chat/ --output sft/

The graph: each --source is read by its converter as stage 2 reads it (pipelines/stage2.ReadSource);
each example's image is read for its size (the annotations' size where they give it) and to prove it is
there, its boxes put on the 1000 grid, and the example checked as stage 2 renders it; its `image` becomes
the image's full path (absolute when local), so the conversations need no --images. An image the
example carries as bytes (our curated rows, GRIT's tars) is written once to OUT/images/, named by the
SHA-256 of its bytes (a retried bundle writes the same file; one image shown by several examples is one
file and one key below). Then:
- multi-turn and task concatenation: a GroupByKey on the image's path; one key holds one image's
  examples (a few dozen in VQAv2 or RefCOCO), so a worker's memory is bounded per image, not per run;
- multi-image: the captions in hash buckets of their image's path, about MULTI_IMAGE_GROUP captions a
  bucket (pipelines/sink.GroupByUid), so pictures of one conversation come from anywhere in the data;
- --text: a JSON list or JSONL of text-only dialogues in either layout formats/chatml.py reads.
The conversations (text and paths, no image bytes: about 1 KB each) and the text dialogues go to shards
of about CHAT_SHARD conversations by the hash of their id (a CoGroupByKey on the shard; the one side
input is the count of conversations); each shard mixes its texts in at --text-ratio
(formats/conversations.mix_text: within half a conversation of the ratio per shard, so within half the
number of shards overall) and writes OUT/chat/chat-IIIII-of-NNNNN.jsonl. A worker holds one shard.
Whatever cannot be used is a rejected row with its reason, as in stage 2 (rejected/samples-TASK-*.parquet),
counted in report.json.
"""

import dataclasses
import hashlib
import json
import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from cli.usage import ArgumentParser, UsageError
from formats import conversations
from formats.boxes import normalize_example
from formats.example import CAPTION, TEXT, Example, Invalid
from formats.files import exists, join
from formats.ids import pair_uid
from formats.row_messages import image_extension
from formats.templates import check
from pipelines.runner import pipeline_options
from pipelines.sink import REJECTED, GroupByUid, clear_outputs, group_of
from pipelines.stage2 import PACK_GROUP, ReadSource, Source, parse_images, parse_source, read_image, reject_row, write_rejects

CHAT_FOLDER = "chat"  # OUT/chat/chat-IIIII-of-NNNNN.jsonl: what `sft --input OUT/chat/` reads
CHAT_SHARD = 50_000  # conversations per shard (about 50 MB of JSON)
MULTI_IMAGE_GROUP = 1024  # captions per multi-image bucket
UNSUPPORTED_FORMATS = ("video",)  # videos: Qwen-VL's conversations show images only


def image_path(folder: str, name: str) -> str:
    """The image's path as a conversation shows it: absolute when local, so sft finds it from anywhere."""
    path = join(folder, name)
    return path if "://" in path else os.path.abspath(path)


def write_carried_image(data: bytes, output: str) -> str:
    """An image an example carries as bytes -> its file OUT/images/SHA256.EXT (written when missing)."""
    name = f"{hashlib.sha256(data).hexdigest()}.{image_extension(data) or 'bin'}"
    path = image_path(FileSystems.join(output, "images"), name)
    if not FileSystems.exists(path):
        with FileSystems.create(path) as f:
            f.write(data)
    return path


class PrepareExamples(beam.DoFn):
    """A converter's Examples -> (image path, the example normalized, `image` its full path; an image it
    carries as bytes written to OUT/images/ first); a converter's Invalid, an image missing or unreadable,
    a bad box or an example stage 2 cannot render -> a reject."""

    def __init__(self, output: str):
        self.output = output

    def process(self, item, source: Source):
        if not isinstance(item, Invalid):
            found = read_image(item, source.images)
            if not isinstance(found, Invalid):
                _, width, height = found
                found = normalize_example(item, width, height)
            item = found if isinstance(found, Invalid) else (check(found) or found)
        if isinstance(item, Invalid):
            Metrics.counter("sft_build", item.reason).inc()
            yield beam.pvalue.TaggedOutput(REJECTED, reject_row(source.task, item))
            return
        if item.image_bytes is not None:
            path = write_carried_image(item.image_bytes, self.output)
        else:
            path = image_path(source.images, item.image)
        yield path, dataclasses.replace(item, image=path, image_bytes=None)


def text_source(path: str) -> Source:
    """The --text file as a Source named by its file name without the extension, as sft names its input."""
    return Source(TEXT, os.path.splitext(os.path.basename(path))[0], path, "", (path,))


def text_conversations(item, source: Source):
    """One (FILE:INDEX, record) of the --text file -> a text conversation, or its reject (tagged)."""
    where, record = item
    made = record if isinstance(record, Invalid) else conversations.text_conversation(record, source.format, where)
    if isinstance(made, Invalid):
        Metrics.counter("sft_build", made.reason).inc()
        yield beam.pvalue.TaggedOutput(REJECTED, reject_row(TEXT, made))
    else:
        yield made


def mode_of(record: dict) -> str:
    """The mode that built a conversation, from its id (MODE-DIGEST)."""
    return record["id"].rsplit("-", 1)[0]


def write_shard(group: tuple, output: str, ratio: float) -> dict:
    """One shard's conversations and texts -> OUT/chat/chat-IIIII-of-NNNNN.jsonl, the text mixed in at
    `ratio` (formats/conversations.mix_text; one record a line, in mix order); answers its conversations
    and parts per mode."""
    (index, groups), found = group
    records = conversations.mix_text(list(found["built"]), list(found["texts"]), ratio)
    modes: dict[str, list[int]] = {}
    for record in records:
        m = modes.setdefault(mode_of(record), [0, 0])
        m[0] += 1
        m[1] += len(record["parts"])
    if records:
        path = FileSystems.join(output, CHAT_FOLDER, f"chat-{index:05d}-of-{groups:05d}.jsonl")
        partial = f"{path}.partial"
        with FileSystems.create(partial) as f:
            for record in records:
                f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        FileSystems.rename([partial], [path])
    return modes


def merge_modes(shards) -> dict[str, list[int]]:
    """The shards' {mode: [conversations, parts]} summed (a few keys: a bounded global combine)."""
    total: dict[str, list[int]] = {}
    for modes in shards:
        for mode, (n, parts) in modes.items():
            t = total.setdefault(mode, [0, 0])
            t[0], t[1] = t[0] + n, t[1] + parts
    return total


def build_report(_, modes: dict, texts: int, examples: list, rejects: list, settings: dict) -> dict:
    """report.json: usable examples per task, conversations and parts per mode, texts available, rejects
    per task and reason."""
    modes = {mode: {"conversations": n, "parts": parts} for mode, (n, parts) in modes.items()}
    if settings["text"]:
        modes.setdefault(conversations.TEXT_MODE, {"conversations": 0, "parts": 0})
    total = sum(m["conversations"] for m in modes.values())
    rejected: dict[str, dict] = {}
    for (task, reason), n in rejects:
        rejected.setdefault(task, {})[reason] = n
    return {
        "stage": "sft-build",
        "examples": dict(sorted(examples)),
        "modes": dict(sorted(modes.items())),
        "texts_available": texts,
        "rejected": {task: dict(sorted(r.items())) for task, r in sorted(rejected.items())},
        "total": {
            "conversations": total,
            "text_share": round(modes[conversations.TEXT_MODE]["conversations"] / total, 4) if settings["text"] and total else 0.0,
            "rejected": sum(n for _, n in rejects),
        },
        "settings": settings,
    }


def build_pipeline(p, sources: list[Source], output: str, settings: dict):
    """Add the sft-build graph to pipeline `p`."""
    modes, seed, max_turns = settings["modes"], settings["seed"], settings["max_turns"]
    prepared = []
    for i, source in enumerate(sources):
        label = f"{source.task}:{source.format}[{i}]"
        read = p | f"Read[{label}]" >> ReadSource(source)
        prepared.append(read | f"Prepare[{label}]" >> beam.ParDo(PrepareExamples(output), source).with_outputs(REJECTED, main="examples"))
    examples = [b.examples for b in prepared] | "AllExamples" >> beam.Flatten()
    rejected = [b[REJECTED] for b in prepared]
    built = []
    if conversations.MULTI_TURN in modes or conversations.TASK in modes:
        by_image = examples | "ByImage" >> beam.GroupByKey()
        if conversations.MULTI_TURN in modes:
            built.append(by_image | "MultiTurn" >> beam.FlatMap(lambda kv: conversations.multi_turn(kv[1], max_turns, seed)))
        if conversations.TASK in modes:
            built.append(by_image | "Tasks" >> beam.FlatMap(lambda kv: conversations.task_concatenation(kv[1], seed)))
    if conversations.MULTI_IMAGE in modes:
        built.append(
            examples
            | "Captions" >> beam.Filter(lambda kv: kv[1].task == CAPTION)
            | "CaptionRows" >> beam.MapTuple(lambda path, e: {"uid": pair_uid("image", path), "example": e})
            | "Buckets" >> GroupByUid(lambda row: "captions", MULTI_IMAGE_GROUP)
            | "MultiImage" >> beam.FlatMap(lambda group: conversations.multi_image([row["example"] for row in group[1]], seed))
        )
    built = built | "AllConversations" >> beam.Flatten()
    texts = p | "NoText" >> beam.Create([])
    if settings["text"]:
        source = text_source(settings["text"])
        made = (
            p
            | "Read[text]" >> ReadSource(source, chat=True)
            | "TextConversations" >> beam.FlatMap(text_conversations, source).with_outputs(REJECTED, main="texts")
        )
        texts = made.texts
        rejected.append(made[REJECTED])
    rejected = rejected | "AllRejects" >> beam.Flatten()
    rejected | "RejectGroups" >> GroupByUid(lambda row: row["task"], PACK_GROUP) | "WriteRejects" >> beam.Map(write_rejects, output)

    def counts(pcoll, name, key):
        return beam.pvalue.AsSingleton(pcoll | f"Key[{name}]" >> beam.Map(key) | f"Count[{name}]" >> beam.combiners.Count.PerElement() | f"List[{name}]" >> beam.combiners.ToList())

    # shards of about CHAT_SHARD conversations by the hash of their id, each with the texts whose id hashes
    # to it: no worker holds more than a shard (the count of conversations is the one side input)
    count = beam.pvalue.AsSingleton(built | "CountConversations" >> beam.combiners.Count.Globally())

    def shard(record, n):
        return group_of(record["id"], n, CHAT_SHARD), record

    modes = (
        {"built": built | "ShardConversations" >> beam.Map(shard, count), "texts": texts | "ShardTexts" >> beam.Map(shard, count)}
        | "Shards" >> beam.CoGroupByKey()
        | "WriteShards" >> beam.Map(write_shard, output, settings["text_ratio"])
        | "SumModes" >> beam.CombineGlobally(merge_modes)
    )
    (
        p
        | "Start" >> beam.Create([None])
        | "BuildReport" >> beam.Map(
            build_report,
            beam.pvalue.AsSingleton(modes),
            beam.pvalue.AsSingleton(texts | "CountTexts" >> beam.combiners.Count.Globally()),
            counts(examples, "examples", lambda kv: kv[1].task),
            counts(rejected, "rejects", lambda row: (row["task"], row["reason"])),
            settings,
        )
        | "ToJson" >> beam.Map(lambda r: json.dumps(r, indent=2, ensure_ascii=False))
        | "WriteReport" >> beam.io.WriteToText(FileSystems.join(output, "report.json"), shard_name_template="")
    )


def prepare(argv: list[str]):
    """Everything checked before the pipeline starts; returns (sources, output, settings, Beam options)."""
    parser = ArgumentParser(prog="beam_runner.py sft-build", description="Stage-3 conversations built from stage-2 data sets (formats/conversations.py).",
                            epilog="Any other option is a Beam pipeline option and goes to Beam as it is.")
    parser.add_argument("--source", action="append", required=True, metavar="TASK:FORMAT=PATH",
                        help=f"a data set's annotations (repeatable); tasks: {', '.join(conversations.TASKS)}")
    parser.add_argument("--images", action="append", default=[], metavar="FORMAT=FOLDER", help="where a format's images are (default: its PATH's folder)")
    parser.add_argument("--output", required=True, help=f"folder for {CHAT_FOLDER}/ (JSONL shards), rejected/ and report.json")
    parser.add_argument("--mode", default=",".join(conversations.MODES), help=f"comma-separated, of {', '.join(conversations.MODES)} (default all)")
    parser.add_argument("--max-turns", type=int, default=conversations.MAX_TURNS, help=f"multi-turn: the most turns a conversation (default {conversations.MAX_TURNS})")
    parser.add_argument("--text", help="a JSON list or JSONL of pure-text dialogues (conversations or messages layout) to mix in")
    parser.add_argument("--text-ratio", type=float, help="the share of text conversations in the output (default 0.2 with --text)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every choice (default 0)")
    args, beam_args = parser.parse_known_args(argv)
    options = pipeline_options(beam_args, "sft-build")
    modes = [m for m in args.mode.split(",") if m]
    unknown = [m for m in modes if m not in conversations.MODES]
    if unknown or not modes:
        raise UsageError(f"--mode {args.mode!r}: use one or more of {', '.join(conversations.MODES)}, comma-separated")
    if args.max_turns < 2:
        raise UsageError(f"--max-turns must be >= 2, not {args.max_turns}")
    if args.text_ratio is not None and not args.text:
        raise UsageError("--text-ratio needs --text")
    ratio = 0.2 if args.text_ratio is None else args.text_ratio
    if not 0 <= ratio < 1:
        raise UsageError(f"--text-ratio must be in [0, 1), not {ratio:g}")
    if args.text and not exists(args.text):
        raise UsageError(f"--text {args.text} does not exist")
    images = parse_images(args.images)
    sources = [parse_source(spec, images) for spec in args.source]
    for spec, source in zip(args.source, sources):
        if source.task not in conversations.TASKS or source.format in UNSUPPORTED_FORMATS:
            raise UsageError(f"--source {spec!r}: sft-build reads image files of {', '.join(conversations.TASKS)}, not {source.task}:{source.format}")
    settings = {
        "stage": "sft-build",
        "sources": [{**s._asdict(), "files": len(s.files)} for s in sources],
        "modes": modes,
        "max_turns": args.max_turns,
        "text": args.text,
        "text_ratio": ratio if args.text else 0.0,
        "seed": args.seed,
    }
    return sources, args.output, settings, options


def format_report(report: dict) -> str:
    lines = [f"sft-build: {report['total']['conversations']:,} conversations in {CHAT_FOLDER}/"]
    lines += [f"  {mode:<12}{m['conversations']:>8,} conversations of {m['parts']:,} parts" for mode, m in report["modes"].items()]
    reasons = {}
    for r in report["rejected"].values():
        for reason, n in r.items():
            reasons[reason] = reasons.get(reason, 0) + n
    if reasons:
        lines.append("rejected: " + ", ".join(f"{reason} {n:,}" for reason, n in sorted(reasons.items())))
    return "\n".join(lines)


def run(argv: list[str]) -> dict:
    """Run sft-build and return its report (also written to OUTPUT/report.json and printed)."""
    sources, output, settings, options = prepare(argv)
    clear_outputs(output, [f"{CHAT_FOLDER}/*.jsonl*", "rejected/*.parquet*", "report.json"], "files of an earlier run")
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, sources, output, settings)
    with FileSystems.open(FileSystems.join(output, "report.json"), compression_type="uncompressed") as f:
        report = json.loads(f.read())
    print(format_report(report))
    return report
