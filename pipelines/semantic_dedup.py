"""Semantic dedup on Beam (SemDeDup's method): k-means on the CLIP image embeddings, then the keep rule of
filters/semantic_dedup.py inside each cluster.

Input: (uid, work_file, embedding) rows, the embedding as float16 bytes (filters/semantic_dedup.py) or an
array. Output: {"duplicates": (work_file, (uid, (keeper uid, detail))) per dropped row, the shape of
stage 1's duplicate records (pipelines/stage1.py: duplicate_by_file) with rejected/'s detail in place of
a pHash distance; "clusters": a singleton {"clusters": non-empty clusters, "largest": members of the
largest, "split": clusters cut into sub-groups}}.

1. Sample: the `sample_size` rows whose seeded hash of the uid is smallest (Beam's Top combine over
   (hash, embedding)): a uniform sample, the same on every run. Beam's Sample.FixedSizeGlobally draws
   with Python's unseeded random, so two runs would cluster differently.
2. Seeding: k-means++ on the sample, on one worker (filters/kmeans.py). k is `clusters`, or by default
   ceil(rows / PAIRS_PER_CLUSTER) up to MAX_DEFAULT_CLUSTERS, and never more than the sample's rows; one
   cluster for a run under 10,000 rows, where every pair is compared.
3. `iterations` Lloyd steps, unrolled in the graph: each row goes to its nearest centroid (rows batched,
   one matrix product a batch), the sums per centroid are combined per key, then gathered (k vectors:
   bounded by k, not by the run) into the next centroids, a side input of the next step.
4. Assignment to the final centroids, with the cosine distance to the centroid; the members are counted
   per cluster (k counts), and a cluster above `max_cluster_size` is split into ceil(size / max) sub-groups
   by a hash of the uid, so no group holds more than about `max_cluster_size` rows. Pairs across two
   sub-groups are never compared: a duplicate whose copy fell in another sub-group stays. The report
   says how many clusters were split.
5. GroupByKey by (cluster, sub-group), and the keep rule on each group.

Cost at 5B input pairs, for the ~2.5B candidates that pass the scores, with ViT-L/14 (768 wide):
- each row is ~1.6 KB (1,536 B of embedding, the uid, the work file's path): ~4 TB, read 2 + iterations
  times (the count and sample, each Lloyd step, the assignment; Beam materialises it once);
- each Lloyd step and the assignment cost k x 768 multiply-adds a row (k = 50,000: 38 M; 230 M a row
  with 5 iterations, ~6e17 for the run: 0.3% of the ~80 G of ViT-L/14's image tower per image, 24 layers
  x 257 tokens x 12 x 1024^2) and shuffle at most one partial sum per (bundle, cluster), Beam lifting
  the per-key combine before the shuffle: at most 6 KB (768 float64) a row when the bundles are small
  beside k, far less when they are large;
- the sample: at most MAX_SAMPLE rows (~300 MB) on one worker, k-means++ over it n x k x 768
  multiply-adds: seconds for k = 1,000, about half an hour on one core for k = 50,000;
- the centroids, a side input of each step: k x 768 float32 (150 MB at k = 50,000); the cluster sizes,
  k integers;
- the group step shuffles each row once (~1.7 KB: ~4 TB); a group of n costs at most n^2 / 2 dot
  products of 768: at most ~7.7 M multiply-adds a row, and ~150 MB for a group of the default
  max_cluster_size, 20,000 (its members' bytes, their float32 vectors, the kept ones' matrix).
At 5B pairs the default k (50,000) leaves ~50,000 rows a cluster, so most clusters are split in 3.
"""

import hashlib
import math

import apache_beam as beam
import numpy as np

from filters.kmeans import kmeans_plus_plus, nearest, update_centroids
from filters.semantic_dedup import Member, decode_embedding, semantic_duplicates

DEFAULT_ITERATIONS = 5
DEFAULT_MAX_CLUSTER_SIZE = 20_000  # rows compared in one group: ~150 MB of embeddings at 768 wide
PAIRS_PER_CLUSTER = 10_000  # the default k's rule; SemDeDup's LAION-440M run had ~8,800 (50,000 clusters)
MAX_DEFAULT_CLUSTERS = 50_000  # SemDeDup's count for LAION-440M; the centroids side input: 150 MB at 768 wide
SAMPLE_PER_CLUSTER, MIN_SAMPLE, MAX_SAMPLE = 20, 10_000, 200_000  # k-means++'s sample: 20 k, clamped
BATCH = 1024  # rows per matrix product when assigning

Row = tuple[str, str, bytes]  # (uid, work_file, embedding)


def stable_hash(text: str) -> int:
    """A 64-bit hash, the same in every process and run (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def sample_size(clusters: int | None) -> int:
    """Rows sampled for k-means++: SAMPLE_PER_CLUSTER per cluster (the largest default k when none is
    given), within [MIN_SAMPLE, MAX_SAMPLE]."""
    return min(max(SAMPLE_PER_CLUSTER * (clusters or MAX_DEFAULT_CLUSTERS), MIN_SAMPLE), MAX_SAMPLE)


def default_clusters(rows: int) -> int:
    """k when none is given: ceil(rows / PAIRS_PER_CLUSTER), at least 1, at most MAX_DEFAULT_CLUSTERS."""
    return min(max(1, math.ceil(rows / PAIRS_PER_CLUSTER)), MAX_DEFAULT_CLUSTERS)


def seed_centroids(sample: list[tuple[int, bytes]], rows: int, clusters: int | None, seed: int) -> np.ndarray:
    """The sampled (hash, embedding) pairs -> k-means++'s (k, D) centroids."""
    if not sample:
        return np.zeros((0, 0), np.float32)
    points = np.stack([decode_embedding(embedding) for _, embedding in sorted(sample)])
    return kmeans_plus_plus(points, clusters or default_clusters(rows), seed)


class Assign(beam.DoFn):
    """A batch of rows -> (cluster, (uid, work_file, embedding, cosine distance to the centroid)) per row,
    with one matrix product for the batch."""

    def process(self, batch: list[Row], centroids: np.ndarray):
        points = np.stack([decode_embedding(embedding) for _, _, embedding in batch])
        index, distance = nearest(points, centroids)
        for (uid, work_file, embedding), cluster, d in zip(batch, index.tolist(), distance.tolist()):
            yield cluster, (uid, work_file, embedding, d)


class AssignRows(beam.PTransform):
    """Rows -> Assign's (cluster, member) pairs for the `centroids` side input."""

    def __init__(self, centroids):
        super().__init__()
        self.centroids = centroids

    def expand(self, rows):
        return (
            rows
            | "Batch" >> beam.BatchElements(min_batch_size=BATCH, max_batch_size=BATCH)
            | "Nearest" >> beam.ParDo(Assign(), beam.pvalue.AsSingleton(self.centroids))
        )


class SumVectors(beam.CombineFn):
    """float64 sum of the vectors of one cluster (a member's direction is all spherical k-means needs)."""

    def create_accumulator(self):
        return None

    def add_input(self, total, vector):
        return vector.astype(np.float64) if total is None else total + vector

    def merge_accumulators(self, accumulators):
        present = [a for a in accumulators if a is not None]
        return sum(present[1:], present[0].copy()) if present else None

    def extract_output(self, total):
        return total


class LloydStep(beam.PTransform):
    """Rows and a singleton of centroids -> a singleton of the centroids after one Lloyd step."""

    def __init__(self, centroids):
        super().__init__()
        self.centroids = centroids

    def expand(self, rows):
        return (
            rows
            | "Assign" >> AssignRows(self.centroids)
            | "Vector" >> beam.MapTuple(lambda cluster, member: (cluster, decode_embedding(member[2])))
            | "SumPerCluster" >> beam.CombinePerKey(SumVectors())
            | "Sums" >> beam.combiners.ToDict()
            | "Update" >> beam.Map(lambda sums, centroids: update_centroids(centroids, sums), beam.pvalue.AsSingleton(self.centroids))
        )


def sub_group(assigned: tuple, sizes: dict[int, int], max_cluster_size: int) -> tuple[tuple[int, int], tuple]:
    """A (cluster, member) pair keyed by (cluster, sub-group): ceil(size / max_cluster_size) sub-groups by
    the uid's hash."""
    cluster, member = assigned
    parts = math.ceil(sizes[cluster] / max_cluster_size)
    return (cluster, stable_hash(member[0]) % parts), member


def resolve(group: tuple, eps: float):
    """One (sub-)cluster's members -> (work_file, (uid, (keeper, detail))) for its semantic duplicates."""
    members = list(group[1])
    files = {uid: work_file for uid, work_file, _, _ in members}
    found = semantic_duplicates([Member(uid, decode_embedding(e), d) for uid, _, e, d in members], eps)
    for uid, decision in sorted(found.items()):
        yield files[uid], (uid, decision)


def cluster_stats(sizes: dict[int, int], max_cluster_size: int) -> dict:
    """The clusters' summary for the report."""
    return {
        "clusters": len(sizes),
        "largest": max(sizes.values(), default=0),
        "split": sum(size > max_cluster_size for size in sizes.values()),
    }


class KMeans(beam.PTransform):
    """(uid, work_file, embedding) rows -> a singleton (k, D) array of unit centroids: k-means++ on the
    seeded sample, then `iterations` Lloyd steps (steps 1-3 of the module docstring)."""

    def __init__(self, clusters: int | None, iterations: int, seed: int):
        super().__init__()
        self.clusters, self.iterations, self.seed = clusters, iterations, seed

    def expand(self, rows):
        seed, n = self.seed, sample_size(self.clusters)
        count = beam.pvalue.AsSingleton(rows | "CountRows" >> beam.combiners.Count.Globally())
        centroids = (
            rows
            | "SampleKey" >> beam.Map(lambda row: (stable_hash(f"{seed}:{row[0]}"), row[2]))
            | "Sample" >> beam.CombineGlobally(beam.combiners.TopCombineFn(n, reverse=True))
            | "Seed" >> beam.Map(seed_centroids, count, self.clusters, seed)
        )
        for i in range(self.iterations):
            centroids = rows | f"Lloyd[{i}]" >> LloydStep(centroids)
        return centroids


class SemanticDedup(beam.PTransform):
    """(uid, work_file, embedding) rows -> {"duplicates": ..., "clusters": ...} (the module docstring):
    the rows dropped as semantic duplicates within `eps` (cosine similarity > 1 - eps), deterministic for
    a given `seed`."""

    def __init__(self, eps: float, clusters: int | None = None, iterations: int = DEFAULT_ITERATIONS,
                 max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE, seed: int = 0):
        super().__init__()
        self.eps, self.clusters, self.iterations = eps, clusters, iterations
        self.max_cluster_size, self.seed = max_cluster_size, seed

    def expand(self, rows):
        centroids = rows | "KMeans" >> KMeans(self.clusters, self.iterations, self.seed)
        assigned = rows | "Assign" >> AssignRows(centroids)
        sizes = (
            assigned
            | "Clusters" >> beam.Keys()
            | "CountMembers" >> beam.combiners.Count.PerElement()
            | "ClusterSizes" >> beam.combiners.ToDict()
        )
        duplicates = (
            assigned
            | "SubGroup" >> beam.Map(sub_group, beam.pvalue.AsSingleton(sizes), self.max_cluster_size)
            | "Group" >> beam.GroupByKey()
            | "KeepRule" >> beam.FlatMap(resolve, self.eps)
        )
        return {"duplicates": duplicates, "clusters": sizes | "ClusterStats" >> beam.Map(cluster_stats, self.max_cluster_size)}
