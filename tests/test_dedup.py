import numpy as np
import pytest

from filters.dedup import (
    band_keys,
    bucket_keys,
    bucket_pairs,
    duplicate_groups,
    hash_distance,
    key_permutations,
    near_pairs,
    permute,
    phash_int64,
    preference,
    unpermute,
)


def brute_force(hashes: np.ndarray, k: int) -> set[tuple[int, int]]:
    found = set()
    for i in range(len(hashes)):
        d = np.bitwise_count(hashes[i] ^ hashes[i + 1 :])
        found |= {(i, i + 1 + j) for j in np.flatnonzero(d <= k)}
    return found


def flip(h: int, bits) -> int:
    for b in bits:
        h ^= 1 << b
    return h


def planted(seed: int, n: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = [int(x) for x in rng.integers(0, 2**63, n, dtype=np.int64)]
    near = [flip(h, rng.choice(64, size=rng.integers(1, k + 2), replace=False)) for h in base[: n // 4]]
    return np.array(base + near, dtype=np.uint64)


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("k", [2, 4, 6])
def test_near_pairs_equal_brute_force(k, levels):
    hashes = planted(k, 800, k)
    found = {tuple(p) for p in near_pairs(hashes, k, levels=levels)}
    expected = brute_force(hashes, k)
    assert found == expected
    assert len(expected) >= 100  # the planted pairs within k are there to be found


def masks_as_first_defined(k: int, levels: int) -> list[int]:
    """The bucket masks as the first version spelled them out: k+1 contiguous bands, and for levels=2 each
    band with each of k+1 contiguous runs of the remaining bits."""

    def bands(bits, parts):
        edges = np.linspace(0, len(bits), parts + 1).round().astype(int)
        return [sum(1 << b for b in bits[lo:hi]) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]

    masks = []
    for band in bands(list(range(64)), k + 1):
        rest = [b for b in range(64) if not band >> b & 1]
        masks += [band] if levels == 1 else [band | sub for sub in bands(rest, k + 1)]
    return masks


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("k", [1, 2, 4, 6, 9])
def test_permutations_put_each_key_on_top_and_keep_distances(k, levels):
    rng = np.random.default_rng(k)
    x = rng.integers(0, 2**63, 2000, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    y = x ^ (np.uint64(1) << rng.integers(0, 64, len(x)).astype(np.uint64)) ^ (np.uint64(1) << np.uint64(63))
    singles = np.uint64(1) << np.arange(64, dtype=np.uint64)
    keys = key_permutations(k, levels)
    assert band_keys(k, levels) == masks_as_first_defined(k, levels)
    for key, mask in zip(keys, band_keys(k, levels)):
        assert np.array_equal(unpermute(permute(x, key), key), x)
        assert np.array_equal(np.bitwise_count(permute(x, key) ^ permute(y, key)), np.bitwise_count(x ^ y))
        moved = permute(singles, key)  # a permutation of the bits: each bit to its own bit
        assert np.all(np.bitwise_count(moved) == 1) and np.bitwise_or.reduce(moved) == np.uint64(2**64 - 1)
        top = (1 << 64) - (1 << (64 - key.width))
        assert int(permute(np.array([mask], dtype=np.uint64), key)[0]) == top  # the key's bits on top
    assert len(keys) == (k + 1) ** levels


@pytest.mark.parametrize("levels", [1, 2])
def test_repeated_hashes_and_hashes_equal_but_for_low_bits(levels):
    # exact copies pair up with each other; hashes equal in their high bits tie in the position sort
    rng = np.random.default_rng(3)
    base = planted(5, 200, 3)
    low = base[:40] ^ rng.integers(1, 256, 40).astype(np.uint64)
    hashes = np.concatenate([base, base[:30], base[:5], low])
    hashes = hashes[rng.permutation(len(hashes))]
    assert {tuple(p) for p in near_pairs(hashes, 3, levels=levels)} == brute_force(hashes, 3)


def test_duplicate_groups_are_the_components_of_all_pairs_numbered_by_smallest_hash():
    rng = np.random.default_rng(4)
    hashes = planted(6, 400, 4)
    chain = [flip(0x00FF_00FF_00FF_00FF, range(i)) for i in range(0, 40, 3)]  # each within 3 of the next
    hashes = np.concatenate([hashes, hashes[:20], np.array(chain, dtype=np.uint64)])
    hashes = hashes[rng.permutation(len(hashes))]
    parent = list(range(len(hashes)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in brute_force(hashes, 4):
        parent[root(i)] = root(j)
    groups = duplicate_groups(hashes, 4)
    expected = {}
    for i in range(len(hashes)):
        expected.setdefault(root(i), []).append(i)
    assert sorted(sorted(m) for m in expected.values()) == sorted(
        sorted(np.flatnonzero(groups == g).tolist()) for g in np.unique(groups)
    )
    smallest = [min(hashes[groups == g]) for g in range(len(expected))]  # labels 0, 1, ... by smallest hash
    assert smallest == sorted(smallest)


def test_large_bucket_is_compared_on_its_own():
    # 300 distinct hashes that all share their low 40 bits: one huge bucket on every band over them
    rng = np.random.default_rng(1)
    high = rng.integers(0, 2**24, 300, dtype=np.int64).astype(np.uint64) << np.uint64(40)
    hashes = np.unique(high | np.uint64(0x12345_6789A))
    assert {tuple(p) for p in near_pairs(hashes, 4)} == brute_force(hashes, 4)


def test_distance_exactly_k_joins_and_k_plus_one_does_not():
    a = 0x0F0F_0F0F_0F0F_0F0F
    hashes = np.array([a, flip(a, [1, 9, 17, 33]), flip(a, [2, 10, 18, 34, 50]), a], dtype=np.uint64)
    groups = duplicate_groups(hashes, 4)
    assert groups[0] == groups[1] == groups[3]  # distance 4, and an exact copy
    assert groups[2] != groups[0]  # distance 5


def test_chains_form_one_group():
    a = 0
    hashes = np.array([a, flip(a, [0, 1, 2]), flip(a, [0, 1, 2, 3, 4, 5]), 2**63 - 1], dtype=np.uint64)
    groups = duplicate_groups(hashes, 3)
    assert groups[0] == groups[1] == groups[2] != groups[3]


def test_preference_keeps_longest_caption_then_smallest_uid():
    members = [("a dog", "u1"), ("a dog on a red sofa", "u3"), ("a dog on a sofa", "u2"), ("a cat on a red sofa", "u0")]
    assert min(members, key=lambda m: preference(len(m[0]), m[1])) == ("a cat on a red sofa", "u0")
    assert sorted(members, key=lambda m: preference(len(m[0]), m[1]))[1:] == [("a dog on a red sofa", "u3"), ("a dog on a sofa", "u2"), ("a dog", "u1")]


def test_bucket_keys_share_a_band_within_k():
    a = 0x0123_4567_89AB_CDEF
    near = flip(a, [0, 13, 26, 39])  # one flip in each of four of the five bands
    far = flip(a, [0, 13, 26, 39, 52])  # one flip in every band
    keys = {h: set(bucket_keys(h, 4)) for h in (a, near, far)}
    assert len(keys[a]) == 5
    assert keys[a] & keys[near] == {(0x0123 >> 3) * 5 + 4}  # band 4: bits 51-63, shifted down
    assert bucket_keys(phash_int64("8000000000000000"), 4) == [0, 1, 2, 3, 4096 * 5 + 4]  # the sign is bit 63
    assert keys[a] & keys[far] == set()


def test_bucket_pairs_verify_the_distance():
    a = 0x0F0F_0F0F_0F0F_0F0F
    hashes = [a, flip(a, [1, 9, 17, 33]), flip(a, [2, 10, 18, 34, 50])]
    assert bucket_pairs(hashes, 4) == [(hashes[1], hashes[0], 4)]  # a < b
    assert bucket_pairs(hashes[:1], 4) == []
    negative = [phash_int64("ffffffffffffffff"), phash_int64("7fffffffffffffff")]  # differ in the sign bit only
    assert bucket_pairs(negative, 4) == [(-1, 2**63 - 1, 1)]
    many = hashes + negative + list(range(1, 40))  # a bucket large enough for the numpy path
    assert (hashes[1], hashes[0], 4) in bucket_pairs(many, 4) and (-1, 2**63 - 1, 1) in bucket_pairs(many, 4)
    assert sorted(bucket_pairs(many, 4)) == sorted(bucket_pairs(many[:5], 4) + bucket_pairs(many[5:], 4) + [
        (*sorted((a, b)), hash_distance(a, b)) for a in many[:5] for b in many[5:] if hash_distance(a, b) <= 4
    ])


def test_phash_column_is_the_hashs_bits_as_a_signed_64_bit_integer():
    cases = {"0000000000000000": 0, "00000000000000ff": 255, "7fffffffffffffff": 2**63 - 1, "8000000000000000": -(2**63), "ffffffffffffffff": -1}
    assert {h: phash_int64(h) for h in cases} == cases
    assert hash_distance(phash_int64("f0000000000000ff"), phash_int64("f0000000000000fe")) == 1  # the distance survives the sign
    assert hash_distance(phash_int64("ffffffffffffffff"), phash_int64("0000000000000000")) == 64
