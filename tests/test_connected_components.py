"""pipelines/connected_components.py: the large-star / small-star steps against union-find, on chains, stars
and random graphs; in Beam, and the loud failure when the rounds are too few."""

import json
import random
from collections import defaultdict

import apache_beam as beam
import pytest

from pipelines.connected_components import DEFAULT_ROUNDS, ConnectedComponents, large_star, small_star, unsettled


def union_find_roots(edges) -> dict:
    """node -> smallest node of its component, for every node that is not that smallest node."""
    parent = {}

    def root(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    return {x: root(x) for x in list(parent) if root(x) != x}


def group(pairs) -> list[tuple]:
    groups = defaultdict(list)
    for key, value in pairs:
        groups[key].append(value)
    return list(groups.items())


def count_unsettled(edges) -> int:
    roles = defaultdict(lambda: {"parent": [], "child": []})
    for child, parent in edges:
        roles[child]["parent"].append(parent)
        roles[parent]["child"].append(child)
    return sum(unsettled(item) for item in roles.items())


def rounds_to_settle(edges, limit: int = 100) -> tuple[int, dict]:
    """The module's step functions run as its Round does, in plain Python: rounds until settled, roots."""
    for r in range(1, limit + 1):
        both = [(a, b) for a, b in edges] + [(b, a) for a, b in edges]
        large = [e for g in group(both) for e in large_star(g)]
        edges = [e for g in group((max(e), min(e)) for e in large) for e in small_star(g)]
        if count_unsettled(edges) == 0:
            return r, dict(set(edges))
    raise AssertionError(f"not settled in {limit} rounds")


def shuffled_ids(n: int, seed: int = 0) -> list[str]:
    ids = [f"{i:08x}" for i in range(n)]
    random.Random(seed).shuffle(ids)
    return ids


def test_a_100000_node_chain_settles_within_the_default_rounds():
    ids = shuffled_ids(100_000)
    chain = list(zip(ids, ids[1:]))
    rounds, roots = rounds_to_settle(chain)
    assert rounds == 13 < DEFAULT_ROUNDS
    assert roots == {node: "00000000" for node in ids if node != "00000000"}
    ordered = [f"{i:08x}" for i in range(20_000)]
    rounds, roots = rounds_to_settle(list(zip(ordered, ordered[1:])))  # in sorted order: the slowest seen
    assert rounds == 15 and len(roots) == 19_999


def test_a_star_settles_in_one_round_whatever_its_centre():
    ids = shuffled_ids(50_000, seed=1)
    rounds, roots = rounds_to_settle([(ids[0], leaf) for leaf in ids[1:]])
    assert rounds == 1
    assert roots == union_find_roots([(ids[0], leaf) for leaf in ids[1:]])


def test_random_graphs_give_the_union_find_components():
    rng = random.Random(2)
    for _ in range(20):
        nodes = shuffled_ids(300, seed=rng.randrange(1000))
        edges = [(rng.choice(nodes), rng.choice(nodes)) for _ in range(rng.randint(50, 400))]
        edges = [(a, b) for a, b in edges if a != b]
        assert rounds_to_settle(edges)[1] == union_find_roots(edges)


def test_unsettled_nodes():
    assert unsettled(("b", {"parent": ["a", "a"], "child": []})) == 0  # one parent, twice
    assert unsettled(("c", {"parent": ["a", "b"], "child": []})) == 1  # two parents
    assert unsettled(("b", {"parent": ["a"], "child": ["c"]})) == 1  # a parent with a parent
    assert unsettled(("a", {"parent": [], "child": ["b", "c"]})) == 0  # a root


def run_beam(edges, rounds: int, tmp_path) -> dict:
    out = tmp_path / "roots.jsonl"
    with beam.Pipeline("FnApiRunner") as p:
        roots = p | beam.Create(edges) | ConnectedComponents(rounds)
        roots | beam.Map(json.dumps) | beam.io.WriteToText(str(out), shard_name_template="")
    lines = out.read_text().splitlines()
    found = dict(json.loads(line) for line in lines)
    assert len(found) == len(lines)  # each node once
    return found


def test_beam_components_equal_union_find(tmp_path):
    rng = random.Random(3)
    nodes = shuffled_ids(3000, seed=4)
    chain = list(zip(nodes[:1000], nodes[1:1000]))  # one long chain, reversed in places
    chain = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in chain]
    star = [(nodes[1000], leaf) for leaf in nodes[1001:1500]]
    pairs = [(nodes[i], nodes[i + 1]) for i in range(1500, 3000, 2)]
    loose = [(rng.choice(nodes[1500:]), rng.choice(nodes[1500:])) for _ in range(300)]
    edges = chain + star + pairs + [(a, b) for a, b in loose if a != b]
    assert run_beam(edges, DEFAULT_ROUNDS, tmp_path) == union_find_roots(edges)


def test_too_few_rounds_fail_loudly(tmp_path):
    ordered = [f"{i:04x}" for i in range(200)]
    with pytest.raises(Exception, match=r"did not settle in 2 rounds \(\d+ nodes left\); rerun with --dedup-rounds 4"):
        run_beam(list(zip(ordered, ordered[1:])), 2, tmp_path)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        ConnectedComponents(0)
