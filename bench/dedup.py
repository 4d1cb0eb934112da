"""Near-duplicate search by pHash banding: recall against brute force, and time as the data grows.

    python bench/dedup.py [--k 4] [--sizes 1000000 10000000] [--repeats 5] [--old]

Recall: 50,000 hashes with planted near duplicates (1 to k+1 bits flipped), banding against all-pairs
brute force in the same run (the baseline; recall must be 1.0). Growth: time of `duplicate_groups` on
synthetic uniform hashes with 10% planted near duplicates, the best of --repeats runs with the sizes
taking turns (the machine is shared), and its ratio between sizes (target: at most 12x for 10x the
data). --old also times the first version (argsort + gather per key, kept below as the baseline) once
on the same hashes and checks that both give the same groups. Uniform hashes are kinder than real
pHashes, which cluster; the large-bucket path (tests/test_dedup.py) is what keeps clusters bounded.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from filters.dedup import HASH_BITS, SMALL_BUCKET, band_keys, duplicate_groups, near_pairs  # noqa: E402


def planted(n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) | (rng.integers(0, 2, n).astype(np.uint64) << np.uint64(63))
    copies = base[: n // 10].copy()
    for _ in range(k + 1):  # each copy gets 1 to k+1 bit flips (some land on the same bit)
        bits = rng.integers(0, 64, len(copies)).astype(np.uint64)
        copies ^= np.where(rng.random(len(copies)) < 0.6, np.uint64(1) << bits, np.uint64(0))
    return np.concatenate([base, copies])


def brute_force_pairs(hashes: np.ndarray, k: int) -> set[tuple[int, int]]:
    found = set()
    for i in range(len(hashes) - 1):
        near = np.flatnonzero(np.bitwise_count(hashes[i] ^ hashes[i + 1 :]) <= k)
        found.update((i, i + 1 + j) for j in near)
    return found


def old_bucket_pairs(hashes: np.ndarray, mask: int, k: int) -> np.ndarray:
    """The first version's bucket step: argsort of the masked keys, then gathers through the order."""
    keys = hashes & np.uint64(mask)
    order = np.argsort(keys)
    keys = keys[order]
    found = []
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    for start, size in zip(starts[sizes > SMALL_BUCKET], sizes[sizes > SMALL_BUCKET]):
        members = order[start : start + size]
        i, j = np.triu_indices(size, 1)
        near = np.bitwise_count(hashes[members[i]] ^ hashes[members[j]]) <= k
        found.append(np.stack([members[i][near], members[j][near]], axis=1))
    small = np.repeat(sizes <= SMALL_BUCKET, sizes)
    for shift in range(1, min(SMALL_BUCKET, int(sizes.max(initial=1)))):
        same = (keys[:-shift] == keys[shift:]) & small[:-shift]
        if not same.any():
            break
        a, b = order[:-shift][same], order[shift:][same]
        near = np.bitwise_count(hashes[a] ^ hashes[b]) <= k
        found.append(np.stack([a[near], b[near]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def old_duplicate_groups(hashes: np.ndarray, k: int) -> np.ndarray:
    """The first version of `duplicate_groups` (the baseline of --old)."""
    unique, inverse = np.unique(hashes, return_inverse=True)
    levels = 1 if len(unique) >> (HASH_BITS // (k + 1)) < 8 else 2
    pairs = np.concatenate([old_bucket_pairs(unique, mask, k) for mask in band_keys(k, levels)]).astype(np.int64)
    codes = np.unique(pairs.min(axis=1) * len(unique) + pairs.max(axis=1))
    n = len(unique)
    graph = coo_matrix((np.ones(len(codes), dtype=np.int8), (codes // n, codes % n)), shape=(n, n))
    return connected_components(graph, directed=False)[1][inverse]


def best_times(function, datasets: dict[int, np.ndarray], k: int, repeats: int) -> dict[int, tuple[float, np.ndarray]]:
    """The best of `repeats` times per size, the sizes taking turns so that all see the same load."""
    best = {}
    for _ in range(repeats):
        for n, hashes in datasets.items():
            started = time.perf_counter()
            groups = function(hashes, k)
            seconds = time.perf_counter() - started
            best[n] = min(best.get(n, (seconds, groups)), (seconds, groups), key=lambda result: result[0])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=5, help="time each size this many times, keep the best")
    parser.add_argument("--old", action="store_true", help="also time the first version (argsort + gather)")
    args = parser.parse_args()

    hashes = np.unique(planted(46_000, args.k))[:50_000]
    started = time.perf_counter()
    expected = brute_force_pairs(hashes, args.k)
    brute = time.perf_counter() - started
    started = time.perf_counter()
    found = {tuple(p) for p in near_pairs(hashes, args.k)}
    banded = time.perf_counter() - started
    recall = len(found & expected) / len(expected)
    print(f"recall on {len(hashes):,} hashes, k={args.k}: {recall:.4f} ({len(found & expected):,} of {len(expected):,} pairs; {len(found - expected)} extra)")
    print(f"  brute force {brute:.1f} s (baseline), banding {banded:.3f} s: {brute / banded:,.0f}x faster")

    datasets = {n: planted(int(n / 1.1), args.k)[:n] for n in args.sizes}
    timed = best_times(duplicate_groups, datasets, args.k, args.repeats)
    old = best_times(old_duplicate_groups, datasets, args.k, 1) if args.old else {}
    previous = None
    for n, (seconds, groups) in timed.items():
        growth = f", {seconds / previous[1]:.1f}x the time for {n / previous[0]:.0f}x the data" if previous else ""
        print(f"{n:,} hashes: {seconds:.2f} s (best of {args.repeats}), {len(np.unique(groups)):,} groups{growth}")
        if n in old:
            old_seconds, old_groups = old[n]
            same = np.array_equal(groups, old_groups)
            print(f"  first version (argsort + gather): {old_seconds:.2f} s, {old_seconds / seconds:.1f}x the time;", end=" ")
            print(f"same groups: {same}")
        previous = (n, seconds)

if __name__ == "__main__":
    main()
