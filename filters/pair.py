"""A raw image-text pair as the readers hand it to the rules, and its stable id."""

import hashlib
from dataclasses import dataclass

from filters.rule import Reject


def pair_uid(source: str, key: str) -> str:
    """A stable id from the source's name and the pair's original key: a rerun gives the same uid."""
    return hashlib.blake2b(f"{source}\x00{key}".encode(), digest_size=8).hexdigest()


@dataclass
class RawPair:
    source: str  # the input's name on the command line (laion-en=...), which picks its thresholds
    key: str  # the pair's key in its input (img2dataset's key, or the manifest's key or row)
    url: str | None  # where the image came from, when the input says
    caption: bytes | None  # the caption's bytes as stored, not yet decoded
    image: bytes | None  # the encoded image as stored
    reject: Reject | None = None  # set by a reader that already knows the pair is unusable
