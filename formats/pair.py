"""A raw image-text pair as the stage-1 readers hand it to the rules, and the Reject a reader or a rule
attaches to it (None from a rule keeps the pair)."""

from dataclasses import dataclass
from typing import NamedTuple


class Reject(NamedTuple):
    reason: str  # one of formats.reasons
    detail: str  # what exactly failed, for a person reading rejected/
    duplicate_of: str | None = None  # a duplicate's keeper: the uid of the pair kept in its place


@dataclass
class RawPair:
    source: str  # the input's name on the command line (laion-en=...), which picks its thresholds
    key: str  # the pair's key in its input (img2dataset's key, or the manifest's key or row)
    url: str | None  # where the image came from, when the input says
    caption: bytes | None  # the caption's bytes as stored, not yet decoded
    image: bytes | None  # the encoded image as stored
    reject: Reject | None = None  # set by a reader that already knows the pair is unusable
