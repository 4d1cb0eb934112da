"""pipelines/work_files.py: each work file meets exactly its own decisions, keyed by the file's name."""

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from pipelines.work_files import JoinByFile, file_name


def test_file_name_drops_the_folder():
    assert file_name("/out/_work/candidates/0123456789abcdef-00001.parquet") == "0123456789abcdef-00001.parquet"
    assert file_name("0123456789abcdef-00001.parquet") == "0123456789abcdef-00001.parquet"


def test_each_file_gets_its_own_decisions_and_keeps_its_path():
    files = ["/out/_work/candidates/a-00000.parquet", "/out/_work/candidates/a-00001.parquet", "/out/_work/candidates/b-00000.parquet"]
    duplicates = [("a-00000.parquet", ("u1", ("k1", 3))), ("b-00000.parquet", ("u7", ("k2", None))), ("a-00000.parquet", ("u2", ("k1", 0)))]
    scores = [("a-00001.parquet", ("u4", {"clip_score": 0.5}))]

    def sorted_decisions(joined):
        path, found = joined
        return path, {kind: sorted(values) for kind, values in found.items()}

    with beam.Pipeline("FnApiRunner") as p:
        joined = p | "Files" >> beam.Create(files) | JoinByFile({"duplicate": p | "D" >> beam.Create(duplicates), "score": p | "S" >> beam.Create(scores)})
        assert_that(joined | beam.Map(sorted_decisions), equal_to([
            ("/out/_work/candidates/a-00000.parquet", {"duplicate": [("u1", ("k1", 3)), ("u2", ("k1", 0))], "score": []}),
            ("/out/_work/candidates/a-00001.parquet", {"duplicate": [], "score": [("u4", {"clip_score": 0.5})]}),
            ("/out/_work/candidates/b-00000.parquet", {"duplicate": [("u7", ("k2", None))], "score": []}),
        ]))
