"""Dedup across the whole run, in Beam: exact and near-duplicate images, one pair kept per image.

Every decision is made on slim records (uid, pHash, cleaned caption, digest of the image bytes), never
on rows that carry images, so nothing large waits in a shuffle:

1. Nodes are the distinct pHashes. Identical bytes always give identical pHashes, so exact copies (and
   images with the same pixels) share a node, however many there are: blank images make one node.
2. Candidate pairs: each distinct hash goes to its k+1 band buckets ("band:value"); by the pigeonhole
   principle two hashes within distance k share one. Inside a bucket every pair is verified with its
   full distance (filters.dedup.bucket_pairs); a large bucket (a cluster of similar hashes) goes
   through the sub-banded search, so it costs about its size, not its size squared. Bucket sizes are
   recorded in the Beam distribution dedup/bucket_size.
3. Components: the verified pairs, de-duplicated, are joined on one worker (scipy) into hash -> root.
   They are few (one per duplicate found), so this holds millions of pairs in a few hundred MB.
4. Keeper: every record goes to its component (its root, or its own hash); the keeper is the longest
   caption, ties to the smallest uid (filters.dedup.preference); every other member is a duplicate,
   its detail naming the keeper: "exact duplicate of UID" (same bytes) or "near duplicate of UID
   (pHash distance D)".
"""

import hashlib
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from filters.dedup import bucket_keys, bucket_pairs, component_roots, preference

DEFAULT_MAX_DISTANCE = 4  # bits of 64: re-encodes, resizes and light edits; distinct images sit at 10+


class Member(NamedTuple):
    uid: str
    phash: str
    caption: str
    digest: str  # of the encoded image bytes


def member(row: dict) -> Member:
    digest = hashlib.blake2b(row["image"], digest_size=16).hexdigest()
    return Member(row["uid"], row["phash"], row["caption"], digest)


def duplicates(members: list[Member]) -> list[tuple[str, str]]:
    """(uid, detail) for every member of one component but its keeper."""
    if len(members) < 2:
        return []
    keeper = min(members, key=lambda m: preference(m.caption, m.uid))
    found = []
    for m in members:
        if m is keeper:
            continue
        if m.digest == keeper.digest:
            found.append((m.uid, f"exact duplicate of {keeper.uid}"))
        else:
            distance = (int(m.phash, 16) ^ int(keeper.phash, 16)).bit_count()
            found.append((m.uid, f"near duplicate of {keeper.uid} (pHash distance {distance})"))
    return found


def verified_pairs(bucket: tuple, k: int) -> list[tuple[str, str]]:
    """The verified pairs of one (key, hashes) bucket."""
    hashes = sorted(bucket[1])
    Metrics.distribution("dedup", "bucket_size").update(len(hashes))
    return [(a, b) for a, b, _ in bucket_pairs(hashes, k)]


class FindDuplicates(beam.PTransform):
    """Rows with uid, phash, caption and image -> (uid, detail) for every row that is a duplicate."""

    def __init__(self, max_distance: int = DEFAULT_MAX_DISTANCE):
        super().__init__()
        self.k = max_distance

    def expand(self, rows):
        k = self.k
        members = rows | "Slim" >> beam.Map(member)
        pairs = (
            members
            | "Hashes" >> beam.Map(lambda m: m.phash)
            | "DistinctHashes" >> beam.Distinct()
            | "Buckets" >> beam.FlatMap(lambda h: [(key, h) for key in bucket_keys(h, k)])
            | "GroupBuckets" >> beam.GroupByKey()
            | "Verify" >> beam.FlatMap(verified_pairs, k)
            | "DistinctPairs" >> beam.Distinct()
        )
        roots = pairs | "AllPairs" >> beam.combiners.ToList() | "Components" >> beam.FlatMap(lambda ps: component_roots(ps).items())
        return (
            members
            | "ToComponent" >> beam.Map(lambda m, roots: (roots.get(m.phash, m.phash), m), roots=beam.pvalue.AsDict(roots))
            | "GroupComponents" >> beam.GroupByKey()
            | "Decide" >> beam.FlatMap(lambda component: duplicates(list(component[1])))
        )
