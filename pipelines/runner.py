"""Beam pipeline options for our commands: the runner by default, and a typo caught before the run."""

import logging

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from cli.usage import UsageError

DEFAULT_RUNNER = "FnApiRunner"  # Beam's in-process runner: no Prism download, no service, no network


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
    return options
