"""Stable row ids of both stages: a rerun on the same input gives the same ids.

Each id is a BLAKE2b digest (hashlib) of what names the row, 16 bytes written as 32 hex digits: uid
version 2. Version 1 (before 2026-12) took 8 bytes; at 5 billion rows 64 bits expect about 0.7 pairs
of colliding ids (n^2 / 2^65), 128 bits about 4e-20. Ids of the two versions never compare equal
(their lengths differ), so outputs of a version-1 run must be rebuilt, not joined with new ones.
"""

import hashlib

UID_VERSION = 2
UID_BYTES = 16


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=UID_BYTES).hexdigest()


def pair_uid(source: str, key: str) -> str:
    """A stage-1 pair: its source's name on the command line and its key in that input."""
    return _digest(f"{source}\x00{key}")


def sample_uid(task: str, source: str, key: str) -> str:
    """A stage-2 sample: distinct per task, since one region feeds referring and grounded captioning."""
    return pair_uid(f"{task}/{source}", key)


def sequence_uid(sample_uids: list[str], starts: list[int]) -> str:
    """A packed sequence: the samples it holds and where in each its piece starts."""
    return _digest("\0".join(f"{uid}@{start}" for uid, start in zip(sample_uids, starts)))
