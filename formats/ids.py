"""Stable row ids of both stages: a rerun on the same input gives the same ids.

Each id is a BLAKE2b digest (hashlib, 8 bytes, written as 16 hex digits) of what names the row.
"""

import hashlib


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def pair_uid(source: str, key: str) -> str:
    """A stage-1 pair: its source's name on the command line and its key in that input."""
    return _digest(f"{source}\x00{key}")


def sample_uid(task: str, source: str, key: str) -> str:
    """A stage-2 sample: distinct per task, since one region feeds referring and grounded captioning."""
    return pair_uid(f"{task}/{source}", key)


def sequence_uid(sample_uids: list[str], starts: list[int]) -> str:
    """A packed sequence: the samples it holds and where in each its piece starts."""
    return _digest("\0".join(f"{uid}@{start}" for uid, start in zip(sample_uids, starts)))
