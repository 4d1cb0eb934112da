"""Stage 1's candidates between its passes: Parquet work files, joined back to their decisions by file.

The rows that carry images are written once, by the worker that screened them, and never shuffled.
Everything decided about them across the run (duplicates, CLIP scores) is keyed by the work file that
holds the row, so each file is read back together with just its own decisions: a partitioned join,
whose memory on a worker is one file's decisions (at most ROWS_PER_FILE of them), whatever the run's size.

Shuffle per candidate: its slim record for dedup (pipelines/find_duplicates.py), and back per file, a
duplicate's (uid, detail) or a score's (uid, float), about 100 bytes; the image bytes go through the
work folder (written once, read twice: by the CLIP pass and the decision), never through a shuffle.

A file is named after its first row's uid, so a retried bundle rewrites the same file instead of leaving
a second copy, and the files a run reads are exactly those named by the bundles that committed.
"""

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from formats import schemas
from formats.files import parquet_file
from pipelines.find_duplicates import member
from pipelines.sink import parquet_codecs

ROWS_PER_FILE = 2000  # rows, and so decisions, per file: ~160 MB of web images
ROW_GROUP = 100  # rows buffered before they are written (~8 MB of images)
FILES = "files"  # the output tag of the files written


class WriteWorkFiles(beam.DoFn):
    """Candidate rows -> work files under `folder`; outputs each row's slim dedup record (Member, its
    `where` the file) and, tagged FILES, each file's path once it is complete."""

    def __init__(self, folder: str):
        self.folder = folder

    def start_bundle(self):
        self._reset()

    def _reset(self):
        """No file open: the next row starts one."""
        self.path, self.writer, self.stream, self.rows, self.buffer = None, None, None, 0, []

    def process(self, row: dict):
        if self.writer is None:
            self.path = FileSystems.join(self.folder, f"candidate-{row['uid']}.parquet")
            self.stream = FileSystems.create(self.path)
            self.writer = pq.ParquetWriter(self.stream, schemas.CURATED, compression=parquet_codecs(schemas.CURATED))
        self.buffer.append(row)
        self.rows += 1
        yield member(row, self.path)
        if len(self.buffer) >= ROW_GROUP:
            self._flush()
        if self.rows >= ROWS_PER_FILE:
            yield beam.pvalue.TaggedOutput(FILES, self._close())

    def finish_bundle(self):
        if self.writer is not None:
            yield beam.pvalue.TaggedOutput(FILES, WindowedValue(self._close(), MIN_TIMESTAMP, [GlobalWindow()]))

    def _flush(self):
        self.writer.write_table(pa.Table.from_pylist(self.buffer, schemas.CURATED))
        self.buffer = []

    def _close(self) -> str:
        if self.buffer:
            self._flush()
        self.writer.close()
        self.stream.close()
        path = self.path
        self._reset()
        return path


def read_work_file(path: str):
    """The rows of one work file, a row group at a time."""
    with FileSystems.open(path) as f:
        for batch in parquet_file(f).iter_batches(batch_size=ROW_GROUP):
            yield from batch.to_pylist()


class JoinByFile(beam.PTransform):
    """Files and per-file decisions -> (path, {name: [(uid, value), ...]}) per file, one entry per kind
    of decision (e.g. "duplicate", "score"), each a list of at most ROWS_PER_FILE."""

    def __init__(self, decisions: dict):
        super().__init__()
        self.decisions = decisions

    def expand(self, files):
        keyed = {"file": files | "KeyFiles" >> beam.Map(lambda path: (path, None)), **self.decisions}
        return keyed | "ByFile" >> beam.CoGroupByKey() | "Decisions" >> beam.MapTuple(lambda path, found: (path, {n: found[n] for n in self.decisions}))
