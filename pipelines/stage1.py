"""Stage 1 on Beam: raw pairs -> curated/ and rejected/ Parquet and report.json (DESIGN.md, contracts).

    python beam_runner.py stage1 --input laion-en=/data/laion-en/ --input cc12m=/data/cc12m/*.tar \\
        --output /data/stage1 [--config my.toml] [Beam options, e.g. --runner DataflowRunner ...]

The graph: read each source's files (a DoFn per file, spread over workers), apply the rules that need no
pixels to every pair, then decode the images that pass, once (filters/stage1.py), write the two outputs
with Beam's Parquet sink, and count (source, outcome) into the report. Every pair ends in exactly one
output. A rerun into the same --output first removes what an earlier run left there, so the folder never
mixes two runs.
"""

import dataclasses
import json
import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from tqdm import tqdm

from filters.config import ConfigError, SourceConfig, load_config
from filters.pair import RawPair
from filters.stage1 import curate
from formats import schemas
from pipelines import report as report_lib
from pipelines.inputs import IMG2DATASET_PARQUET, MANIFEST, WEBDATASET, Input, resolve_input
from pipelines.readers import read_img2dataset_parquet, read_manifest, read_webdataset
from pipelines.usage import ArgumentParser, UsageError, unknown_beam_args

READERS = {WEBDATASET: read_webdataset, IMG2DATASET_PARQUET: read_img2dataset_parquet, MANIFEST: read_manifest}
DEFAULT_RUNNER = "FnApiRunner"  # Beam's in-process runner: no Prism download, no service, no network
log = logging.getLogger("stage1")


class ReadFile(beam.DoFn):
    """One input file -> RawPairs, with the layout's reader; a progress bar of the source's files read in
    this process (shown on a terminal only)."""

    def __init__(self, source: str, layout: str, total_files: int):
        self.source, self.layout, self.total_files = source, layout, total_files
        self.files = Metrics.counter("stage1", "files_read")

    def setup(self):
        self.bar = tqdm(total=self.total_files, desc=f"stage1 {self.source}", unit="file", disable=None, leave=False)

    def process(self, path: str):
        count = 0
        for count, pair in enumerate(READERS[self.layout](self.source, path), 1):
            yield pair
        self.files.inc()
        self.bar.update()
        log.debug("%s: %d pairs from %s", self.source, count, path)

    def teardown(self):
        self.bar.close()


class ReadSource(beam.PTransform):
    """All pairs of one --input: its files spread over the workers, each read whole by one of them."""

    def __init__(self, inp: Input):
        super().__init__()
        self.inp = inp

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self.inp.files)
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(ReadFile(self.inp.source, self.inp.layout, len(self.inp.files)))
        )


class Curate(beam.DoFn):
    """filters.stage1.curate on each pair: curated rows out the main output, rejects tagged.

    One DoFn with two outputs, on purpose: graphs that flattened a second step's rejects with the first's
    lost some rejects under the FnApiRunner's multi_processing mode (Beam 2.77, seen at 20,000 pairs,
    cause not pinned down); this shape was checked complete at 20,000 and 100,000 pairs."""

    REJECTED = "rejected"

    def __init__(self, configs: dict[str, SourceConfig], keep_rejected_images: bool):
        self.configs, self.keep_rejected_images = configs, keep_rejected_images

    def process(self, pair: RawPair):
        kept, row = curate(pair, self.configs[pair.source], self.keep_rejected_images)
        if kept:
            Metrics.counter("stage1", report_lib.KEPT).inc()
            yield row
        else:
            Metrics.counter("stage1", row["reason"]).inc()
            yield beam.pvalue.TaggedOutput(self.REJECTED, row)


class WriteReport(beam.PTransform):
    """Count (source, outcome) over both outputs and write DIR/report.json."""

    def __init__(self, output: str, settings: dict):
        super().__init__()
        self.output, self.settings = output, settings

    def expand(self, outputs):
        curated, rejected = outputs
        kept = curated | "OutcomeKept" >> beam.Map(lambda row: (row["source"], report_lib.KEPT))
        dropped = rejected | "OutcomeDropped" >> beam.Map(lambda row: (row["source"], row["reason"]))
        return (
            (kept, dropped)
            | "Outcomes" >> beam.Flatten()
            | "CountOutcomes" >> beam.combiners.Count.PerElement()
            | "AllCounts" >> beam.combiners.ToList()
            | "BuildReport" >> beam.Map(report_lib.build_report, self.settings)
            | "ToJson" >> beam.Map(lambda report: json.dumps(report, indent=2, ensure_ascii=False))
            | "WriteJson" >> beam.io.WriteToText(FileSystems.join(self.output, "report.json"), shard_name_template="")
        )


def _codecs(schema) -> dict[str, str]:
    """zstd for every column but the encoded images, which it cannot shrink: compressing them costs time."""
    return {name: "none" if name == "image" else "zstd" for name in schema.names}


def build_pipeline(p, inputs: list[Input], configs: dict, output: str, keep_rejected_images: bool = True):
    """Add the stage-1 graph to pipeline `p`."""
    pairs = [p | f"Read[{inp.source}]" >> ReadSource(inp) for inp in inputs] | "AllPairs" >> beam.Flatten()
    outputs = pairs | "Curate" >> beam.ParDo(Curate(configs, keep_rejected_images)).with_outputs(Curate.REJECTED, main="curated")
    curated, rejected = outputs.curated, outputs[Curate.REJECTED]
    for name, rows, schema in (("curated", curated, schemas.CURATED), ("rejected", rejected, schemas.REJECTED)):
        rows | f"Write[{name}]" >> beam.io.WriteToParquet(
            FileSystems.join(output, name, "part"), schema, codec=_codecs(schema), file_name_suffix=".parquet"
        )
    settings = {
        "inputs": {inp.source: {"layout": inp.layout, "files": len(inp.files)} for inp in inputs},
        "thresholds": {name: dataclasses.asdict(cfg) for name, cfg in configs.items()},
        "keep_rejected_images": keep_rejected_images,
    }
    (curated, rejected) | "Report" >> WriteReport(output, settings)


def _clear_previous_run(output: str) -> None:
    patterns = [FileSystems.join(output, part, "*.parquet") for part in ("curated", "rejected")]
    patterns += [FileSystems.join(output, name) for name in ("report.json", "funnel.png")]
    old = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if old:
        log.info("removing %d files of an earlier run in %s", len(old), output)
        FileSystems.delete(old)


def parse_args(argv: list[str]):
    parser = ArgumentParser(prog="beam_runner.py stage1", description="Stage-1 curation of raw image-text pairs.")
    parser.add_argument("--input", action="append", required=True, metavar="SOURCE=PATH", help="a source's files: a folder, a file or a glob (repeatable)")
    parser.add_argument("--output", required=True, help="folder for curated/, rejected/ and report.json")
    parser.add_argument("--config", help="TOML thresholds per source, on top of filters/stage1_defaults.toml")
    parser.add_argument("--drop-rejected-images", action="store_true", help="leave image bytes out of rejected/ (smaller)")
    return parser.parse_known_args(argv)


def prepare(argv: list[str]):
    """Everything checked before the pipeline starts: inputs exist, config is valid, options parse."""
    args, beam_args = parse_args(argv)
    unknown = unknown_beam_args(beam_args)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]} (neither stage1's nor a Beam pipeline option)")
    inputs = [resolve_input(spec) for spec in args.input]
    sources = [inp.source for inp in inputs]
    if len(set(sources)) != len(sources):
        raise UsageError(f"--input names a source twice: {', '.join(sources)}")
    try:
        configs = load_config(sources, args.config)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    return args, inputs, configs, options


def run(argv: list[str]) -> dict:
    """Run stage 1 and return its report (also written to OUTPUT/report.json, drawn in OUTPUT/funnel.png
    and printed)."""
    args, inputs, configs, options = prepare(argv)
    _clear_previous_run(args.output)
    for inp in inputs:
        log.info("%s: %d %s files", inp.source, len(inp.files), inp.layout)
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, inputs, configs, args.output, not args.drop_rejected_images)
    report = report_lib.read_report(args.output)
    report_lib.write_chart(report, FileSystems.join(args.output, "funnel.png"))
    print(report_lib.format_report(report))
    return report
