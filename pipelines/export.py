"""Export on Beam: stage-1 curated/, stage-2 or sft samples/ -> the layout another trainer reads.

    python beam_runner.py export --from sft/samples --to llamafactory --output export-lf/ [--dialect qwen2-vl]
    python beam_runner.py export --from stage1/curated --to webdataset --output export-wds/ [--shard-size 10000]

Each row becomes a conversation (formats/row_messages.py), written as:
- `llamafactory` (LLaMA-Factory data/README.md, sharegpt format with role/content tags): OUT/data/*.jsonl,
  one `{"messages": [...], "images": ["images/UID-0.jpg"]}` a line, the images as files under OUT/images/
  (paths relative to OUT, which LLaMA-Factory takes as its dataset_dir and media_dir), and
  OUT/dataset_info.json with one entry naming the folder `data` ("file_name" may be a folder), "formatting":
  "sharegpt", its columns and tags;
- `swift` (ms-swift docs, "Custom Dataset", standard messages format): the same JSONL lines and images,
  without dataset_info.json (image paths are relative to OUT: run ms-swift from there, or prefix them);
- `webdataset` (img2dataset's webdataset output, its README "Output format choice"): OUT/*.tar shards of
  KEY.jpg (the image, named after its format; KEY.0.jpg, KEY.1.png... when a sample has several or none),
  KEY.txt (the last assistant turn: a curated row's caption) and KEY.json (key, uid, source, task, url,
  caption, status, the messages and the image members), each tar beside its .parquet of metadata
  (formats/schemas.py IMG2DATASET_METADATA) and _stats.json, as img2dataset writes them; KEY is the row's
  uid (32 hex digits: no dot, so webdataset's grouping by the first dot keeps a sample together).

Streaming: each input Parquet file is read by one worker a row group at a time, and its rows are written
as it goes into shards of --shard-size rows named after it (OUT/data/FILE-SSSSS.jsonl, OUT/FILE-SSSSS.tar):
a worker holds one row group and one image at a time, never the data set. Every file is written beside
its place and renamed into it (a retried bundle replaces it whole). Rejects go to
OUT/rejected/export-TASK-*.parquet (formats/schemas.py STAGE2_REJECTED) and are counted, per reason, in
OUT/report.json.
"""

import io
import json
import os
import tarfile
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from cli.usage import ArgumentParser, UsageError
from formats import schemas
from formats.dialects import DIALECTS, get_dialect, row_dialect
from formats.row_messages import Conversation, check_images, curated_conversation, sample_conversation
from formats.example import CAPTION, Invalid
from formats.files import is_dir, list_files, open_file, parquet_file
from formats.ids import sample_uid
from formats.reasons import FILE_UNREADABLE
from formats.tokenizer import QwenTokenizer
from pipelines.runner import pipeline_options
from pipelines.sink import REJECTED, ROW_GROUP, GroupByUid, clear_outputs, group_file, parquet_codecs, write_rows
from pipelines.spread import Spread
from pipelines.stage2 import CHAT, PACK_GROUP

TARGETS = ("llamafactory", "swift", "webdataset")
SHARD_SIZE = 10_000  # rows per output shard: img2dataset's default number_sample_per_shard
TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}


def dataset_info(name: str) -> dict:
    """LLaMA-Factory's dataset_info.json entry for OUT/data/ (its data/README.md, sharegpt format)."""
    return {name: {"file_name": "data", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"}, "tags": TAGS}}


def _write_whole(path: str, data: bytes) -> None:
    """`data` to `path`, written beside it and renamed into place."""
    partial = f"{path}.partial-{uuid.uuid4().hex}"
    with FileSystems.create(partial) as f:
        f.write(data)
    FileSystems.rename([partial], [path])


class _Shards:
    """Rows of one input file -> shards of `shard_size` rows named STEM-SSSSS; `add` counts them."""

    def __init__(self, output: str, stem: str, shard_size: int):
        self.output, self.stem, self.shard_size = output, stem, shard_size
        self.shards = self.in_shard = 0
        self.partial = self.path = None

    def add(self, row: dict, conversation: Conversation, extensions: list[str]) -> None:
        if self.partial is None:
            self.path = self.shard_path(f"{self.stem}-{self.shards:05d}")
            self.partial = f"{self.path}.partial-{uuid.uuid4().hex}"
            self.open(self.partial)
        self.write(row, conversation, extensions)
        self.in_shard += 1
        if self.in_shard == self.shard_size:
            self.close()

    def close(self) -> None:
        if self.partial is not None:
            self.finish()
            FileSystems.rename([self.partial], [self.path])
            self.shards, self.in_shard, self.partial = self.shards + 1, 0, None


class JsonlShards(_Shards):
    """LLaMA-Factory and ms-swift: OUT/data/STEM-SSSSS.jsonl, images as files under OUT/images/."""

    def shard_path(self, name: str) -> str:
        return FileSystems.join(self.output, "data", f"{name}.jsonl")

    def open(self, path: str) -> None:
        self.file = FileSystems.create(path)

    def write(self, row: dict, conversation: Conversation, extensions: list[str]) -> None:
        paths = [f"images/{row['uid']}-{i}.{ext}" for i, ext in enumerate(extensions)]
        for path, data in zip(paths, conversation.images):
            _write_whole(FileSystems.join(self.output, path), data)
        record = {"messages": conversation.messages, "images": paths}
        self.file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def finish(self) -> None:
        self.file.close()


class TarShards(_Shards):
    """img2dataset's webdataset: OUT/STEM-SSSSS.tar, .parquet and _stats.json."""

    def shard_path(self, name: str) -> str:
        return FileSystems.join(self.output, f"{name}.tar")

    def open(self, path: str) -> None:
        self.file = FileSystems.create(path)
        self.tar = tarfile.open(fileobj=self.file, mode="w|")
        self.metadata = []

    def write(self, row: dict, conversation: Conversation, extensions: list[str]) -> None:
        key = row["uid"]
        single = len(extensions) == 1
        names = [f"{key}.{ext}" if single else f"{key}.{i}.{ext}" for i, ext in enumerate(extensions)]
        caption = conversation.messages[-1]["content"]
        meta = {"key": key, "url": row.get("url"), "caption": caption, "status": "success", "error_message": None,
                "width": row.get("width"), "height": row.get("height")}
        record = {**meta, "uid": row["uid"], "source": row["source"], "source_key": row["key"], "task": row.get("task", CAPTION),
                  "messages": conversation.messages, "images": names}
        members = list(zip(names, conversation.images))
        members += [(f"{key}.txt", caption.encode("utf-8")), (f"{key}.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            self.tar.addfile(info, io.BytesIO(data))
        self.metadata.append(meta)

    def finish(self) -> None:
        self.tar.close()
        self.file.close()
        base = self.path[: -len(".tar")]
        table = pa.Table.from_pylist(self.metadata, schemas.IMG2DATASET_METADATA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression=parquet_codecs(schemas.IMG2DATASET_METADATA))
        _write_whole(f"{base}.parquet", sink.getvalue().to_pybytes())
        n = len(self.metadata)
        stats = {"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0, "status_dict": {"success": n}}
        _write_whole(f"{base}_stats.json", json.dumps(stats, indent=2).encode("utf-8"))


class ExportFile(beam.DoFn):
    """One input Parquet file -> its output shards; yields (counter, n) for the report and each reject
    (tagged). The tokenizers (for a sample's supervised ids) load once per worker, per dialect, on first use."""

    def __init__(self, settings: dict):
        self.settings = settings

    def setup(self):
        self.tokenizers = {}
        self.dialect = get_dialect(self.settings["dialect"]) if self.settings["dialect"] else None

    def decoder(self, row: dict):
        dialect = row_dialect(row)
        if dialect.name not in self.tokenizers:
            self.tokenizers[dialect.name] = QwenTokenizer(self.settings["tokenizer"], dialect)
        return self.tokenizers[dialect.name].decode

    def conversation(self, row: dict, curated: bool) -> Conversation | Invalid:
        if curated:
            return curated_conversation(row)
        return sample_conversation(row, row["task"] == CHAT, self.decoder(row), self.dialect)

    def process(self, path: str):
        settings = self.settings
        stem = os.path.basename(path)[: -len(".parquet")]
        shards = (TarShards if settings["target"] == "webdataset" else JsonlShards)(settings["output"], stem, settings["shard_size"])
        exported = images = 0
        try:
            with open_file(path, compression=None) as f:
                reader = parquet_file(f)
                curated = "caption" in reader.schema_arrow.names
                for batch in reader.iter_batches(batch_size=ROW_GROUP):
                    for row in batch.to_pylist():
                        row.setdefault("task", CAPTION)
                        found = self.conversation(row, curated)
                        extensions = found if isinstance(found, Invalid) else check_images(found, row["source"], row["key"])
                        if isinstance(extensions, Invalid):
                            Metrics.counter("export", extensions.reason).inc()
                            yield beam.pvalue.TaggedOutput(REJECTED, reject_row(row, extensions))
                            continue
                        shards.add(row, found, extensions)
                        exported, images = exported + 1, images + len(extensions)
        except (OSError, pa.ArrowException) as e:
            problem = Invalid("", path, FILE_UNREADABLE, f"{type(e).__name__}: {e}")
            yield beam.pvalue.TaggedOutput(REJECTED, reject_row({"task": "export", "source": "", "key": path}, problem))
        shards.close()
        Metrics.counter("export", "exported").inc(exported)
        yield from (("exported", exported), ("images", images), ("shards", shards.shards))


def reject_row(row: dict, item: Invalid) -> dict:
    return {"uid": row.get("uid") or sample_uid(row["task"], row["source"], row["key"]), "task": row["task"], "source": row["source"],
            "key": row["key"], "reason": item.reason, "detail": item.detail}


def write_rejects(group: tuple, output: str) -> str:
    """One (task, index, groups) group of rejects, sorted by uid -> rejected/export-TASK-*."""
    (task, index, groups), rows = group
    return write_rows(group_file(FileSystems.join(output, "rejected"), f"export-{task}", index, groups), rows, schemas.STAGE2_REJECTED)


def build_report(counts: list, rejects: list, settings: dict) -> dict:
    """report.json: rows exported, images and shards written, rejects per reason."""
    totals = dict(counts)
    rejected = dict(sorted(rejects))
    return {"stage": "export", "exported": totals.get("exported", 0), "images": totals.get("images", 0), "shards": totals.get("shards", 0),
            "rejected": sum(rejected.values()), "rejected_by_reason": rejected, "settings": settings}


def build_pipeline(p, settings: dict) -> None:
    """Add the export graph to pipeline `p`."""
    output = settings["output"]
    results = (
        p
        | "Folder" >> beam.Create([settings["from"]])
        | "Files" >> beam.FlatMap(lambda folder: list_files(folder, "*.parquet"))
        | "SpreadFiles" >> Spread()
        | "Export" >> beam.ParDo(ExportFile(settings)).with_outputs(REJECTED, main="counts")
    )
    rejected = results[REJECTED]
    rejected | "RejectGroups" >> GroupByUid(lambda row: row["task"], PACK_GROUP) | "WriteRejects" >> beam.Map(write_rejects, output)
    counts = results.counts | "Sum" >> beam.CombinePerKey(sum) | "ListCounts" >> beam.combiners.ToList()
    reasons = rejected | "Reasons" >> beam.Map(lambda row: row["reason"]) | "CountReasons" >> beam.combiners.Count.PerElement() | "ListReasons" >> beam.combiners.ToList()
    (
        p
        | "ReportStart" >> beam.Create([None])
        | "BuildReport" >> beam.Map(lambda _, c, r: build_report(c, r, settings), beam.pvalue.AsSingleton(counts), beam.pvalue.AsSingleton(reasons))
        | "ToJson" >> beam.Map(lambda r: json.dumps(r, indent=2, ensure_ascii=False))
        | "WriteJson" >> beam.io.WriteToText(FileSystems.join(output, "report.json"), shard_name_template="")
    )


def prepare(argv: list[str]) -> tuple[dict, object]:
    """The settings and Beam options, everything checked before the pipeline starts."""
    parser = ArgumentParser(prog="beam_runner.py export", description="Export curated/ or samples/ to LLaMA-Factory, ms-swift or webdataset.",
                            epilog="Any other option is a Beam pipeline option (e.g. --runner DataflowRunner ...).")
    parser.add_argument("--from", dest="source", required=True, help="a stage-1 curated/ folder, or a stage-2 or sft samples/ folder")
    parser.add_argument("--to", required=True, choices=TARGETS, help="the layout to write")
    parser.add_argument("--output", required=True, help="the folder to write into")
    parser.add_argument("--dialect", choices=list(DIALECTS), help="grounding markup to write (default: each row's own)")
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE, help=f"rows per output shard (default {SHARD_SIZE})")
    parser.add_argument("--tokenizer", help="a qwen.tiktoken file (default: the one the dashscope wheel ships)")
    args, beam_args = parser.parse_known_args(argv)
    options = pipeline_options(beam_args, "export")
    if args.shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1, not {args.shard_size}")
    if not is_dir(args.source) or not list_files(args.source, "*.parquet"):
        raise UsageError(f"--from {args.source}: no folder of .parquet files (a curated/ or samples/ folder)")
    settings = {"from": args.source, "target": args.to, "output": args.output, "dialect": args.dialect, "shard_size": args.shard_size,
                "tokenizer": args.tokenizer}
    return settings, options


def run(argv: list[str]) -> dict:
    """Run the export and return its report (also written to OUTPUT/report.json)."""
    settings, options = prepare(argv)
    output = settings["output"]
    clear_outputs(output, ["data/*.jsonl*", "images/*", "*.tar*", "*.parquet*", "*_stats.json", "rejected/*.parquet*", "report.json",
                           "dataset_info.json"], "files of an earlier export")
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, settings)
    if settings["target"] == "llamafactory":
        name = os.path.basename(os.path.normpath(output))
        with FileSystems.create(FileSystems.join(output, "dataset_info.json")) as f:
            f.write(json.dumps(dataset_info(name), indent=2).encode("utf-8"))
    with FileSystems.open(FileSystems.join(output, "report.json"), compression_type="uncompressed") as f:
        return json.loads(f.read())
