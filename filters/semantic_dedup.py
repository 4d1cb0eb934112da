"""Semantic duplicates within one k-means cluster of CLIP image embeddings: SemDeDup's keep rule, plain numpy.

SemDeDup (Abbas et al. 2023, "SemDeDup: Data-efficient learning at web-scale through semantic
deduplication", arXiv 2303.09540; code: facebookresearch/SemDeDup) clusters the L2-normalised CLIP image
embeddings with k-means and, inside each cluster, drops a pair whose cosine similarity to another pair
of the cluster exceeds 1 - eps. The order decides which of two duplicates stays: clustering/sort_clusters.py
(rank_within_cluster) sorts each cluster by cosine distance to its centroid, descending when `keep_hard`
(the default of clustering/configs/openclip/clustering_configs.yaml and of semdedup_configs.yaml's
`which_to_keep: "hard"`), so the member farthest from the centroid comes first and is kept. Ties are
broken here by uid, so the order is total.

The rule differs from the paper's code in one point. semdedup.py (SemDeDupJob.semdedup) takes the upper
triangle of the cluster's similarity matrix and drops item j when its highest similarity to ANY earlier
item exceeds 1 - eps, whether that earlier item was kept or was itself dropped: in a chain a ~ b ~ c
where a and c are not within the threshold, it drops both b and c, and c has no kept pair within the
threshold. Here the rule is greedy over the kept members only: a member is dropped iff its similarity to
an earlier KEPT member exceeds 1 - eps, and its keeper is the most similar such member (ties to the
earliest). So every drop names, in `duplicate_of`, a kept uid it is within the threshold of; c above is
kept. It costs one dot product per (member, earlier kept member) pair: at most n^2 / 2 for a cluster of
n, with one n x D matrix in memory, never the n x n similarity matrix.

The embeddings travel as float16 bytes (encode_embeddings): 2 bytes a dimension, 1,536 bytes for
ViT-L/14's 768; decode_embedding gives them back as unit float32 vectors.
"""

from typing import NamedTuple

import numpy as np

EMBEDDING = "embedding"  # the entry of pipelines/score_clip.py's scores that carries it
EMBEDDING_DTYPE = np.float16  # on the wire: half the bytes of float32; cosines within ~1e-3


class Member(NamedTuple):
    uid: str
    embedding: np.ndarray  # (D,) float32, L2-normalised
    distance: float  # cosine distance to its cluster's centroid: 1 - cosine similarity


def encode_embeddings(embeddings: np.ndarray) -> list[bytes]:
    """(B, D) float embeddings -> B float16 byte strings."""
    return [row.tobytes() for row in np.asarray(embeddings, dtype=EMBEDDING_DTYPE)]


def decode_embedding(embedding: bytes | np.ndarray) -> np.ndarray:
    """float16 bytes (or an array) -> the (D,) float32 vector scaled to unit length (the cast to float16
    moves its norm by ~1e-3)."""
    vector = np.frombuffer(embedding, EMBEDDING_DTYPE) if isinstance(embedding, bytes) else np.asarray(embedding)
    vector = vector.astype(np.float32)
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def keep_order(members: list[Member]) -> list[Member]:
    """SemDeDup's "keep hard" order: farthest from the centroid first, ties by uid."""
    return sorted(members, key=lambda m: (-m.distance, m.uid))


def semantic_duplicates(members: list[Member], eps: float) -> dict[str, tuple[str, str]]:
    """The members of one cluster that are semantic duplicates, uid -> (keeper uid, detail), by the greedy
    rule of the module docstring: in keep_order, a member whose cosine similarity to an earlier kept member
    exceeds 1 - eps is dropped and names the most similar one."""
    ordered = keep_order(members)
    if not ordered:
        return {}
    kept = np.empty((len(ordered), len(ordered[0].embedding)), np.float32)  # (n, D), the first `count` rows filled
    kept_uids: list[str] = []
    dropped = {}
    for m in ordered:
        count = len(kept_uids)
        if count:
            sims = kept[:count] @ m.embedding
            best = int(np.argmax(sims))
            if sims[best] > 1.0 - eps:
                dropped[m.uid] = (kept_uids[best], f"semantic duplicate of {kept_uids[best]} (cosine {sims[best]:.4f})")
                continue
        kept[count] = m.embedding
        kept_uids.append(m.uid)
    return dropped
