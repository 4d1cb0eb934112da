"""formats/files.py: reading Parquet files of images without holding them whole; creating files as Arrow streams."""

import os
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq

from formats.files import create_file, open_file, parquet_file

GROUP_BYTES = 2 << 20  # per row group: 20 rows of 100 KB
GROUPS = 10


def test_parquet_file_holds_one_row_group_at_a_time(tmp_path):
    path = str(tmp_path / "images.parquet")
    schema = pa.schema([("image", pa.binary())])
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for _ in range(GROUPS):
            writer.write_table(pa.table({"image": [os.urandom(GROUP_BYTES // 20) for _ in range(20)]}, schema))
    tracemalloc.start()
    try:
        with open_file(path, compression=None) as f:
            rows = sum(batch.num_rows for batch in parquet_file(f).iter_batches(batch_size=20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == 20 * GROUPS
    assert peak < 3 * GROUP_BYTES  # pyarrow's default (pre_buffer) kept all ten row groups: over 20 MB


def test_create_file_makes_its_folder_and_is_an_arrow_stream(tmp_path):
    path = tmp_path / "new" / "folder" / "rows.parquet.partial-1"
    with create_file(str(path)) as out:
        assert isinstance(out, pa.NativeFile)  # Arrow writes into it without a Python file object
        out.write(b"written as it is")  # no compression guessed from the name
    assert path.read_bytes() == b"written as it is"
