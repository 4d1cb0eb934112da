"""Beam pipeline options for our commands: the runner by default, a typo caught before the run, and
Beam's local data plane made safe for several workers.

Beam 2.77's local runner (the FnApiRunner behind `--direct_running_mode=multi_processing` and behind
PortableRunner's `--job_endpoint embed`) sends each bundle's input to an SDK worker process through a
`TimeBasedBufferingClosableOutputStream`, with a thread that flushes it every second
(`worker_handlers.DATA_BUFFER_TIME_LIMIT_MS`). That flush is not atomic with the writes: it copies the
buffer, hands the copy to the send queue (which blocks while the queue is full) and then clears the
buffer, so whatever the runner wrote during the hand-off is dropped without a word. A bundle whose input
is many chunks (a flattened stream: one chunk per producing bundle) and takes over a second to send loses
rows; `bench/flatten_loss.py` measures it (40,000 rows of 80 KB: 1,195 to 9,867 of 26,667 flattened rows
lost per run) and `tests/test_local_runner.py` shows the race itself. A limit of 0 makes the runner use
the size-based stream, which only flushes where it is told to: the input is sent whole, nothing is lost.
The setting lives in the launcher's process, which is where the FnApiRunner and the embedded job service
run; cluster runners (Dataflow, Flink, Spark job servers) have their own data plane and never read it.
"""

import logging

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers

from cli.usage import UsageError

DEFAULT_RUNNER = "FnApiRunner"  # Beam's in-process runner: no service, no network, no Prism download
log = logging.getLogger("runner")


def unknown_beam_args(beam_args: list[str]) -> list[str]:
    """The arguments that neither our parser nor any Beam option class knows (Beam would only warn)."""
    parsers = []
    beam_log = logging.getLogger("apache_beam.options.pipeline_options")
    level = beam_log.level
    beam_log.setLevel(logging.ERROR)
    try:
        PipelineOptions(beam_args).get_all_options(add_extra_args_fn=parsers.append)
    finally:
        beam_log.setLevel(level)
    return parsers[0].parse_known_args(beam_args)[1]


def send_bundle_inputs_whole() -> None:
    """Turn off the local runner's timed flush of data sent to SDK workers (see the module docstring)."""
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0


def pipeline_options(beam_args: list[str], command: str) -> PipelineOptions:
    """The Beam options left over by `command`'s parser; the in-process runner unless --runner names one."""
    unknown = unknown_beam_args(beam_args)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]} (neither {command}'s nor a Beam pipeline option)")
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    send_bundle_inputs_whole()
    return options


def counter_totals(result, namespace: str) -> dict[str, int]:
    """The counters of a finished pipeline in `namespace`, summed over steps: {name: total}. A runner
    that reports no committed value (some portable ones) gives its attempted one."""
    totals: dict[str, int] = {}
    for found in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = found.committed if found.committed is not None else found.attempted
        totals[found.key.metric.name] = totals.get(found.key.metric.name, 0) + (value or 0)
    return totals
