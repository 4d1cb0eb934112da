"""Near-duplicate images by 64-bit pHash, found without comparing all pairs: plain numpy.

Pigeonhole: two hashes within Hamming distance k agree exactly on at least one of k+1 disjoint bands of
their bits. Inside such a band's bucket the other bits still differ in at most k places, so splitting
those bits into k+1 sub-bands gives the same guarantee again. With many hashes, one level of bands makes
buckets too large to compare (10M hashes over 13-bit bands: ~1,200 per bucket), so the key is a band
plus a sub-band of the remaining bits ((k+1)^2 keys per hash, buckets of a few): no pair within k is
missed, and every candidate is verified with its full distance.

Each key is a bit permutation that moves the key's bits to the top of the word: a 64-bit rotation puts
the band on top, and a rotation of the remaining low bits puts the sub-band right below it. Sorting the
permuted values themselves (numpy's vectorized sort; no argsort, no gather) makes each bucket a run of
neighbours, and a permutation keeps Hamming distances (popcount(a ^ b) is the same after it), so pairs
are verified on the permuted values and only the few found are mapped back. Each band is sorted once
over all hashes; then, block by cache-sized block (never splitting a run of one band value), each of
its sub-band keys rotates the block and sorts it in parts, and compares neighbours there, so the work
per key grows with the number of hashes. A pair is kept only under the first key it shares, so no key
repeats another's pairs and nothing needs deduplicating. Identical hashes collapse first, so blank
images that share one hash never form a bucket; a bucket that is still large (a dense cluster of
distinct but similar hashes) is compared all-pairs on its own, in blocks, so it costs its size squared
and never the whole run. Duplicates are the connected components of the verified pairs.
"""

from functools import lru_cache
from itertools import groupby
from typing import NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_BITS = 64
SMALL_BUCKET = 64  # pairs in a bucket are found by comparing sorted neighbours up to this far apart
BLOCK = 1 << 18  # values handled per sub-band key at a time: 2 MB, that stay in cache for all its steps
CHUNK = 1 << 15  # values sorted at a time within a block (256 KB)
ALL_PAIRS_BLOCK = 1 << 20  # comparisons per block when a large bucket is compared all-pairs
WORD = (1 << HASH_BITS) - 1


class Key(NamedTuple):
    """A bucket key as a bit permutation: rotate the word left by `rotate` (the band on top, `band`
    bits wide), then its low 64 - `band` bits left by `low_rotate` (the sub-band right below the band).
    The key is then the top `width` bits."""

    rotate: int
    band: int
    low_rotate: int
    width: int


def _runs(size: int, parts: int) -> list[tuple[int, int]]:
    """range(size) split into `parts` contiguous runs (lo, hi), as even as rounding allows."""
    edges = np.linspace(0, size, parts + 1).round().astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def key_permutations(k: int, levels: int) -> list[Key]:
    """The keys in order: k+1 bands, or for levels=2 each band with each of k+1 sub-bands of the rest."""
    keys = []
    for lo, hi in _runs(HASH_BITS, k + 1):
        rotate, band = (HASH_BITS - hi) % HASH_BITS, hi - lo  # bit hi-1 goes to bit 63
        rest = HASH_BITS - band  # after the rotation, the rest in their order from bit 0, starting at bit hi
        if levels == 1 or not rest:
            keys.append(Key(rotate, band, 0, band))
            continue
        # the rest's bit number t (counted over bits 0..lo-1, hi..63) now sits at low bit (t - lo) mod rest
        keys += [Key(rotate, band, (lo - s1) % rest, band + s1 - s0) for s0, s1 in _runs(rest, k + 1)]
    return keys


def _rotate(x: np.ndarray, r: int, bits: int = HASH_BITS) -> np.ndarray:
    """x with its low `bits` bits rotated left by r (its higher bits kept); x itself when r is 0."""
    if r % bits == 0:
        return x
    if bits == HASH_BITS:
        out = x << np.uint64(r)
        out |= x >> np.uint64(HASH_BITS - r)
        return out
    mask = np.uint64((1 << bits) - 1)
    low = x & mask
    out = x ^ low  # the bits above, kept
    out |= (low << np.uint64(r)) & mask
    low >>= np.uint64(bits - r)
    out |= low
    return out


def permute(values: np.ndarray, key: Key) -> np.ndarray:
    """The values with `key`'s bits moved to the top. A bit permutation: Hamming distances are kept."""
    x = _rotate(np.asarray(values, dtype=np.uint64), key.rotate)
    return _rotate(x, key.low_rotate, HASH_BITS - key.band) if key.band < HASH_BITS else x


def unpermute(values: np.ndarray, key: Key) -> np.ndarray:
    """The inverse of `permute`: unpermute(permute(x, key), key) == x."""
    rest = HASH_BITS - key.band
    x = _rotate(np.asarray(values, dtype=np.uint64), -key.low_rotate % rest, rest) if rest else values
    return _rotate(x, -key.rotate % HASH_BITS)


def _top(width: int) -> int:
    """The mask of the top `width` bits of a word."""
    return WORD ^ ((1 << (HASH_BITS - width)) - 1)


def _key_mask(key: Key) -> int:
    """The bits of a key in the original bit order, as a mask."""
    return int(unpermute(np.array([_top(key.width)], dtype=np.uint64), key)[0])


def band_keys(k: int, levels: int) -> list[int]:
    """The masks whose equal values bucket candidate pairs: k+1 bands, or band x sub-band for levels=2."""
    return [_key_mask(key) for key in key_permutations(k, levels)]


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b))


def _slices(v: np.ndarray, band: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) slices of the sorted `v`, about `size` long, that never split a run of values whose
    top `band` bits are equal (a longer run is a slice of its own)."""
    top = np.uint64(_top(band))
    starts = np.searchsorted(v, v[size::size] & top)  # the start of the run holding every size-th value
    edges = sorted({0, len(v), *starts.tolist()})
    return list(zip(edges[:-1], edges[1:]))


def _all_pairs(values: np.ndarray, k: int, apart: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of `values` within distance k whose positions are at least `apart` apart, in blocks of rows."""
    found_a, found_b = [values[:0]], [values[:0]]
    rows = max(1, ALL_PAIRS_BLOCK // len(values))
    for first in range(0, len(values) - apart, rows):
        i = np.arange(first, min(first + rows, len(values) - apart))
        near = _distance(values[i, None], values[None, :]) <= k
        near &= np.arange(len(values)) >= (i + apart)[:, None]
        p, q = np.nonzero(near)
        found_a.append(values[i[p]])
        found_b.append(values[q])
    return np.concatenate(found_a), np.concatenate(found_b)


def _sorted_pairs(c: np.ndarray, width: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (a, b) of the sorted values `c` that share their top `width` bits and lie within distance
    k. A bucket is a run of neighbours: compare each value with the next and the one after over the whole
    slice (most buckets hold one, two or three values), then, only where a bucket goes on, with the one
    after that, and so on. A bucket longer than SMALL_BUCKET is finished all-pairs, on its own."""
    below = np.uint64(1 << (HASH_BITS - width))  # values sharing their top `width` bits xor below this
    d = c[1:] ^ c[:-1]
    same = np.zeros(len(c) + 1, dtype=bool)  # same[i]: i and i + 1 share the key (never the last i)
    np.less(d, below, out=same[: len(c) - 1])
    found_a, found_b = [], []
    ahead = same
    for shift in (1, 2):  # ahead[i]: i and i + shift share the key
        if shift == 2:
            ahead = same[:-1] & same[1:]
            d = c[2:] ^ c[:-2]
        near = np.flatnonzero(np.bitwise_count(d) <= k)
        near = near[ahead[near]]
        found_a.append(c[near])
        found_b.append(c[near + shift])
    live = np.flatnonzero(ahead[:-1] & same[2:])  # i that shares the key with i + shift, from shift 3 on
    for shift in range(3, SMALL_BUCKET):
        if not len(live):
            break
        partner = live + shift
        near = np.bitwise_count(c[live] ^ c[partner]) <= k
        found_a.append(c[live[near]])
        found_b.append(c[partner[near]])
        live = live[same[partner]]
    rest = below - np.uint64(1)
    for key in np.unique(c[live] & ~rest) if len(live) else ():  # the buckets longer than SMALL_BUCKET
        bucket = c[np.searchsorted(c, key) : np.searchsorted(c, key | rest, side="right")]
        a, b = _all_pairs(bucket, k, SMALL_BUCKET)
        found_a.append(a)
        found_b.append(b)
    return np.concatenate(found_a), np.concatenate(found_b)


@lru_cache
def _key_plan(k: int, levels: int) -> tuple[list[Key], list[np.ndarray]]:
    """The keys, and for each the masks of the keys before it, permuted like its values."""
    keys = key_permutations(k, levels)
    masks = np.array([_key_mask(key) for key in keys], dtype=np.uint64)
    return keys, [permute(masks[:i], key) for i, key in enumerate(keys)]


def _value_pairs(unique: np.ndarray, k: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of the sorted distinct hashes `unique` within distance k, once, as two arrays of hash
    values (each pair under the first key it shares)."""
    keys, earlier = _key_plan(k, levels)
    found_a, found_b = [unique[:0]], [unique[:0]]
    if len(unique) < 2:
        return found_a[0], found_b[0]
    done = 0  # keys before the current band
    buffer = np.empty_like(unique)  # every band's order in turn, in one array
    for rotate, band in groupby(keys, key=lambda key: key.rotate):
        band = list(band)
        v = unique  # sorted already: the band on top needs no rotation, no sort
        if rotate:
            for start, stop in _blocks(len(unique)):
                buffer[start:stop] = _rotate(unique[start:stop], rotate)
            buffer.sort()
            v = buffer
        pairs = [([], []) for _ in band]
        for start, stop in _slices(v, band[0].band, BLOCK):  # each block read once, for all keys of the band
            block = v[start:stop]
            parts = _slices(block, band[0].band, CHUNK)
            for key, (a, b) in zip(band, pairs):
                c = block
                if key.low_rotate:
                    c = _rotate(block, key.low_rotate, HASH_BITS - key.band)
                    for part_start, part_stop in parts:  # the band's runs stay in place: sort each part
                        c[part_start:part_stop].sort()
                pa, pb = _sorted_pairs(c, key.width, k)
                a.append(pa)
                b.append(pb)
        for key, (a, b) in zip(band, pairs):
            a, b = np.concatenate(a), np.concatenate(b)
            x = a ^ b
            first = np.ones(len(x), dtype=bool)
            for mask in earlier[done]:  # a pair that shares an earlier key was found there
                first &= (x & mask) != 0
            found_a.append(unpermute(a[first], key))
            found_b.append(unpermute(b[first], key))
            done += 1
    return np.concatenate(found_a), np.concatenate(found_b)


def _blocks(n: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) blocks of BLOCK over range(n). Steps over all hashes run block by block,
    so that their temporaries stay small and in cache instead of being fresh 80 MB arrays (10M hashes)."""
    return [(start, min(start + BLOCK, n)) for start in range(0, n, BLOCK)]


def _sort_with_positions(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hashes sorted, and the position each came from. Two plain sorts instead of argsort + gather:
    one of the values, one of their high bits with the position in the low bits. Both agree except inside
    a run of equal high bits, which only the second orders by position: those few are re-sorted by value."""
    n = len(hashes)
    bits = max(1, (n - 1).bit_length())
    low = np.uint64((1 << bits) - 1)
    tagged = np.empty(n, dtype=np.uint64)
    for start, stop in _blocks(n):
        tagged[start:stop] = (hashes[start:stop] & ~low) | np.arange(start, stop, dtype=np.uint64)
    tagged.sort()
    tie = [np.zeros(0, dtype=np.int64)]  # i where i and i + 1 share their high bits
    for start, stop in _blocks(n - 1):
        tie.append(start + np.flatnonzero((tagged[start + 1 : stop + 1] ^ tagged[start:stop]) <= low))
    tie = np.concatenate(tie)
    tagged &= low
    positions = tagged.view(np.int64)
    if len(tie):
        in_run = np.sort(np.concatenate([tie, tie + 1]))
        in_run = in_run[np.r_[True, in_run[1:] != in_run[:-1]]]
        moved = positions[in_run]  # by position within each run; runs in the order of their values
        positions[in_run] = moved[np.argsort(hashes[moved], kind="stable")]
    return np.sort(hashes), positions


def _levels(n: int, k: int, levels: int | None) -> int:
    """A second level once one level's buckets would hold more than ~8 hashes."""
    if levels is None:
        return 1 if n >> (HASH_BITS // (k + 1)) < 8 else 2
    return levels


def _sorted_pairs_of(values: np.ndarray, k: int, levels: int | None):
    """For the sorted hashes `values`: `first`, True where a run of equal hashes starts; `nodes`, the
    distinct hashes (by number, 0 for the smallest) that have a pair within k, sorted; and `edges`, each
    pair of distinct hashes within k as two indices into `nodes`."""
    first = np.ones(len(values), dtype=bool)
    np.not_equal(values[1:], values[:-1], out=first[1:])
    unique = values if first.all() else values[first]
    a, b = _value_pairs(unique, k, _levels(len(unique), k, levels))
    ends, end_node = np.unique(np.concatenate([a, b]), return_inverse=True)
    return first, np.searchsorted(unique, ends), end_node.reshape(2, -1).T


def _copied(first: np.ndarray) -> np.ndarray:
    """For each repeat among the sorted hashes (`first` False), in order: the number of the distinct
    hash it repeats."""
    copies = np.flatnonzero(~first)
    return copies - np.arange(1, len(copies) + 1)


def _run_starts(copied: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """Where the run of each distinct hash number starts among the sorted hashes: its number plus the
    repeats before it (one past the last number gives the end)."""
    return numbers + np.searchsorted(copied, numbers)


def near_pairs(hashes: np.ndarray, k: int, levels: int | None = None) -> np.ndarray:
    """Every pair (i < j) of distinct hashes within Hamming distance k, once, as an (m, 2) array."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    values, positions = _sort_with_positions(hashes)
    first, nodes, edges = _sorted_pairs_of(values, k, levels)
    copied = _copied(first)
    repeated = copied[np.r_[True, copied[1:] != copied[:-1]]] if len(copied) else copied
    runs = np.concatenate([nodes[edges], np.stack([repeated, repeated], axis=1)])  # copies pair up too
    starts = _run_starts(copied, runs)
    sizes = _run_starts(copied, runs + 1) - starts
    counts = sizes[:, 0] * sizes[:, 1]  # every hash of one run with every hash of the other
    pair = np.repeat(np.arange(len(runs)), counts)
    offset = np.arange(len(pair)) - np.repeat(np.cumsum(counts) - counts, counts)
    i = starts[pair, 0] + offset // sizes[pair, 1]
    j = starts[pair, 1] + offset % sizes[pair, 1]
    keep = (runs[pair, 0] != runs[pair, 1]) | (i < j)  # within one run, each pair once
    i, j = positions[i[keep]], positions[j[keep]]
    codes = np.sort(np.minimum(i, j) * n + np.maximum(i, j))
    return np.stack([codes // max(n, 1), codes % max(n, 1)], axis=1)


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """A component label per node 0..n-1 of the undirected graph given by `pairs` (scipy)."""
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _smallest_linked(n: int, edges: np.ndarray) -> np.ndarray:
    """Per node 0..n-1, the smallest node of its connected component. An edge whose two nodes have no
    other edge (most near-duplicate pairs) is read off directly; scipy labels the rest."""
    smallest = np.arange(n)
    alone = (np.bincount(edges.ravel(), minlength=n)[edges] == 1).all(axis=1)
    smallest[edges[alone].max(axis=1)] = edges[alone].min(axis=1)
    rest = edges[~alone]
    if len(rest):
        linked, rest = np.unique(rest.ravel(), return_inverse=True)
        component = _components(len(linked), rest.reshape(-1, 2))
        lowest = np.full(component.max() + 1, n, dtype=np.int64)
        np.minimum.at(lowest, component, linked)
        smallest[linked] = lowest[component]
    return smallest


def duplicate_groups(hashes: np.ndarray, k: int) -> np.ndarray:
    """A group label per hash: equal labels are exact or near duplicates (chains of pairs within k).
    Labels count 0, 1, ... in the order of each group's smallest hash.

    The reference implementation of the whole search in one process, which the product does not call: the
    pipeline spreads the same search over workers with bucket_keys and bucket_pairs, and joins
    the pairs into components there (pipelines/find_duplicates.py); the tests and bench/dedup.py use this one as the ground truth."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    values, positions = _sort_with_positions(hashes)
    first, nodes, edges = _sorted_pairs_of(values, k, None)
    root = nodes[_smallest_linked(len(nodes), edges)]  # per node, the smallest distinct hash of its group
    joined, root = nodes[root != nodes], root[root != nodes]  # those that join a smaller one's group
    copied = _copied(first)
    start, stop, root_start = (_run_starts(copied, numbers) for numbers in (joined, joined + 1, root))
    first[start] = False  # now True where a group starts, over the sorted hashes
    label = np.cumsum(first, out=values.view(np.int64))  # the sorted hashes are done with: reuse them
    label -= 1
    lengths = stop - start  # a joined hash and its copies take the label of their group
    at = np.repeat(start - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    label[at] = np.repeat(label[root_start], lengths)
    labels = np.empty(len(values), dtype=np.int64)
    labels[positions] = label
    return labels


# --- the same steps on single hashes, as the Beam pipeline runs them (pipelines/find_duplicates.py) ------------


def phash_int64(phash: str) -> int:
    """A pHash's 16 hex digits as the signed 64-bit integer with the same bits: curated/'s `phash` column,
    which Spark, DuckDB and pandas read as a plain BIGINT (bit_count(a XOR b) is the distance). The
    pipeline's dedup works on these integers too: Beam encodes one in 10 or 11 bytes, the hex in 17."""
    value = int(phash, 16)
    return value - (1 << HASH_BITS) if value >> (HASH_BITS - 1) else value


def hash_distance(a: int, b: int) -> int:
    """The Hamming distance of two hashes given as phash_int64 integers (the sign is just the top bit)."""
    return ((a ^ b) & WORD).bit_count()


@lru_cache
def _bands(k: int) -> tuple[tuple[int, int], ...]:
    """(mask, shift) of each of the k+1 bands: the band's bits, and where its lowest bit sits."""
    return tuple((mask, (mask & -mask).bit_length() - 1) for mask in band_keys(k, 1))


def bucket_keys(phash: int, k: int) -> list[int]:
    """The k+1 buckets of one hash (a phash_int64 integer): two hashes within distance k share at least one
    (pigeonhole). A bucket is a small integer, the band's bits shifted down times k+1 plus the band's
    number (3 bytes on the wire for k=4, whose bands are 12-13 bits wide)."""
    return [((phash & mask) >> shift) * (k + 1) + band for band, (mask, shift) in enumerate(_bands(k))]


def bucket_pairs(phashes: list[int], k: int) -> list[tuple[int, int, int]]:
    """The pairs (a < b, distance) of distinct hashes (phash_int64 integers) in one bucket within distance
    k, verified. A large bucket goes through `near_pairs` too, so it costs about its size, not its size
    squared."""
    if len(phashes) <= SMALL_BUCKET // 4:  # a few hashes: plain Python beats numpy's set-up cost
        pairs = ((a, b, hash_distance(a, b)) for i, a in enumerate(phashes) for b in phashes[i + 1 :])
        return [(*sorted((a, b)), d) for a, b, d in pairs if d <= k]
    values = np.array(phashes, dtype=np.int64).view(np.uint64)
    pairs = near_pairs(values, k)
    distances = _distance(values[pairs[:, 0]], values[pairs[:, 1]])
    return [(*sorted((phashes[i], phashes[j])), int(d)) for (i, j), d in zip(pairs.tolist(), distances.tolist())]


def preference(caption_chars: int, uid: str) -> tuple[int, str]:
    """Sort key of the keeper rule, from the caption's length in characters: the longest caption first
    (Qwen-VL keeps the longest caption of an image); ties go to the smallest uid, so reruns keep the same
    pair."""
    return -caption_chars, uid
