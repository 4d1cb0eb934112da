"""Near-duplicate images by 64-bit pHash, found without comparing all pairs (issue 3, step 3b): plain numpy.

Pigeonhole: two hashes within Hamming distance k agree exactly on at least one of k+1 disjoint bands of
their bits. Inside such a band's bucket the other bits still differ in at most k places, so splitting
those bits into k+1 sub-bands gives the same guarantee again. With many hashes, one level of bands makes
buckets too large to compare (10M hashes over 13-bit bands: ~1,200 per bucket), so the key is a band
plus a sub-band of the remaining bits ((k+1)^2 keys per hash, buckets of a few): no pair within k is
missed, and every candidate is verified with its full distance. Identical hashes collapse first, so
blank images that share one hash never form a bucket. A bucket that is still large (a dense cluster of
distinct but similar hashes) is compared all-pairs on its own, vectorized, so it costs its size squared
and never the whole run. Duplicates are the connected components of the verified pairs (scipy).
"""

from functools import lru_cache

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_BITS = 64
SMALL_BUCKET = 64  # buckets up to this size are compared by shifted runs; larger ones all-pairs, alone


def _bands(bits: list[int], parts: int) -> list[int]:
    """`bits` split into `parts` contiguous runs, each as a uint64 mask."""
    edges = np.linspace(0, len(bits), parts + 1).round().astype(int)
    return [sum(1 << b for b in bits[lo:hi]) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def band_keys(k: int, levels: int) -> list[int]:
    """The masks whose equal values bucket candidate pairs: k+1 bands, or band x sub-band for levels=2."""
    masks = []
    for band in _bands(list(range(HASH_BITS)), k + 1):
        if levels == 1:
            masks.append(band)
            continue
        rest = [b for b in range(HASH_BITS) if not band >> b & 1]
        masks += [band | sub for sub in _bands(rest, k + 1)]
    return masks


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b))


def _bucket_pairs(hashes: np.ndarray, mask: int, k: int) -> np.ndarray:
    """Index pairs (i, j) sharing `mask`'s bits and within distance k, as an (m, 2) array."""
    keys = hashes & np.uint64(mask)
    order = np.argsort(keys)
    keys = keys[order]
    found = []
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    for start, size in zip(starts[sizes > SMALL_BUCKET], sizes[sizes > SMALL_BUCKET]):
        members = order[start : start + size]
        i, j = np.triu_indices(size, 1)
        near = _distance(hashes[members[i]], hashes[members[j]]) <= k
        found.append(np.stack([members[i][near], members[j][near]], axis=1))
    small = np.repeat(sizes <= SMALL_BUCKET, sizes)
    for shift in range(1, min(SMALL_BUCKET, int(sizes.max(initial=1)))):
        same = (keys[:-shift] == keys[shift:]) & small[:-shift]
        if not same.any():
            break
        a, b = order[:-shift][same], order[shift:][same]
        near = _distance(hashes[a], hashes[b]) <= k
        found.append(np.stack([a[near], b[near]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def near_pairs(hashes: np.ndarray, k: int, levels: int | None = None) -> np.ndarray:
    """Every pair (i < j) of distinct hashes within Hamming distance k, once, as an (m, 2) array."""
    if levels is None:  # a second level once one level's buckets would hold more than ~8 hashes
        levels = 1 if len(hashes) >> (HASH_BITS // (k + 1)) < 8 else 2
    pairs = np.concatenate([_bucket_pairs(hashes, mask, k) for mask in band_keys(k, levels)]).astype(np.int64)
    low, high = pairs.min(axis=1), pairs.max(axis=1)
    codes = np.unique(low * len(hashes) + high)  # one int per pair: a cheap way to drop repeats
    return np.stack([codes // len(hashes), codes % len(hashes)], axis=1)


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """A component label per node 0..n-1 of the undirected graph given by `pairs` (scipy)."""
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def duplicate_groups(hashes: np.ndarray, k: int) -> np.ndarray:
    """A group label per hash: equal labels are exact or near duplicates (chains of pairs within k)."""
    unique, inverse = np.unique(np.asarray(hashes, dtype=np.uint64), return_inverse=True)
    return _components(len(unique), near_pairs(unique, k))[inverse]


# --- the same steps on hex-string hashes, as the Beam pipeline runs them (pipelines/dedup.py) ---------


@lru_cache
def _band_masks(k: int) -> tuple[int, ...]:
    return tuple(band_keys(k, 1))


def bucket_keys(phash: str, k: int) -> list[str]:
    """The k+1 buckets of one hash, as "band:value" strings: two hashes within distance k share at least
    one (pigeonhole)."""
    value = int(phash, 16)
    return [f"{band}:{value & mask:016x}" for band, mask in enumerate(_band_masks(k))]


def bucket_pairs(phashes: list[str], k: int) -> list[tuple[str, str, int]]:
    """The pairs (a < b, distance) of distinct hashes in one bucket within distance k, verified. A large
    bucket goes through `near_pairs` too, so it costs about its size, not its size squared."""
    if len(phashes) <= SMALL_BUCKET // 4:  # a few hashes: plain Python beats numpy's set-up cost
        values = [int(h, 16) for h in phashes]
        pairs = ((i, j, (values[i] ^ values[j]).bit_count()) for i in range(len(values)) for j in range(i + 1, len(values)))
        return [(*sorted((phashes[i], phashes[j])), d) for i, j, d in pairs if d <= k]
    values = np.array([int(h, 16) for h in phashes], dtype=np.uint64)
    pairs = near_pairs(values, k)
    distances = _distance(values[pairs[:, 0]], values[pairs[:, 1]])
    return [(*sorted((phashes[i], phashes[j])), int(d)) for (i, j), d in zip(pairs.tolist(), distances.tolist())]


def component_roots(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """For every hash in `pairs`, its component's root: the smallest hash of the component."""
    nodes = sorted({h for pair in pairs for h in pair})
    index = {h: i for i, h in enumerate(nodes)}
    edges = np.array([[index[a], index[b]] for a, b in pairs], dtype=np.int64).reshape(-1, 2)
    labels = _components(len(nodes), edges)
    roots: dict[int, str] = {}
    for h, label in zip(nodes, labels):  # nodes are sorted, so the first seen per label is its smallest
        roots.setdefault(label, h)
    return {h: roots[label] for h, label in zip(nodes, labels)}


def preference(caption: str, uid: str) -> tuple[int, str]:
    """Sort key of the keeper rule: the longest caption first (Qwen-VL keeps the longest caption of an
    image); ties go to the smallest uid, so reruns keep the same pair."""
    return -len(caption), uid
