"""Beam 2.77's local runner with several workers loses rows through a race in its data plane
(pipelines/runner.py says how); our commands turn the racing flush off. The first test pins the race in
Beam's own class, the second runs a flattened stream on multi_processing with the flush made hostile
(every millisecond), where Beam's default data plane loses rows on every run."""

import os
import threading
from pathlib import Path

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker.data_plane import ClosableOutputStream, TimeBasedBufferingClosableOutputStream

from pipelines.runner import pipeline_options


def test_beams_timed_flush_drops_what_is_written_while_it_hands_a_buffer_over():
    sent, calls = [], []
    handing_over, release, cleared = threading.Event(), threading.Event(), threading.Event()

    def on_flush(data: bytes):
        calls.append(len(data))
        sent.append(data)
        if len(calls) == 1:
            handing_over.set()
            release.wait(5)  # the send queue is full: the flush waits here, the writer goes on
        else:
            cleared.set()  # a later flush runs only after the first one has cleared the buffer

    stream = TimeBasedBufferingClosableOutputStream(sent.append, flush_callback=on_flush, time_flush_threshold_ms=5)
    stream.write(b"a" * 100)
    assert handing_over.wait(5)
    stream.write(b"b" * 100)
    release.set()
    assert cleared.wait(5)
    stream.close()
    assert b"".join(sent) == b"a" * 100, "Beam no longer drops these writes: send_bundle_inputs_whole may go"

    whole = []
    stream = ClosableOutputStream.create(whole.append, whole.append, 0)  # what a limit of 0 gives
    stream.write(b"a" * 100)
    stream.write(b"b" * 100)
    stream.close()
    assert whole == [b"a" * 100 + b"b" * 100]


def rows(i: int):
    """A third of the rows rejected here, a third by the next step, each with 20 KB of payload."""
    row = (i, os.urandom(20 << 10))
    yield beam.pvalue.TaggedOutput("rejected", row) if i % 3 == 0 else row


def second_step(row):
    yield beam.pvalue.TaggedOutput("rejected", row) if row[0] % 3 == 1 else row


def test_a_flattened_stream_keeps_every_row_on_several_local_workers(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1)  # Beam's flush, every millisecond
    options = pipeline_options(["--direct_running_mode=multi_processing", "--direct_num_workers=2"], "test")
    with beam.Pipeline(options=options) as p:
        first = p | beam.Create(range(10_000)) | beam.Reshuffle() | "First" >> beam.FlatMap(rows).with_outputs("rejected", main="kept")
        second = first.kept | "Second" >> beam.FlatMap(second_step).with_outputs("rejected", main="kept")
        for name, stream in (("rejected", (first.rejected, second.rejected) | beam.Flatten()), ("kept", second.kept)):
            (stream | f"Count{name}" >> beam.combiners.Count.Globally()
             | f"Write{name}" >> beam.io.WriteToText(str(tmp_path / name), shard_name_template=""))
    assert {name: (tmp_path / name).read_text() for name in ("rejected", "kept")} == {"rejected": "6667\n", "kept": "3333\n"}
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0
