"""Bad usage: a one-line error and exit status 2, raised before any work starts."""

import argparse
import logging

from apache_beam.options.pipeline_options import PipelineOptions


class UsageError(ValueError):
    """A command line that cannot run."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but its errors raise UsageError (printed as one line) instead of printing the usage."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


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
