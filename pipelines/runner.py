"""Beam pipeline options for our commands: the runner by default, and a typo caught before the run."""

import logging

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from cli.usage import UsageError

DEFAULT_RUNNER = "FnApiRunner"  # Beam's in-process runner: no Prism download, no service, no network
LOCAL_WORKERS_WARNING = (
    "Beam 2.77's local runner with several workers (multi_processing, or PortableRunner with --job_endpoint embed) "
    "drops elements of flattened streams at large sizes (bench/flatten_loss.py: 40,000 rows of 80 KB lost 1,302); "
    "use it for small runs, and the in-process default or a cluster runner for real ones")
log = logging.getLogger("runner")


def local_workers(options: PipelineOptions) -> bool:
    """Whether the options run Beam's local runner on several worker processes."""
    found = options.get_all_options()
    return found.get("direct_running_mode") == "multi_processing" or (found.get("runner") == "PortableRunner" and found.get("job_endpoint") == "embed")


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


def pipeline_options(beam_args: list[str], command: str) -> PipelineOptions:
    """The Beam options left over by `command`'s parser; the in-process runner unless --runner names one."""
    unknown = unknown_beam_args(beam_args)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]} (neither {command}'s nor a Beam pipeline option)")
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    if local_workers(options):
        log.warning(LOCAL_WORKERS_WARNING)
    return options
