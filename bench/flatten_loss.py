"""Rows lost by Beam 2.77's local runner with several workers, and the setting that stops it.

    python bench/flatten_loss.py [--rows 20000 50000] [--payload-kb 20] [--workers 2] [--flush-ms 1000]

Rows with a payload of image-like bytes go through a DoFn with two outputs; one output goes through a
second DoFn with two outputs; the rejects of both are flattened and written to Parquet, as is everything
else, and every row must come out exactly once. The same graph runs on the in-process runner, on
multi_processing with Beam's data plane as it ships (the runner flushes what it sends to a worker every
`--flush-ms`, 1000 by default, racing its own writes: pipelines/runner.py), and on multi_processing with
our commands' setting (`send_bundle_inputs_whole`: no timed flush). A loss shows as a difference, with
the row count and payload it took. A flattened stream is the victim because its buffer holds one chunk
per producing bundle, so sending it to a worker is many writes, any of which a flush can swallow.
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
from apache_beam.runners.portability.fn_api_runner import worker_handlers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.runner import send_bundle_inputs_whole  # noqa: E402

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
    parser.add_argument("--flush-ms", type=int, default=worker_handlers.DATA_BUFFER_TIME_LIMIT_MS,
                        help="the runner's timed flush in Beam's data plane as shipped (Beam's default: 1000)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, apache-beam {beam.__version__}")
    workers = ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]
    configurations = (("in-process", [], None), (f"multi_processing x{args.workers}, flush every {args.flush_ms} ms", workers, args.flush_ms),
                      (f"multi_processing x{args.workers}, send_bundle_inputs_whole", workers, 0))
    for rows in args.rows:
        expected = {"kept": rows - (rows + 2) // 3 - (rows + 1) // 3, "rejected": (rows + 2) // 3 + (rows + 1) // 3}
        for name, options, flush_ms in configurations:
            worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = args.flush_ms
            if flush_ms == 0:
                send_bundle_inputs_whole()
            out = Path(tempfile.mkdtemp(prefix="flatten-loss-"))
            started = time.perf_counter()
            found = run(rows, args.payload_kb, out, options)
            shutil.rmtree(out)
            verdict = "all rows" if found == expected else f"LOST {sum(expected.values()) - sum(found.values())} rows"
            print(f"  {rows:,} rows of {args.payload_kb} KB, {name}: kept {found['kept']:,} of {expected['kept']:,}, "
                  f"rejected {found['rejected']:,} of {expected['rejected']:,}: {verdict} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
