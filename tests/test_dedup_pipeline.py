"""pipelines/find_duplicates.py in a real Beam pipeline against a brute-force answer."""

import json
import random

import apache_beam as beam

from filters.dedup import phash_int64, preference
from pipelines.find_duplicates import FindDuplicates, Member, duplicate_detail, duplicates_in_group, member, members_of


def brute_force_duplicates(rows: list[dict], k: int) -> dict[str, str]:
    """uid -> keeper uid, by union-find over every pair of rows."""
    parent = list(range(len(rows)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            if (int(rows[i]["phash"], 16) ^ int(rows[j]["phash"], 16)).bit_count() <= k:
                parent[root(i)] = root(j)
    groups: dict[int, list[dict]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(root(i), []).append(row)
    found = {}
    for members in groups.values():
        keeper = min(members, key=lambda r: preference(len(r["caption"]), r["uid"]))
        found.update({r["uid"]: keeper["uid"] for r in members if r is not keeper})
    return found


def planted_rows(seed: int = 0, originals: int = 300) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(originals):
        value = rng.getrandbits(64)
        image = f"image {i}".encode()
        rows.append({"uid": f"o{i:04d}", "phash": f"{value:016x}", "caption": "x" * rng.randint(5, 40), "image": image})
        for j in range(rng.choice([0, 0, 1, 2])):  # near copies: 1 to 4 bits flipped
            near = value
            for bit in rng.sample(range(64), rng.randint(1, 4)):
                near ^= 1 << bit
            rows.append({"uid": f"n{i:04d}{j}", "phash": f"{near:016x}", "caption": "y" * rng.randint(5, 40), "image": image + b"!"})
        if rng.random() < 0.2:  # an exact copy of the bytes
            rows.append({"uid": f"e{i:04d}", "phash": f"{value:016x}", "caption": "z" * rng.randint(5, 40), "image": image})
    # blank images: many rows, one hash
    rows += [{"uid": f"b{i:04d}", "phash": "0" * 16, "caption": "blank " * (i % 7 + 1), "image": b"blank"} for i in range(50)]
    return rows


def run_find_duplicates(rows: list[dict], k: int, tmp_path) -> dict[str, str]:
    """uid -> rejected/'s detail of each duplicate found (duplicate_detail of the keeper and distance that
    FindDuplicates gave)."""
    out = tmp_path / f"found-{k}.jsonl"
    with beam.Pipeline("FnApiRunner") as p:
        curated = p | beam.Create(rows) | beam.Map(lambda row: {**row, "phash": phash_int64(row["phash"])})  # as curate() writes it
        found = curated | beam.Map(member) | FindDuplicates(k)
        found | beam.MapTuple(lambda m, keeper, distance: json.dumps((m.uid, keeper, distance))) | beam.io.WriteToText(str(out), shard_name_template="")
    found = [json.loads(line) for line in out.read_text().splitlines()]
    return {uid: duplicate_detail(keeper, distance) for uid, keeper, distance in found}


def test_finds_every_planted_duplicate_and_keeps_the_longest_caption(tmp_path):
    rows = planted_rows()
    found = run_find_duplicates(rows, 4, tmp_path)
    expected = brute_force_duplicates(rows, 4)
    assert len(expected) > 150
    assert {uid: detail.split(" of ")[1].split(" ")[0] for uid, detail in found.items()} == expected
    by_uid = {r["uid"]: r for r in rows}
    for uid, detail in found.items():
        keeper = by_uid[expected[uid]]
        if by_uid[uid]["image"] == keeper["image"]:
            assert detail == f"exact duplicate of {keeper['uid']}"
        else:
            distance = (int(by_uid[uid]["phash"], 16) ^ int(keeper["phash"], 16)).bit_count()
            assert detail == f"near duplicate of {keeper['uid']} (pHash distance {distance})"
    blanks = [uid for uid in by_uid if uid.startswith("b")]
    assert sum(uid in found for uid in blanks) == 49  # one blank image kept: the longest caption


def test_distance_zero_joins_only_identical_hashes(tmp_path):
    rows = planted_rows(seed=1, originals=100)
    found = run_find_duplicates(rows, 0, tmp_path)
    assert set(found) == set(brute_force_duplicates(rows, 0))
    assert all(detail.startswith("exact duplicate of ") for uid, detail in found.items() if not uid.startswith("b"))


def test_keeper_and_details_of_one_component():
    members = [Member("u2", 0xFF, 14, b"d1"), Member("u1", 0xFE, 5, b"d2"), Member("u3", 0xFF, 5, b"d1")]
    found = [(m.uid, keeper, distance) for m, keeper, distance in duplicates_in_group((0xFE, members))]
    assert found == [("u1", "u2", 1), ("u3", "u2", None)]  # the longest caption keeps; u3 has its bytes
    assert [duplicate_detail(keeper, distance) for _, keeper, distance in found] == ["near duplicate of u2 (pHash distance 1)", "exact duplicate of u2"]
    assert [(m.uid, keeper) for m, keeper, _ in duplicates_in_group(("n", [members[2], members[1]]))] == [("u3", "u1")]  # same length: smallest uid
    assert [(m.uid, keeper) for m, keeper, _ in duplicates_in_group(("n", [members[1], members[2]]))] == [("u3", "u1")]  # in either order


def test_a_blank_image_repeated_50000_times_and_its_near_copy(tmp_path):
    """A hot node (one pHash, 50,000 members) in a component with a near copy whose caption is longer:
    every blank is a duplicate of that copy; without it, of the blank with the longest caption."""
    blanks = [{"uid": f"b{i:05d}", "phash": "0" * 16, "caption": "x" * (i % 97 + 1), "image": b"blank"} for i in range(50_000)]
    near = {"uid": "n0", "phash": "0" * 15 + "1", "caption": "y" * 200, "image": b"blank!"}
    found = run_find_duplicates(blanks + [near], 4, tmp_path)
    assert len(found) == 50_000 and set(found.values()) == {"near duplicate of n0 (pHash distance 1)"}
    found = run_find_duplicates(blanks, 4, tmp_path)
    assert len(found) == 49_999 and "b00096" not in found and set(found.values()) == {"exact duplicate of b00096"}


def test_member_records_travel_as_plain_tuples():
    """What FindDuplicates shuffles: a tuple Beam encodes field by field (no pickled class), read back
    as the same Member."""
    from apache_beam.coders import FastPrimitivesCoder

    row = {"uid": "0123456789abcdef" * 2, "phash": phash_int64("f0e1d2c3b4a59687"), "caption": "a red bus", "image": b"jpeg bytes"}
    m = member(row, "0123456789abcdef-00000.parquet")
    assert (m.phash, m.caption_chars, len(m.digest)) == (-0x0F1E2D3C4B5A6979, 9, 16)  # the column's signed bits
    encoded = FastPrimitivesCoder().encode(tuple(m))
    assert b"Member" not in encoded and len(encoded) == 99
    assert list(members_of([FastPrimitivesCoder().decode(encoded)])) == [m]


def test_a_duplicate_travels_to_its_work_file_as_two_uids_and_a_distance():
    """What stage 1 shuffles back to a duplicate's work file: no detail string, no folder."""
    from apache_beam.coders import FastPrimitivesCoder

    from pipelines.stage1 import duplicate_by_file

    m = Member("0123456789abcdef" * 2, 7, 9, b"d" * 16, "0123456789abcdef-00000.parquet")
    record = duplicate_by_file(m, "fedcba9876543210" * 2, 3)
    assert record == ("0123456789abcdef-00000.parquet", ("0123456789abcdef" * 2, ("fedcba9876543210" * 2, 3)))
    assert len(FastPrimitivesCoder().encode(record)) == 108
    assert len(FastPrimitivesCoder().encode(duplicate_by_file(m, "fedcba9876543210" * 2, None))) == 107  # same bytes
