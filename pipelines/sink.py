"""Where the Beam graphs write: Parquet shards, groups of rows written in a fixed order, and an output
folder cleared of an earlier run's files."""

import logging
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from formats.files import create_file

REJECTED = "rejected"  # the tag of a DoFn's rejects
ROW_GROUP = 256  # rows per Parquet row group in the files written by ParquetFile ...
ROW_GROUP_BYTES = 8 << 20  # ... or fewer, once their images reach this size (about 100 web images)
PARTIAL = "partial"  # ParquetFile writes FILE.partial-RANDOM, then renames it to FILE
log = logging.getLogger("sink")


def parquet_codecs(schema) -> dict[str, str]:
    """zstd for every column but the image bytes, which do not shrink."""
    return {column: "none" if column == "image" else "zstd" for column in schema.names}


def writer_options(schema) -> dict:
    """pq.ParquetWriter's options: parquet_codecs, and neither a dictionary nor min/max statistics for the
    image bytes (pyarrow tries a dictionary on every row group before it falls back, and compares every
    image for the statistics; neither helps a reader). Writing a file of 80 KB images took 125-130 us a
    row without them, 145-200 with them."""
    others = [column for column in schema.names if column != "image"]
    return {"compression": parquet_codecs(schema), "use_dictionary": others, "write_statistics": others}


def group_of(uid: str, count: int, per_group: int) -> tuple[int, int]:
    """(index, groups): which of round(count / per_group) groups (at least one) a row's uid falls in, by
    its last 8 hex digits. Uids are hashes, so the groups come out even (at 4096 a group, within a few
    percent), and the same rows always make the same groups."""
    groups = max(1, round(count / per_group))
    return int(uid[-8:], 16) % groups, groups


class GroupByUid(beam.PTransform):
    """Rows -> ((name, index, groups), rows sorted by uid): the rows of each name (e.g. a task) in about
    per_group rows a group (group_of). The counts per name, a few numbers, are the one side input. Costs
    one shuffle of each row; a worker holds one group at a time, whatever the run's size."""

    def __init__(self, name_of, per_group: int):
        super().__init__()
        self.name_of, self.per_group = name_of, per_group

    def expand(self, rows):
        name_of, per_group = self.name_of, self.per_group
        counts = rows | "Names" >> beam.Map(name_of) | "CountNames" >> beam.combiners.Count.PerElement() | "NameCounts" >> beam.combiners.ToDict()

        def keyed(row, counts):
            name = name_of(row)
            return (name, *group_of(row["uid"], counts[name], per_group)), row

        return (
            rows
            | "ToGroup" >> beam.Map(keyed, beam.pvalue.AsSingleton(counts))
            | "Group" >> beam.GroupByKey()
            | "Sort" >> beam.MapTuple(lambda key, group: (key, sorted(group, key=lambda row: row["uid"])))
        )


def group_file(folder: str, name: str, index: int, groups: int) -> str:
    """FOLDER/NAME-IIIII-of-NNNNN.parquet, as Beam names its shards."""
    return FileSystems.join(folder, f"{name}-{index:05d}-of-{groups:05d}.parquet")


class ParquetFile:
    """Rows -> one Parquet file at `path`, streamed a row group at a time into a file beside it and
    renamed into place by close(): a reader never sees half a file, and a retried bundle replaces the
    file whole. Rows come as dicts (write) or already in Arrow (write_table: no Python object per
    image). Holds one row group at a time: `row_group` rows, fewer once their images reach
    ROW_GROUP_BYTES (while it writes a row group of images, the rows, their Arrow copy and Parquet's
    page buffers each hold it: 256 web images made a worker's memory swing by ~0.1 GB per file)."""

    def __init__(self, path: str, schema, row_group: int = ROW_GROUP):
        self.path, self.schema, self.row_group = path, schema, row_group
        self.partial = f"{path}.{PARTIAL}-{uuid.uuid4().hex}"
        self.stream = create_file(self.partial)
        self.writer = pq.ParquetWriter(self.stream, schema, **writer_options(schema))
        self.buffer, self.tables, self.buffered, self.buffered_bytes, self.rows = [], [], 0, 0, 0

    def write(self, row: dict) -> None:
        self.buffer.append(row)
        self._count(1, len(row.get("image") or b""))

    def write_table(self, table: pa.Table) -> None:
        """Write rows of this file's schema that are already in Arrow, after the rows written before."""
        if self.buffer:
            self._flush()
        self.tables.append(table)
        self._count(table.num_rows, table.column("image").nbytes if "image" in table.column_names else 0)

    def _count(self, rows: int, image_bytes: int) -> None:
        self.rows, self.buffered, self.buffered_bytes = self.rows + rows, self.buffered + rows, self.buffered_bytes + image_bytes
        if self.buffered >= self.row_group or self.buffered_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        rows = [pa.Table.from_pylist(self.buffer, self.schema)] if self.buffer or not self.tables else []
        self.writer.write_table(pa.concat_tables(self.tables + rows))
        self.buffer, self.tables, self.buffered, self.buffered_bytes = [], [], 0, 0

    def close(self) -> str:
        """Write what is buffered (a file of no rows still gets its schema) and move the file into place."""
        if self.buffered or not self.rows:
            self._flush()
        self.writer.close()
        self.stream.close()
        FileSystems.rename([self.partial], [self.path])
        return self.path


def write_rows(path: str, rows: list[dict], schema) -> str:
    """Rows -> one Parquet file at `path` (ParquetFile). Returns the path."""
    out = ParquetFile(path, schema)
    for row in rows:
        out.write(row)
    return out.close()


def clear_outputs(output: str, patterns: list[str], what: str) -> None:
    """Delete the files under `output` that match any of `patterns` (FOLDER/*.parquet), saying how many."""
    old = sorted({m.path for result in FileSystems.match([FileSystems.join(output, p) for p in patterns]) for m in result.metadata_list})
    if old:
        log.info("removing %d %s in %s", len(old), what, output)
        FileSystems.delete(old)


def remove_folder(folder: str) -> None:
    """Delete a folder and what is left in it (object stores have no folders: there, nothing to do)."""
    if FileSystems.exists(folder):
        FileSystems.delete([folder])
