"""pipelines/sink.py: a Parquet file written by ParquetFile stores the image bytes plainly (no codec, no
dictionary, no min/max statistics) and every other column with zstd, a dictionary and statistics; its
row groups stop at ROW_GROUP rows or ROW_GROUP_BYTES of images."""

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.sink import ROW_GROUP, ROW_GROUP_BYTES, ParquetFile, write_rows

SCHEMA = pa.schema([("uid", pa.string()), ("image", pa.binary())])


def test_image_bytes_are_stored_plainly_and_the_other_columns_with_zstd_dictionary_and_statistics(tmp_path):
    rows = [{"uid": f"u{i}", "image": bytes([i]) * 1000} for i in range(3)]
    path = write_rows(str(tmp_path / "rows.parquet"), rows, SCHEMA)
    chunks = pq.ParquetFile(path).metadata.row_group(0)
    uid, image = chunks.column(0), chunks.column(1)
    assert (uid.compression, image.compression) == ("ZSTD", "UNCOMPRESSED")
    assert (uid.has_dictionary_page, image.has_dictionary_page) == (True, False)
    assert (uid.statistics.min, uid.statistics.max) == ("u0", "u2")
    assert image.statistics is None
    assert pq.read_table(path).to_pylist() == rows


def test_row_groups_stop_at_their_row_count_or_their_image_bytes(tmp_path):
    small = [{"uid": f"s{i}", "image": b"x"} for i in range(ROW_GROUP + 1)]
    large = [{"uid": f"l{i}", "image": b"x" * (ROW_GROUP_BYTES // 3 + 1)} for i in range(7)]  # three reach the bound
    sizes = {}
    for name, rows in (("small", small), ("large", large)):
        metadata = pq.ParquetFile(write_rows(str(tmp_path / f"{name}.parquet"), rows, SCHEMA)).metadata
        sizes[name] = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert sizes == {"small": [ROW_GROUP, 1], "large": [3, 3, 1]}


def test_rows_and_arrow_tables_are_written_in_their_order(tmp_path):
    def rows(start, n):
        return [{"uid": f"u{i}", "image": b"x"} for i in range(start, start + n)]

    out = ParquetFile(str(tmp_path / "mixed.parquet"), SCHEMA, row_group=4)
    for row in rows(0, 2):
        out.write(row)
    out.write_table(pa.Table.from_pylist(rows(2, 3), SCHEMA))  # the two rows first, then these: a group of 2, then 3 + 1
    out.write(rows(5, 1)[0])
    out.write_table(pa.Table.from_pylist(rows(6, 1), SCHEMA))
    metadata = pq.ParquetFile(out.close()).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [2, 4, 1]
    assert pq.read_table(out.path).to_pylist() == rows(0, 7)
