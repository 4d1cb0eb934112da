"""Near-duplicate search by pHash banding: recall against brute force, and time as the data grows.

    python bench/dedup.py [--k 4] [--sizes 1000000 10000000]

Recall: 50,000 hashes with planted near duplicates (1 to k+1 bits flipped), banding against all-pairs
brute force in the same run (the baseline; recall must be 1.0). Growth: time of `duplicate_groups` on
synthetic uniform hashes with 10% planted near duplicates, and its ratio between sizes (target: at most
12x for 10x the data). Uniform hashes are kinder than real pHashes, which cluster; the large-bucket path
(tests/test_dedup.py) is what keeps clusters bounded.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from filters.dedup import duplicate_groups, near_pairs  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
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

    previous = None
    for n in args.sizes:
        hashes = planted(int(n / 1.1), args.k)[:n]
        started = time.perf_counter()
        groups = duplicate_groups(hashes, args.k)
        seconds = time.perf_counter() - started
        growth = f", {seconds / previous[1]:.1f}x the time for {n / previous[0]:.0f}x the data" if previous else ""
        print(f"{n:,} hashes: {seconds:.1f} s, {len(np.unique(groups)):,} groups{growth}")
        previous = (n, seconds)


if __name__ == "__main__":
    main()
