"""Does Beam 2.77's multi_processing mode lose elements when large streams are flattened?

    python bench/flatten_loss.py [--rows 20000 50000] [--payload-kb 20] [--workers 2]

An earlier stage-1 graph flattened the rejects of its first step with those of a later one and, under
`--direct_running_mode=multi_processing`, wrote fewer rejects than it counted (seen once at 20,000
pairs). This script rebuilds that shape without the rest of stage 1: rows with a payload of image-like
bytes go through a DoFn with two outputs; one output goes through a second DoFn with two outputs; the
rejects of both are flattened and written to Parquet, as is everything else, and every row must come
out exactly once. It runs the same graph on the in-process runner and on multi_processing, and prints
the rows written by each, so a loss shows as a difference, with the row count and payload it took.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

SCHEMA = pa.schema([("uid", pa.string()), ("stage", pa.string()), ("payload", pa.binary())])


def first_step(i: int, payload_kb: int):
    row = {"uid": f"{i:09d}", "stage": "first", "payload": os.urandom(payload_kb << 10)}
    if i % 3 == 0:
        yield beam.pvalue.TaggedOutput("rejected", row)
    else:
        yield row


def second_step(row: dict):
    if int(row["uid"]) % 3 == 1:
        yield beam.pvalue.TaggedOutput("rejected", {**row, "stage": "second"})
    else:
        yield row


def run(rows: int, payload_kb: int, out: Path, options: list[str]) -> dict[str, int]:
    with beam.Pipeline(options=PipelineOptions(["--runner", "FnApiRunner", *options])) as p:
        first = (
            p
            | beam.Create(range(rows))
            | "Spread" >> beam.Reshuffle()
            | "First" >> beam.FlatMap(first_step, payload_kb).with_outputs("rejected", main="kept")
        )
        second = first.kept | "Second" >> beam.FlatMap(second_step).with_outputs("rejected", main="kept")
        rejected = (first.rejected, second.rejected) | "AllRejects" >> beam.Flatten()
        rejected | "WriteRejects" >> beam.io.WriteToParquet(str(out / "rejected" / "part"), SCHEMA, file_name_suffix=".parquet")
        second.kept | "WriteKept" >> beam.io.WriteToParquet(str(out / "kept" / "part"), SCHEMA, file_name_suffix=".parquet")
    return {folder: pq.read_table(out / folder, columns=["uid"]).num_rows for folder in ("kept", "rejected")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 50_000])
    parser.add_argument("--payload-kb", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, apache-beam {beam.__version__}")
    for rows in args.rows:
        expected = {"kept": rows - (rows + 2) // 3 - (rows + 1) // 3, "rejected": (rows + 2) // 3 + (rows + 1) // 3}
        for name, options in (("in-process", []), (f"multi_processing x{args.workers}", ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"])):
            out = Path(tempfile.mkdtemp(prefix="flatten-loss-"))
            started = time.perf_counter()
            found = run(rows, args.payload_kb, out, options)
            shutil.rmtree(out)
            verdict = "all rows" if found == expected else f"LOST {sum(expected.values()) - sum(found.values())} rows"
            print(f"  {rows:,} rows of {args.payload_kb} KB, {name}: kept {found['kept']:,} of {expected['kept']:,}, "
                  f"rejected {found['rejected']:,} of {expected['rejected']:,}: {verdict} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
