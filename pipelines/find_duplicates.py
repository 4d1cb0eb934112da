"""Dedup across the whole run, in Beam: exact and near-duplicate images, one pair kept per image.

Every decision is made on slim records (uid, pHash, the cleaned caption's length, a digest of the image
bytes, and an opaque `where` the caller uses to join the answer back), never on rows that carry images,
and no step holds more than one key's group: nothing grows with the run on one worker. The records
travel as plain tuples, which Beam encodes field by field (99 bytes with a 32-character uid and a
30-character `where`); a NamedTuple would be pickled, its class name included (174 bytes). A pHash is
the signed 64-bit integer of curated/'s `phash` column all the way through (10 or 11 bytes on the wire,
where its hex would take 17).

1. Nodes are the distinct pHashes. Identical bytes always give identical pHashes, so exact copies (and
   images with the same pixels) share a node, however many there are: blank images make one node.
2. Candidate pairs: each distinct hash goes to its k+1 band buckets (small integers); by the pigeonhole
   principle two hashes within distance k share one. Inside a bucket every pair is verified with its
   full distance (filters.dedup.bucket_pairs); a large bucket (a cluster of similar hashes) goes
   through the sub-banded search, so it costs about its size, not its size squared. Bucket sizes are
   recorded in the Beam distribution dedup/bucket_size.
3. Components: the verified pairs, de-duplicated, go through large-star / small-star rounds
   (pipelines/connected_components.py) into node -> root, the smallest hash of its component.
4. Keeper: each member goes to its node's root (Lookup), and the members of each root are read twice:
   once for the keeper, the best of them (the longest caption, ties to the smallest uid:
   filters.dedup.preference), once to name it beside every other member with their pHash distance, or
   None for the same bytes (rejected/'s detail: "exact duplicate of UID" or "near duplicate of UID
   (pHash distance D)", duplicate_detail).

Shuffle per candidate: its slim record twice (about 110 bytes each with its key: by node to meet its
root, by root to meet its keeper) and its pHash once (to find the distinct hashes); per distinct hash,
its k+1 (bucket, hash) records, about 14 bytes each; per edge, the component rounds. Hot keys cost time
on one worker, never memory: a blank image repeated a million times is one node, and a huge component
one root, whose members are streamed past their root and then twice past the min, never listed.
"""

import hashlib
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from filters.dedup import bucket_keys, bucket_pairs, hash_distance, preference
from pipelines.connected_components import DEFAULT_ROUNDS, ConnectedComponents

DEFAULT_MAX_DISTANCE = 4  # bits of 64: re-encodes, resizes and light edits; distinct images sit at 10+


class Member(NamedTuple):
    uid: str
    phash: int  # as curated/'s column: the 64 bits as a signed integer (filters.dedup.phash_int64)
    caption_chars: int  # the cleaned caption's length, all the keeper rule needs of it
    digest: bytes  # of the encoded image bytes (16 bytes of BLAKE2b)
    where: str = ""  # the caller's: e.g. the name of the work file that holds the row


def member(row: dict, where: str = "") -> Member:
    digest = hashlib.blake2b(row["image"], digest_size=16).digest()
    return Member(row["uid"], row["phash"], len(row["caption"]), digest, where)


def members_of(records):
    """Members from their records as they travel between steps (plain tuples), lazily."""
    return (Member._make(record) for record in records)


def rank(m: Member) -> tuple[int, str]:
    return preference(m.caption_chars, m.uid)


def duplicate_distance(m: Member, keeper: Member) -> int | None:
    """None where `m` has the keeper's bytes (an exact duplicate), else their pHash distance."""
    return None if m.digest == keeper.digest else hash_distance(m.phash, keeper.phash)


def duplicate_detail(keeper: str, distance: int | None) -> str:
    """Why a member is a duplicate of the one kept (uid `keeper`), as rejected/'s detail says it."""
    if distance is None:
        return f"exact duplicate of {keeper}"
    return f"near duplicate of {keeper} (pHash distance {distance})"


def verified_pairs(bucket: tuple, k: int) -> list[tuple[int, int]]:
    """The verified pairs of one (key, hashes) bucket."""
    hashes = sorted(bucket[1])
    Metrics.distribution("dedup", "bucket_size").update(len(hashes))
    return [(a, b) for a, b, _ in bucket_pairs(hashes, k)]


def _with_one(group: tuple):
    """(key, tagged values) -> (key, the one value, each other value); read twice, never listed."""
    key, values = group
    one = next((value for is_one, value in values if is_one), None)
    for is_one, value in values:
        if not is_one:
            yield key, one, value


class Lookup(beam.PTransform):
    """(key, value) pairs -> (key, one, value), `one` the value that the `one` collection holds for the key
    (at most one each; None where it has none). The group is streamed twice and never listed (a runner
    pages a large one from its shuffle), so a hot key, such as a blank image's million members, costs
    time on one worker but no memory."""

    def __init__(self, one):
        super().__init__()
        self.one = one

    def expand(self, many):
        return (
            (self.one | "TagOne" >> beam.Map(lambda kv: (kv[0], (True, kv[1]))), many | "TagMany" >> beam.Map(lambda kv: (kv[0], (False, kv[1]))))
            | "Tagged" >> beam.Flatten()
            | "Group" >> beam.GroupByKey()
            | "WithOne" >> beam.FlatMap(_with_one)
        )


def duplicates_in_group(group: tuple):
    """(root, the records of its component's members) -> (member, the keeper's uid, duplicate_distance)
    for each member but the keeper, the best of them (the smallest `rank`, a total order, so every runner
    and every order of the group agrees). The group is read twice, never listed."""
    _, records = group
    keeper = min(members_of(records), key=rank)
    for m in members_of(records):
        if m.uid != keeper.uid:
            Metrics.counter("dedup", "duplicates").inc()
            yield m, keeper.uid, duplicate_distance(m, keeper)


class FindDuplicates(beam.PTransform):
    """Members -> (member, the keeper's uid, duplicate_distance) for every member that is a duplicate of
    another one: the detail rejected/ gives (duplicate_detail) is made where the row is written, so the
    decision travels as two uids and a small integer."""

    def __init__(self, max_distance: int = DEFAULT_MAX_DISTANCE, rounds: int = DEFAULT_ROUNDS):
        super().__init__()
        self.k, self.rounds = max_distance, rounds

    def expand(self, members):
        k = self.k
        by_node = members | "ByNode" >> beam.Map(lambda m: (m.phash, tuple(m)))
        roots = (
            by_node
            | "Hashes" >> beam.Keys()
            | "DistinctHashes" >> beam.Distinct()
            | "Buckets" >> beam.FlatMap(lambda h: [(key, h) for key in bucket_keys(h, k)])
            | "GroupBuckets" >> beam.GroupByKey()
            | "Verify" >> beam.FlatMap(verified_pairs, k)
            | "DistinctPairs" >> beam.Distinct()
            | "Components" >> ConnectedComponents(self.rounds)
        )
        return (
            by_node
            | "ToRoot" >> Lookup(roots)
            | "ByRoot" >> beam.MapTuple(lambda node, root, m: (node if root is None else root, m))
            | "GroupByRoot" >> beam.GroupByKey()
            | "Duplicates" >> beam.FlatMap(duplicates_in_group)
        )
