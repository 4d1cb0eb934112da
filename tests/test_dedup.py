import numpy as np
import pytest

from filters.dedup import duplicate_groups, keep_longest_caption, near_pairs


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


def test_keep_longest_caption_ties_to_smallest_uid():
    groups = np.array([0, 0, 0, 1, 2, 2])
    captions = ["a dog", "a dog on a red sofa", "a dog on a sofa", "alone", "same len", "same len"]
    uids = ["u1", "u2", "u3", "u4", "u6", "u5"]
    assert keep_longest_caption(groups, captions, uids).tolist() == [False, True, False, True, False, True]
