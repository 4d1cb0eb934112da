"""Dedup across the whole run, never per shard (issue 3, step 3): exact and near-duplicate images by pHash.

Only slim records (uid, pHash, caption length, key) are shuffled, never the image bytes:
1. distinct pHashes: identical hashes (the same image bytes or the same pixels, and blank images that all
   hash alike) become one node, so no bucket ever holds copies of one hash;
2. each distinct hash goes to its k+1 band buckets, GroupByKey(band index, band value); inside a bucket
   filters/dedup.py's `near_pairs` finds the pairs within distance k (its second level of bands keeps a
   large bucket from being compared all-pairs). By the pigeonhole principle no pair within k is missed;
3. the verified pairs are joined into connected components in one place (edges are few: one per
   duplicate), with scipy;
4. per component (GroupByKey), the pair with the longest cleaned caption is kept (the Qwen-VL rule);
   ties go to the smallest key, then uid, so reruns keep the same pair. The others are rejected with
   reason `duplicate` and the kept uid in the detail, applied to the full rows through a side input that
   holds only the duplicates.
"""

import apache_beam as beam
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from filters import reasons
from filters.dedup import band_keys, near_pairs

DEFAULT_MAX_DISTANCE = 4  # pHash bits: re-encodes and small resizes land at 0-4, distinct images far above


# Hashes travel as their 16 hex digits: Beam's integer coder stops at 2**63.


def _band_buckets(phash: str, masks: list[int]):
    h = int(phash, 16)
    for index, mask in enumerate(masks):
        yield (index, h & mask), phash


def _as_array(phashes) -> np.ndarray:
    return np.array([int(p, 16) for p in phashes], dtype=np.uint64)


def _pairs_in_bucket(bucket, k: int):
    _, members = bucket
    distinct = sorted(set(members))
    for i, j in near_pairs(_as_array(distinct), k) if len(distinct) > 1 else ():
        yield distinct[i], distinct[j]


def _components(edges: list[tuple[str, str]]):
    """(hash, the smallest hash of its component, in hex order) for every hash that has a near duplicate."""
    if not edges:
        return
    nodes = sorted({p for edge in edges for p in edge})
    position = {p: i for i, p in enumerate(nodes)}
    index = np.array([(position[a], position[b]) for a, b in edges])
    graph = coo_matrix((np.ones(len(index), dtype=np.int8), (index[:, 0], index[:, 1])), shape=(len(nodes),) * 2)
    labels = connected_components(graph, directed=False)[1]
    roots = {}
    for node, label in zip(nodes, labels.tolist()):
        roots.setdefault(label, node)  # nodes are sorted: the first seen is the smallest
        yield node, roots[label]


def _duplicates(component):
    """(uid, kept uid) for every member but the keeper: longest caption, then smallest key, then uid."""
    _, members = component
    members = sorted(members, key=lambda m: (-m[1], m[2], m[0]))
    for uid, _, _ in members[1:]:
        yield uid, members[0][0]


class SplitDuplicates(beam.DoFn):
    REJECTED = "rejected"

    def __init__(self, keep_rejected_images: bool):
        self.keep_rejected_images = keep_rejected_images

    def process(self, row: dict, duplicates: dict):
        kept_uid = duplicates.get(row["uid"])
        if kept_uid is None:
            yield row
            return
        beam.metrics.Metrics.counter("stage1", reasons.DUPLICATE).inc()
        yield beam.pvalue.TaggedOutput(
            self.REJECTED,
            {
                **{name: row[name] for name in ("uid", "source", "key", "url")},
                "caption": row["caption_raw"],
                "reason": reasons.DUPLICATE,
                "detail": f"duplicate of {kept_uid}",
                "image": row["image"] if self.keep_rejected_images else None,
            },
        )


class Deduplicate(beam.PTransform):
    """Curated rows -> a DoOutputsTuple: `kept` rows and `rejected` duplicate rows."""

    def __init__(self, max_distance: int = DEFAULT_MAX_DISTANCE, keep_rejected_images: bool = True):
        super().__init__()
        self.k, self.keep_rejected_images = max_distance, keep_rejected_images

    def expand(self, rows):
        slim = rows | "Slim" >> beam.Map(lambda r: (r["phash"], (r["uid"], len(r["caption"]), r["key"])))
        edges = (
            slim
            | "Hashes" >> beam.Keys()
            | "DistinctHashes" >> beam.Distinct()
            | "BandBuckets" >> beam.FlatMap(_band_buckets, band_keys(self.k, levels=1))
            | "GroupBuckets" >> beam.GroupByKey()
            | "VerifyPairs" >> beam.FlatMap(_pairs_in_bucket, self.k)
        )
        roots = edges | "AllEdges" >> beam.combiners.ToList() | "Components" >> beam.FlatMap(_components)
        duplicates = (
            slim
            | "ByComponent" >> beam.Map(lambda kv, root: (root.get(kv[0], kv[0]), kv[1]), root=beam.pvalue.AsDict(roots))
            | "GroupComponents" >> beam.GroupByKey()
            | "PickKeepers" >> beam.FlatMap(_duplicates)
        )
        return rows | "SplitDuplicates" >> beam.ParDo(
            SplitDuplicates(self.keep_rejected_images), duplicates=beam.pvalue.AsDict(duplicates)
        ).with_outputs(SplitDuplicates.REJECTED, main="kept")
