"""Bad usage: a one-line error and exit status 2, raised before any work starts."""

import argparse


class UsageError(ValueError):
    """A command line that cannot run."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but its errors raise UsageError (printed as one line) instead of printing the usage."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")
