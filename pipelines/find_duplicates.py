"""Dedup across the whole run, in Beam: exact and near-duplicate images, one pair kept per image.

Every decision is made on slim records (uid, pHash, the cleaned caption's length, a digest of the image
bytes, and an opaque `where` the caller uses to join the answer back), never on rows that carry images,
and no step holds more than one key's group: nothing grows with the run on one worker.

1. Nodes are the distinct pHashes. Identical bytes always give identical pHashes, so exact copies (and
   images with the same pixels) share a node, however many there are: blank images make one node.
2. Candidate pairs: each distinct hash goes to its k+1 band buckets ("band:value"); by the pigeonhole
   principle two hashes within distance k share one. Inside a bucket every pair is verified with its
   full distance (filters.dedup.bucket_pairs); a large bucket (a cluster of similar hashes) goes
   through the sub-banded search, so it costs about its size, not its size squared. Bucket sizes are
   recorded in the Beam distribution dedup/bucket_size.
3. Components: the verified pairs, de-duplicated, go through large-star / small-star rounds
   (pipelines/connected_components.py) into node -> root, the smallest hash of its component.
4. Keeper, by a min streamed over each group (BestPerKey): the best member of each node (the longest caption, ties to the smallest uid:
   filters.dedup.preference), then the best of those per root. Each node learns its root's keeper, and
   every member of a node other than the keeper is a duplicate, its detail naming the keeper: "exact
   duplicate of UID" (same bytes) or "near duplicate of UID (pHash distance D)".

Shuffle per candidate: the slim record twice (about 250 bytes as Beam encodes it: by node for its best
member, by node again to meet its keeper); per distinct hash, its k+1 bucket keys; per edge, the component rounds. Hot
keys stay bounded in memory: a blank image repeated a million times is one node, whose members are
streamed past the min and then past their keeper one by one; a huge component is one root whose member
nodes are streamed past it the same way.
"""

import hashlib
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from filters.dedup import bucket_keys, bucket_pairs, phash_hex, preference
from pipelines.connected_components import DEFAULT_ROUNDS, ConnectedComponents

DEFAULT_MAX_DISTANCE = 4  # bits of 64: re-encodes, resizes and light edits; distinct images sit at 10+


class Member(NamedTuple):
    uid: str
    phash: str
    caption_chars: int  # the cleaned caption's length, all the keeper rule needs of it
    digest: str  # of the encoded image bytes
    where: str = ""  # the caller's: e.g. the work file that holds the row


def member(row: dict, where: str = "") -> Member:
    digest = hashlib.blake2b(row["image"], digest_size=16).hexdigest()
    return Member(row["uid"], phash_hex(row["phash"]), len(row["caption"]), digest, where)


def rank(m: Member) -> tuple[int, str]:
    return preference(m.caption_chars, m.uid)


def duplicate_detail(m: Member, keeper: Member) -> str:
    """Why `m` is a duplicate of `keeper`: the same bytes, or a pHash distance."""
    if m.digest == keeper.digest:
        return f"exact duplicate of {keeper.uid}"
    distance = (int(m.phash, 16) ^ int(keeper.phash, 16)).bit_count()
    return f"near duplicate of {keeper.uid} (pHash distance {distance})"


def best_of_group(group: tuple) -> tuple:
    """(key, members) -> (key, the best member: the smallest `rank`, a total order, so every runner and
    every order of the group agrees), read once from the grouped values, never listed."""
    key, members = group
    return key, min(members, key=rank)


class BestPerKey(beam.PTransform):
    """(key, member) pairs -> (key, its best member): a GroupByKey, then best_of_group.

    Not a CombinePerKey: Beam lifts that into a table before the shuffle that holds up to 100,000 keys per
    bundle on each worker (operations.PGBKCVOperation), and with keys almost all distinct (pHashes, roots)
    it combines next to nothing while it holds a Member per key, up to ~50 MB a worker (on the portable
    runner at 100,000 pairs the SDK worker's peak was ~10 MB lower without it). The cost: a hot key (a
    blank image repeated a million times) sends every member through the shuffle, about 250 bytes each,
    streamed past the min on one worker."""

    def expand(self, pairs):
        return pairs | "Group" >> beam.GroupByKey() | "Best" >> beam.Map(best_of_group)


def verified_pairs(bucket: tuple, k: int) -> list[tuple[str, str]]:
    """The verified pairs of one (key, hashes) bucket."""
    hashes = sorted(bucket[1])
    Metrics.distribution("dedup", "bucket_size").update(len(hashes))
    return [(a, b) for a, b, _ in bucket_pairs(hashes, k)]


def best_by_root(joined: tuple) -> list[tuple[str, Member]]:
    """(node, {"best": [member], "root": [root] or []}) -> (root, the node's best member)."""
    node, found = joined
    roots = list(found["root"])  # at most one
    return [(roots[0] if roots else node, best) for best in found["best"]]


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


def duplicate_of_keeper(node: str, keeper: Member, m: Member):
    """(member, the keeper's uid, detail) if `m` is not its node's keeper."""
    if m.uid != keeper.uid:
        Metrics.counter("dedup", "duplicates").inc()
        yield m, keeper.uid, duplicate_detail(m, keeper)


class FindDuplicates(beam.PTransform):
    """Members -> (member, the keeper's uid, detail) for every member that is a duplicate of another one."""

    def __init__(self, max_distance: int = DEFAULT_MAX_DISTANCE, rounds: int = DEFAULT_ROUNDS):
        super().__init__()
        self.k, self.rounds = max_distance, rounds

    def expand(self, members):
        k = self.k
        by_node = members | "ByNode" >> beam.Map(lambda m: (m.phash, m))
        best = (  # keepers travel without `where`: only a duplicate's own is needed to join it back
            by_node
            | "WithoutWhere" >> beam.MapTuple(lambda h, m: (h, m._replace(where="")))
            | "BestOfNode" >> BestPerKey()
        )
        roots = (
            best
            | "Hashes" >> beam.Keys()
            | "Buckets" >> beam.FlatMap(lambda h: [(key, h) for key in bucket_keys(h, k)])
            | "GroupBuckets" >> beam.GroupByKey()
            | "Verify" >> beam.FlatMap(verified_pairs, k)
            | "DistinctPairs" >> beam.Distinct()
            | "Components" >> ConnectedComponents(self.rounds)
        )
        keepers = (
            {"best": best, "root": roots}
            | "JoinRoots" >> beam.CoGroupByKey()
            | "BestByRoot" >> beam.FlatMap(best_by_root)
            | "KeeperOfRoot" >> BestPerKey()
        )
        linked = (  # the nodes that are not roots, each with its root's keeper
            roots
            | "RootToNode" >> beam.Map(lambda e: (e[1], e[0]))
            | "ToRootKeeper" >> Lookup(keepers)
            | "NodeKeeper" >> beam.MapTuple(lambda root, keeper, node: (node, keeper))
        )
        node_keepers = (keepers, linked) | "AllNodeKeepers" >> beam.Flatten()
        return by_node | "ToNodeKeeper" >> Lookup(node_keepers) | "Duplicates" >> beam.FlatMapTuple(duplicate_of_keeper)
