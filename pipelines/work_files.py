"""Stage 1's candidates between its passes: Parquet work files, joined back to their decisions by file.

The rows that carry images are written once, by the worker that screened them, and never shuffled.
Everything decided about them across the run (duplicates, CLIP scores) is keyed by the work file that
holds the row, so each file is read back together with just its own decisions: a partitioned join,
whose memory on a worker is one file's decisions (at most ROWS_PER_FILE of them), whatever the run's size.

Shuffle per candidate: its slim record for dedup (pipelines/find_duplicates.py), and back per file, a
duplicate's (uid, (keeper, distance)) or a score's (uid, scores), keyed by the file's name: 108 and
about 93 bytes as Beam encodes them (203 for a duplicate when it carried its detail string and the
file's path). The image bytes go through the work folder (written once, read twice: by the CLIP pass
and the decision), never through a shuffle.

Each input file's candidates go to work files of their own, named after the input (WorkFileWriter), so
a retried or resumed input rewrites the same files, and everything decided about a work file, written to
curated/ and rejected/ under its name, is the same on every run.
"""

import hashlib

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from formats import schemas
from formats.files import parquet_file
from pipelines.sink import ParquetFile

ROWS_PER_FILE = 2000  # rows, and so decisions, per file: ~160 MB of web images
ROW_GROUP = 100  # rows buffered before they are written (~8 MB of images)


def input_key(source: str, path: str) -> str:
    """The name every file made from one input file starts with: a digest of its source and path."""
    return hashlib.blake2b(f"{source}\0{path}".encode(), digest_size=8).hexdigest()


class WorkFileWriter:
    """One input file's candidates -> work files FOLDER/KEY-00000.parquet, KEY-00001.parquet, ... of
    ROWS_PER_FILE rows each, in the order the input holds them: the same input always gives the same
    files, so a retried or resumed input rewrites them instead of leaving other copies."""

    def __init__(self, folder: str, key: str):
        self.folder, self.key = folder, key
        self.files, self.out, self.name = [], None, ""

    def write(self, row: dict) -> str:
        """Write a row; returns the name of the work file that holds it (in the folder)."""
        if self.out is None:
            self.name = f"{self.key}-{len(self.files):05d}.parquet"
            self.out = ParquetFile(FileSystems.join(self.folder, self.name), schemas.CURATED, ROW_GROUP)
        self.out.write(row)
        name = self.name
        if self.out.rows >= ROWS_PER_FILE:
            self.close()
        return name

    def close(self) -> list[str]:
        """Finish the open file; returns every file written."""
        if self.out is not None:
            self.files.append(self.out.close())
            self.out = None
        return self.files


def read_work_tables(path: str):
    """One work file as Arrow tables of up to ROW_GROUP rows, a row group at a time."""
    with FileSystems.open(path) as f:
        for batch in parquet_file(f).iter_batches(batch_size=ROW_GROUP):
            yield pa.Table.from_batches([batch])


def read_work_file(path: str):
    """The rows of one work file, a row group at a time."""
    for table in read_work_tables(path):
        yield from table.to_pylist()


def file_name(path: str) -> str:
    """A work file's name, without its folder: what the decisions about its rows are keyed by (every work
    file of a run is in one folder, so the name says which; the path would add ~30-100 bytes a record)."""
    return FileSystems.split(path)[1]


class JoinByFile(beam.PTransform):
    """Work files (paths) and decisions keyed by file_name -> (path, {kind: [(uid, value), ...]}) per file,
    one entry per kind of decision (e.g. "duplicate", "score"), each a list of at most ROWS_PER_FILE."""

    def __init__(self, decisions: dict):
        super().__init__()
        self.decisions = decisions

    def expand(self, files):
        kinds = list(self.decisions)

        def with_path(name, found):
            (path,) = found["file"]  # exactly one work file of each name
            return path, {kind: found[kind] for kind in kinds}

        keyed = {"file": files | "KeyFiles" >> beam.Map(lambda path: (file_name(path), path)), **self.decisions}
        return keyed | "ByFile" >> beam.CoGroupByKey() | "Decisions" >> beam.MapTuple(with_path)
