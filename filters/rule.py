"""What a stage-1 rule answers: None to keep the pair, or a Reject naming the failure."""

from typing import NamedTuple


class Reject(NamedTuple):
    reason: str  # one of filters.reasons
    detail: str  # what exactly failed, for a person reading rejected/
