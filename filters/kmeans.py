"""Spherical k-means on L2-normalised embeddings, its pieces in plain numpy: k-means++ seeding, the
nearest centroid, the centroid update. pipelines/semantic_dedup.py runs them across a run.

SemDeDup clusters its CLIP image embeddings with faiss's spherical k-means (facebookresearch/SemDeDup,
clustering/clustering.py: faiss.Kmeans(..., spherical=Kmeans_with_cos_dist), True in
clustering/configs/openclip/clustering_configs.yaml, with 50,000 centroids and 100 iterations for
LAION-440M): a point belongs to the centroid of highest cosine similarity, and a centroid is its
members' mean scaled back to unit length, the same direction as their sum.

The seeding is k-means++ (Arthur and Vassilvitskii 2007, "k-means++: the advantages of careful
seeding"): the first centre uniformly at random, each next one drawn with probability proportional to
the squared distance to the nearest centre already drawn; between unit vectors that is 2 - 2 cos.
"""

import numpy as np


def kmeans_plus_plus(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(n, D) unit rows -> (min(k, n), D) float32 centroids, drawn from the points by k-means++ with
    numpy's generator seeded by `seed`; fewer when every remaining point sits on a centroid already
    drawn. Costs k passes over the points: n x k x D multiply-adds."""
    n = len(points)
    if n == 0 or k < 1:
        return np.zeros((0, points.shape[1] if points.ndim == 2 else 0), np.float32)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(n))]
    squared = np.maximum(2.0 - 2.0 * (points @ points[chosen[0]]), 0.0)
    while len(chosen) < min(k, n):
        total = float(squared.sum())
        if total <= 0.0:
            break
        i = min(int(np.searchsorted(np.cumsum(squared), rng.random() * total, side="right")), n - 1)
        chosen.append(i)
        squared = np.minimum(squared, np.maximum(2.0 - 2.0 * (points @ points[i]), 0.0))
    return points[chosen].astype(np.float32)


def nearest(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, D) unit rows and (k, D) unit centroids -> each point's centroid (highest cosine similarity,
    ties to the lower index) and its cosine distance to it, 1 - that similarity."""
    sims = points @ centroids.T  # (B, k)
    index = np.argmax(sims, axis=1)
    return index, 1.0 - sims[np.arange(len(points)), index]


def update_centroids(centroids: np.ndarray, sums: dict[int, np.ndarray]) -> np.ndarray:
    """Lloyd's update: each centroid becomes its members' sum (`sums`, by centroid index) scaled to unit
    length; a centroid with no members, or whose members' sum is zero, stays where it was."""
    updated = centroids.copy()
    for index, total in sums.items():
        norm = np.linalg.norm(total)
        if norm > 0:
            updated[index] = (total / norm).astype(np.float32)
    return updated
