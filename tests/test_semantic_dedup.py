"""Semantic dedup: the keep rule on hand-made clusters, the k-means pieces, pipelines/semantic_dedup.py in a
real Beam pipeline against a brute-force answer on planted near copies, the embeddings ScoreClip carries,
and stage 1 with --semdedup-eps."""

import json
import math

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest

from filters.clip_score import load_scorer, save_random_model
from filters.kmeans import kmeans_plus_plus, nearest, update_centroids
from filters.semantic_dedup import EMBEDDING, Member, decode_embedding, encode_embeddings, keep_order, semantic_duplicates
from pipelines import stage1
from pipelines.score_clip import ScoreClip
from pipelines.semantic_dedup import AssignRows, KMeans, SemanticDedup, default_clusters, sample_size, stable_hash
from pipelines.stage1_report import format_report
from synthetic.raw_corpus import make_sample
from tests.test_clip_score import CAPTIONS, images
from tests.test_score_heads import stage1_usage_error

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")

DIM = 64
EPS = 0.01  # near copies sit above 0.999, other pairs of a blob below 0.98


def angle(degrees: float) -> np.ndarray:
    """A unit vector in the plane, `degrees` from the x axis."""
    return np.array([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))], np.float32)


def test_keep_order_is_farthest_from_the_centroid_first_ties_by_uid():
    members = [Member("c", angle(0), 0.1), Member("b", angle(0), 0.3), Member("a", angle(0), 0.3), Member("d", angle(0), 0.2)]
    assert [m.uid for m in keep_order(members)] == ["a", "b", "d", "c"]


def test_a_member_within_the_threshold_of_a_kept_one_is_dropped_and_names_it():
    members = [Member("far", angle(0), 0.3), Member("near", angle(10), 0.2), Member("other", angle(90), 0.1)]
    assert semantic_duplicates(members, 0.05) == {"near": ("far", f"semantic duplicate of far (cosine {math.cos(math.radians(10)):.4f})")}
    assert semantic_duplicates(members, 0.01) == {}  # cos 10 degrees = 0.9848 is not above 0.99: both kept
    assert semantic_duplicates([], 0.05) == {}


def test_the_keeper_is_the_most_similar_earlier_kept_member():
    # x and y are kept (40 degrees apart); z is within the threshold of both, nearer to y, which comes second
    members = [Member("x", angle(0), 0.5), Member("y", angle(40), 0.4), Member("z", angle(22), 0.1)]
    assert semantic_duplicates(members, 0.1) == {"z": ("y", "semantic duplicate of y (cosine 0.9511)")}


def test_a_chain_drops_only_what_is_near_a_kept_member():
    """a ~ b and b ~ c (15 degrees), a and c 30 degrees apart: the paper's max over the upper triangle drops
    b and c; the greedy rule drops b only, as c is not near a, the one kept member before it."""
    members = [Member("a", angle(0), 0.3), Member("b", angle(15), 0.2), Member("c", angle(30), 0.1)]
    assert semantic_duplicates(members, 0.05) == {"b": ("a", "semantic duplicate of a (cosine 0.9659)")}


def test_embeddings_round_trip_as_float16_bytes():
    vectors = np.array([[3.0, 4.0], [0.0, -2.0]], np.float32)
    encoded = encode_embeddings(vectors)
    assert [len(b) for b in encoded] == [4, 4]  # 2 bytes a dimension
    assert decode_embedding(encoded[0]).tolist() == pytest.approx([0.6, 0.8], abs=1e-6)
    assert decode_embedding(encoded[1]).tolist() == [0.0, -1.0]
    assert decode_embedding(np.array([0.0, 5.0])).tolist() == [0.0, 1.0]


def test_kmeans_pieces():
    points = np.stack([angle(0), angle(90), angle(180), angle(90)])
    seeded = kmeans_plus_plus(points, 3, seed=0)
    assert seeded.tolist() == kmeans_plus_plus(points, 3, seed=0).tolist()
    assert sorted(map(tuple, np.round(seeded, 6).tolist())) == sorted(map(tuple, np.round(points[:3], 6).tolist()))  # distinct points
    assert len(kmeans_plus_plus(np.stack([angle(0)] * 5), 3, seed=0)) == 1  # no second distinct point to draw
    index, distance = nearest(np.stack([angle(10), angle(170)]), np.stack([angle(0), angle(180)]))
    assert index.tolist() == [0, 1] and distance.tolist() == pytest.approx([1 - math.cos(math.radians(10))] * 2, abs=1e-6)
    moved = update_centroids(np.stack([angle(0), angle(90)]), {0: np.array([2.0, 2.0])})  # centroid 1 has no members
    assert moved.ravel().tolist() == pytest.approx([*angle(45), *angle(90)], abs=1e-6)


def test_default_clusters_and_sample_size():
    assert [default_clusters(n) for n in (0, 1, 10_000, 10_001, 10**12)] == [1, 1, 1, 2, 50_000]
    assert [sample_size(k) for k in (1, 1_000, 100_000, None)] == [10_000, 20_000, 200_000, 200_000]


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def planted(seed: int = 0, blobs: int = 3, singles: int = 200, groups: int = 30) -> tuple[list[tuple], dict[str, int]]:
    """(uid, work_file, float16 embedding) rows in `blobs` well-separated blobs (cosine 0.98 to their
    centre, ~0 to the others): `singles` random unit vectors (pairwise cosine 0.94-0.98 within a blob) and
    `groups` groups of 2-6 near copies (pairwise cosine above 0.999), and each row's blob."""
    rng = np.random.default_rng(seed)
    centres = [unit(rng.normal(size=DIM)) for _ in range(blobs)]
    around = lambda c: unit(c + 0.2 * unit(rng.normal(size=DIM)))  # noqa: E731
    vectors, blob = {}, {}
    for i in range(singles):
        vectors[f"s{i:03d}"], blob[f"s{i:03d}"] = around(centres[i % blobs]), i % blobs
    for g in range(groups):
        base = around(centres[g % blobs])
        for j in range(int(rng.integers(2, 7))):
            uid = f"g{g:02d}-{j}"
            vectors[uid], blob[uid] = unit(base + 0.02 * unit(rng.normal(size=DIM))), g % blobs
    uids = sorted(vectors)
    encoded = encode_embeddings(np.stack([vectors[uid] for uid in uids]))
    return [(uid, f"file-{stable_hash(uid) % 7}", data) for uid, data in zip(uids, encoded)], blob


def brute_force(rows: list[tuple], centroid_of: dict[str, np.ndarray], eps: float) -> dict[str, tuple[str, str]]:
    """The greedy rule over the whole set at once, every pair compared, each row ordered by its cosine
    distance to `centroid_of` its cluster."""
    members = []
    for uid, _, data in rows:
        vector = decode_embedding(data)
        members.append(Member(uid, vector, float(1.0 - vector @ centroid_of[uid])))
    return semantic_duplicates(members, eps)


def normalised_sums(rows: list[tuple], label: dict[str, object]) -> dict[str, np.ndarray]:
    """Each row's spherical-k-means centroid when `label` gives the clusters: its cluster's sum, unit length."""
    sums: dict[object, np.ndarray] = {}
    for uid, _, data in rows:
        sums[label[uid]] = sums.get(label[uid], 0) + decode_embedding(data).astype(np.float64)
    return {uid: unit(sums[label[uid]]).astype(np.float32) for uid, _, _ in rows}


def run_semantic_dedup(rows: list[tuple], tmp_path, **options) -> tuple[dict, dict]:
    """SemanticDedup in a real pipeline: ({uid: (work_file, keeper, detail)}, the cluster summary)."""
    with beam.Pipeline("FnApiRunner") as p:
        found = p | beam.Create(rows) | SemanticDedup(**options)
        found["duplicates"] | "Drops" >> beam.Map(json.dumps) | "WriteDrops" >> beam.io.WriteToText(str(tmp_path / "drops"), shard_name_template="")
        found["clusters"] | "Stats" >> beam.Map(json.dumps) | "WriteStats" >> beam.io.WriteToText(str(tmp_path / "stats"), shard_name_template="")
    drops = [json.loads(line) for line in (tmp_path / "drops").read_text().splitlines()]
    found = {uid: (work_file, keeper, detail) for work_file, (uid, (keeper, detail)) in drops}
    assert len(found) == len(drops)
    return found, json.loads((tmp_path / "stats").read_text())


def test_semantic_dedup_in_beam_equals_brute_force_over_all_pairs(tmp_path):
    rows, blob = planted()
    found, stats = run_semantic_dedup(rows, tmp_path, eps=EPS, clusters=3, iterations=3)
    expected = brute_force(rows, normalised_sums(rows, blob), EPS)
    assert {uid: (keeper, detail) for uid, (_, keeper, detail) in found.items()} == expected
    group_sizes: dict[str, int] = {}
    for uid, _, _ in rows:
        if uid.startswith("g"):
            group_sizes[uid[:3]] = group_sizes.get(uid[:3], 0) + 1
    assert len(expected) == sum(n - 1 for n in group_sizes.values())  # one pair kept per group of near copies
    assert all(uid[:3] == keeper[:3] for uid, (keeper, _) in expected.items())
    assert {keeper[-1] for keeper, _ in expected.values()} != {"0"}  # the keeper is the one farthest out, not the first made
    work_file = {uid: f for uid, f, _ in rows}
    assert all(f == work_file[uid] for uid, (f, _, _) in found.items())
    assert stats == {"clusters": 3, "largest": max(list(blob.values()).count(b) for b in range(3)), "split": 0}


def kmeans_assignment(rows: list[tuple], tmp_path, seed: int) -> dict[str, int]:
    out = tmp_path / f"assigned-{seed}"
    with beam.Pipeline("FnApiRunner") as p:
        rows_in = p | beam.Create(rows)
        centroids = rows_in | KMeans(clusters=8, iterations=3, seed=seed)
        assigned = rows_in | AssignRows(centroids)
        assigned | beam.MapTuple(lambda cluster, member: json.dumps([member[0], cluster])) | beam.io.WriteToText(str(out), shard_name_template="")
    return dict(json.loads(line) for line in out.read_text().splitlines())


def test_kmeans_is_deterministic_for_a_seed(tmp_path):
    rng = np.random.default_rng(1)
    encoded = encode_embeddings(rng.normal(size=(300, DIM)))
    rows = [(f"r{i:03d}", "f", data) for i, data in enumerate(encoded)]
    first = kmeans_assignment(rows, tmp_path / "a", seed=7)
    assert len(first) == 300 and len(set(first.values())) == 8
    assert kmeans_assignment(rows, tmp_path / "b", seed=7) == first
    assert kmeans_assignment(rows, tmp_path / "c", seed=8) != first


def test_a_hot_cluster_is_split_into_sub_groups_by_uid(tmp_path):
    """One cluster of every row, at most 40 a group: 9 sub-groups. The drops are exactly the greedy rule
    within each sub-group; near copies that fell in different sub-groups are missed."""
    rows, _ = planted()
    found, stats = run_semantic_dedup(rows, tmp_path, eps=EPS, clusters=1, iterations=2, max_cluster_size=40)
    assert stats == {"clusters": 1, "largest": len(rows), "split": 1}
    parts = math.ceil(len(rows) / 40)
    centroid = normalised_sums(rows, {uid: 0 for uid, _, _ in rows})
    expected = {}
    for part in range(parts):
        expected |= brute_force([row for row in rows if stable_hash(row[0]) % parts == part], centroid, EPS)
    assert {uid: (keeper, detail) for uid, (_, keeper, detail) in found.items()} == expected
    whole = brute_force(rows, centroid, EPS)
    assert set(found) < set(whole)  # some pairs were in different sub-groups
    vector = {uid: decode_embedding(data) for uid, _, data in rows}
    for uid, (_, keeper, _) in found.items():
        assert keeper not in found and float(vector[uid] @ vector[keeper]) > 1 - EPS


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return save_random_model(tmp_path_factory.mktemp("clip") / "tiny")


def image_embeddings(model: str, blobs: list[bytes]) -> np.ndarray:
    """The reference: the L2-normalised image embeddings of filters/clip_score.py, one image at a time."""
    scorer = load_scorer(model, None)
    tokens = scorer.tokenize([""])
    return np.concatenate([scorer.score_and_embed(scorer.preprocess(blob)[None], tokens)[1].numpy() for blob in blobs])


def test_score_clip_carries_the_image_embedding_only_when_asked(clip, tmp_path):
    blobs = images()
    rows = [{"uid": f"u{i}", "caption": c, "image": b} for i, (b, c) in enumerate(zip(blobs, CAPTIONS))]
    rows.append({"uid": "bad", "caption": "a broken file", "image": b"not an image"})
    for embeddings in (True, False):
        out = tmp_path / f"scores-{embeddings}"
        with beam.Pipeline("FnApiRunner") as p:
            scores = p | beam.Create(rows) | ScoreClip(clip, batch_size=4, embeddings=embeddings)
            scores | beam.MapTuple(lambda uid, found: json.dumps([uid, found and {k: v.hex() if isinstance(v, bytes) else v for k, v in found.items()}])) \
                | beam.io.WriteToText(str(out), shard_name_template="")
        found = dict(json.loads(line) for line in out.read_text().splitlines())
        assert found.pop("bad") is None
        assert all(sorted(scores) == (["clip_score", EMBEDDING] if embeddings else ["clip_score"]) for scores in found.values())
    with_embeddings = dict(json.loads(line) for line in (tmp_path / "scores-True").read_text().splitlines())
    for i, want in enumerate(image_embeddings(clip, blobs)):
        data = bytes.fromhex(with_embeddings[f"u{i}"][EMBEDDING])
        assert len(data) == 64 * 2  # the tiny model's 64 dimensions, float16
        assert decode_embedding(data).tolist() == pytest.approx(want.tolist(), abs=2e-3)


def semdedup_run(clip: str, tmp_path, eps: float) -> tuple[dict, list[dict], list[dict]]:
    make_sample(str(tmp_path / "raw"), pairs=120, seed=5, shard_size=60)
    (tmp_path / "stage1.toml").write_text("[sources.laion-en]\nclip_min_score = -1.0\nclip_keep_fraction = 0.8\n")
    argv = ["--input", f"laion-en={tmp_path / 'raw'}", "--output", str(tmp_path / "out"), "--config", str(tmp_path / "stage1.toml"),
            "--clip-model", clip, "--semdedup-eps", str(eps)]
    report = stage1.run(argv)
    return report, *(pq.read_table(tmp_path / "out" / part).to_pylist() for part in ("curated", "rejected"))


def test_stage1_drops_semantic_duplicates_of_curated_pairs(clip, tmp_path):
    """One cluster (under 10,000 pairs), so every pair is compared: each semantic duplicate names a curated
    pair within the threshold, and no two curated pairs are within it."""
    eps = 0.01
    report, curated, rejected = semdedup_run(clip, tmp_path, eps)
    semantic = [row for row in rejected if row["reason"] == "semantic_duplicate"]
    assert len(semantic) >= 3 and all(row["duplicate_of"] is not None for row in rejected if row["reason"] == "duplicate")
    by_uid = {row["uid"]: row for row in curated}
    vectors = dict(zip([row["uid"] for row in curated + semantic], image_embeddings(clip, [row["image"] for row in curated + semantic])))
    for row in semantic:
        keeper = row["duplicate_of"]
        assert keeper in by_uid
        cosine = float(vectors[row["uid"]] @ vectors[keeper])
        assert row["detail"] == f"semantic duplicate of {keeper} (cosine {row['detail'].split('cosine ')[1]}"
        assert float(row["detail"].split("cosine ")[1][:-1]) == pytest.approx(cosine, abs=2e-3) and cosine > 1 - eps - 2e-3
    kept = np.stack([vectors[uid] for uid in by_uid])
    similarity = kept @ kept.T
    np.fill_diagonal(similarity, -1.0)
    assert similarity.max() <= 1 - eps + 2e-3
    assert all(EMBEDDING not in row for row in curated) and all(row["clip_score"] is not None for row in curated)
    source = report["sources"]["laion-en"]
    assert source["dropped"]["semantic_duplicate"] == len(semantic) and source["kept"] == len(curated)
    assert report["rules"][-1] == "semantic_duplicate"
    assert sorted(report["score_histograms"]["laion-en"]) == ["clip_score"]
    assert sum(report["score_histograms"]["laion-en"]["clip_score"]["counts"]) == len(curated) + len(semantic) + source["dropped"]["clip_score"]
    assert report["settings"]["semdedup"] == {"eps": eps, "clusters": None, "iterations": 5, "max_cluster_size": 20_000, "seed": 0,
                                              "found": {"clusters": 1, "largest": len(curated) + len(semantic), "split": 0}}
    assert f"semantic dedup: cosine above 0.9900 (eps 0.01) within 1 k-means clusters (5 iterations, the largest {len(curated) + len(semantic)} pairs)" in format_report(report)


def test_usage_errors(clip, tmp_path):
    make_sample(str(tmp_path / "raw"), pairs=10, seed=1)
    base = ["--input", f"s={tmp_path / 'raw'}", "--output", str(tmp_path / "out")]

    def message(*extra) -> str:
        return stage1_usage_error(base + list(extra))

    assert message("--semdedup-eps", "0.05") == "--semdedup-eps needs --clip-model (it compares the CLIP image embeddings)"
    for eps in ("0", "1", "-0.5", "1.5"):
        assert message("--clip-model", clip, "--semdedup-eps", eps) == f"--semdedup-eps must be in (0, 1), not {float(eps)}"
    assert message("--clip-model", clip, "--semdedup-clusters", "8") == "--semdedup-clusters needs --semdedup-eps"
    assert message("--clip-model", clip, "--semdedup-iterations", "3") == "--semdedup-iterations needs --semdedup-eps"
    assert message("--clip-model", clip, "--semdedup-eps", "0.05", "--semdedup-clusters", "0") == "--semdedup-clusters must be >= 1, not 0"
    assert message("--clip-model", clip, "--semdedup-eps", "0.05", "--semdedup-iterations", "0") == "--semdedup-iterations must be >= 1, not 0"
    settings = stage1.prepare(base + ["--clip-model", clip, "--semdedup-eps", "0.05", "--semdedup-clusters", "8", "--semdedup-iterations", "2"])[3]
    assert settings["semdedup"] == {"eps": 0.05, "clusters": 8, "iterations": 2, "max_cluster_size": 20_000, "seed": 0}
    assert stage1.prepare(base)[3]["semdedup"] is None
