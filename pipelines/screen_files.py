"""Stage 1's first pass, one input file at a time: read it, apply the per-pair rules, write its candidates
to work files and its rejects to rejected/, and record that the file is done.

Everything one input file gives is a function of that file alone, written under names made from it
(work_files.input_key: its source and path): its work files `_work/candidates/KEY-NNNNN.parquet`, its
rejects `rejected/rules-KEY.parquet`, and last its done record `_work/done/KEY.parquet`: the file's slim
dedup records (Member, about 100 bytes a candidate, its `where` the name of its work file), with its
work files and its reject counts in the Parquet metadata. The record is renamed into place after
everything else, so it exists only when the file's outputs are complete. With `resume`, a file whose
record exists is not read again: its members, work files and counts come from the record, so a resumed
run goes on with exactly what the killed run had made of it, and nothing is counted twice.

Cost per input pair: the decode and rules (filters/curate.py); a candidate's image written once; its
Member kept in memory until its input file is done (about 100 bytes: 1 MB for a 10,000-pair shard).
"""

import json

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from tqdm import tqdm

from filters.config import SourceConfig
from filters.curate import curate
from filters.langid import LanguageId
from formats import schemas
from formats.files import drop_cached, parquet_file
from formats.sources.img2dataset import IMG2DATASET_PARQUET, WEBDATASET, read_img2dataset_parquet, read_webdataset
from formats.sources.manifest import read_manifest
from pipelines.find_duplicates import Member, member
from pipelines.heap import map_large_blocks
from pipelines.inputs import MANIFEST, Input, list_input
from pipelines.sink import ParquetFile
from pipelines.spread import Spread
from pipelines.work_files import WorkFileWriter, input_key

READERS = {WEBDATASET: read_webdataset, IMG2DATASET_PARQUET: read_img2dataset_parquet, MANIFEST: read_manifest}
FILES = "files"  # output tag: the work files written
COUNTS = "counts"  # output tag: ((source, reason), count) of the rejects
WORK = "_work"  # OUTPUT/_work: the candidates between the passes and the done records, removed at the end of a run
CANDIDATES, DONE = "candidates", "done"  # folders under the work folder
MEMBERS = pa.schema([(name, {"phash": pa.int64(), "caption_chars": pa.int64(), "digest": pa.binary()}.get(name, pa.string())) for name in Member._fields])
METADATA = b"stage1_done"  # the done record's Parquet metadata key: its work files and reject counts


def candidates_folder(work: str) -> str:
    return FileSystems.join(work, CANDIDATES)


def done_record(work: str, key: str) -> str:
    return FileSystems.join(work, DONE, f"{key}.parquet")


def rules_rejects(output: str, key: str) -> str:
    return FileSystems.join(output, "rejected", f"rules-{key}.parquet")


def write_done(path: str, members: list[Member], files: list[str], rejects: dict[str, int]) -> None:
    """The done record of one input file (written beside and renamed into place, like every file here)."""
    metadata = {METADATA: json.dumps({"work_files": files, "rejects": rejects}).encode()}
    out = ParquetFile(path, MEMBERS.with_metadata(metadata))
    for m in members:
        out.write(m._asdict())
    out.close()


def read_done(path: str) -> tuple[list[Member], list[str], dict[str, int]]:
    """(members, work files, reject counts) of a done record."""
    with FileSystems.open(path) as f:
        table = parquet_file(f).read()
    recorded = json.loads(table.schema.metadata[METADATA])
    return [Member(**row) for row in table.to_pylist()], recorded["work_files"], recorded["rejects"]


class ScreenFile(beam.DoFn):
    """An input file's path -> its candidates' Members (main output), its work files (tagged FILES) and
    its reject counts (tagged COUNTS), its rows written as the module says; a progress bar of the
    source's files done in this process (on a terminal only). The fastText model loads once per worker;
    image-sized blocks are mapped apart (pipelines/heap.py); an input file read through leaves the page
    cache (formats/files.py: drop_cached)."""

    def __init__(self, inp: Input, config: SourceConfig, langid_model: str | None, keep_rejected_images: bool, output: str, work: str,
                 resume: bool):
        self.source, self.layout, self.total_files = inp.source, inp.layout, len(inp.files)
        self.config, self.langid_model, self.keep_rejected_images = config, langid_model, keep_rejected_images
        self.output, self.work, self.resume = output, work, resume
        self.read, self.resumed = Metrics.counter("stage1", "files_read"), Metrics.counter("stage1", "files_resumed")

    def setup(self):
        map_large_blocks()
        self.langid = LanguageId(self.langid_model)
        self.bar = tqdm(total=self.total_files, desc=f"stage1 {self.source}", unit="file", disable=None, leave=False)

    def process(self, path: str):
        key = input_key(self.source, path)
        done = done_record(self.work, key)
        if self.resume and FileSystems.exists(done):
            members, files, rejects = read_done(done)
            yield from members
            self.resumed.inc()
        else:
            members, files, rejects = yield from self._screen(path, key)
            write_done(done, members, files, rejects)
            self.read.inc()
        for path in files:
            yield beam.pvalue.TaggedOutput(FILES, path)
        for reason, n in rejects.items():
            yield beam.pvalue.TaggedOutput(COUNTS, ((self.source, reason), n))
        self.bar.update()

    def _screen(self, path: str, key: str):
        """Read and screen one input file, yielding its Members; returns (members, work files, reject counts)."""
        work = WorkFileWriter(candidates_folder(self.work), key)
        rejected, members, rejects = None, [], {}
        for pair in READERS[self.layout](self.source, path):
            kept, row = curate(pair, self.config, self.langid, self.keep_rejected_images)
            if kept:
                members.append(member(row, work.write(row)))
                yield members[-1]
                continue
            rejected = rejected or ParquetFile(rules_rejects(self.output, key), schemas.REJECTED)
            rejected.write(row)
            rejects[row["reason"]] = rejects.get(row["reason"], 0) + 1
            Metrics.counter("stage1", row["reason"]).inc()
        if rejected:
            rejected.close()
        drop_cached(path)  # read once: its pages go to the work files written next
        return members, work.close(), rejects

    def teardown(self):
        self.bar.close()


class ScreenSource(beam.PTransform):
    """All files of one --input, listed in the pipeline (not pickled into the graph), spread over the
    workers, each screened whole by one of them (ScreenFile). Returns its outputs: members, FILES, COUNTS."""

    def __init__(self, inp: Input, screen: ScreenFile):
        super().__init__()
        self.inp, self.screen = inp, screen

    def expand(self, pbegin):
        layout = self.inp.layout
        return (
            pbegin
            | "Path" >> beam.Create([self.inp.path])
            | "Files" >> beam.FlatMap(lambda path: list_input(path, layout))
            | "Spread" >> Spread()
            | "Screen" >> beam.ParDo(self.screen).with_outputs(FILES, COUNTS, main="members")
        )
