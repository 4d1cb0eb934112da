"""Stage 1 end to end on make-sample corpora: exact counts per reason, nothing lost, idempotent, all layouts."""

import csv
import io
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import stage1
from filters.clip_score import RANDOM_NOTE, save_random_model
from filters.dedup import phash_int64, preference
from filters.image_rules import decode_phash
from formats.ids import pair_uid
from pipelines.stage1_report import KEPT, build_report, format_report, write_chart
from synthetic.raw_corpus import make_sample
from tests.test_clip_score import direct_scores

PAIRS = 1000
KEEP_FRACTION = 0.8  # CLIP quantile mode in these runs


def stage1_argv(root, raw, out) -> list[str]:
    return ["--input", f"laion-en={raw}", "--output", str(out), "--config", str(root / "stage1.toml"), "--clip-model", clip_model(root)]


def clip_model(root) -> str:
    return f"local-dir:{root / 'clip'}"


@pytest.fixture(scope="module")
def webdataset_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    save_random_model(root / "clip")
    (root / "stage1.toml").write_text(f"[sources.laion-en]\nclip_min_score = -1.0\nclip_keep_fraction = {KEEP_FRACTION}\n")
    record = make_sample(str(root / "raw"), pairs=PAIRS, seed=3, shard_size=250)
    report = stage1.run(stage1_argv(root, root / "raw", root / "out"))
    return root, record, report


def rows(folder) -> list[dict]:
    return sorted(pq.read_table(folder).to_pylist(), key=lambda row: row["uid"])


def expected_before_clip(record: dict, source: str) -> dict[str, str]:
    """Each key's outcome by the per-pair rules (injected.json) and dedup: in each group of copies (an
    original and what make-sample derived from it), the longest cleaned caption is kept, ties to the
    smallest uid."""
    by_key = record["by_key"]
    outcome = {key: item["expect"] for key, item in by_key.items()}
    groups: dict[str, list[str]] = {}
    for key, item in by_key.items():
        if item["expect"] == "curated":
            groups.setdefault(item.get("duplicate_of") or key, []).append(key)
    for members in groups.values():
        keeper = min(members, key=lambda k: preference(len(by_key[k]["caption"]), pair_uid(source, k)))
        outcome.update({k: "duplicate" for k in members if k != keeper})
    return outcome


def test_every_pair_in_exactly_one_output_with_its_expected_outcome(webdataset_run):
    root, record, report = webdataset_run
    curated, rejected = rows(root / "out" / "curated"), rows(root / "out" / "rejected")
    assert len(curated) + len(rejected) == PAIRS
    outcome = {row["key"]: "curated" for row in curated} | {row["key"]: row["reason"] for row in rejected}
    assert len(outcome) == PAIRS
    expected = expected_before_clip(record, "laion-en")
    assert sum(v == "duplicate" for v in expected.values()) > 50
    assert {k: "curated" if v == "clip_score" else v for k, v in outcome.items()} == expected
    for row in curated:
        assert row["caption"] == record["by_key"][row["key"]]["caption"]
        assert row["width"] > 0 and row["phash"] == phash_int64(decode_phash(Image.open(io.BytesIO(row["image"]))))
        assert row["lang"] == "en" and row["lang_score"] >= 0.5
    # a duplicate names its keeper: a pair of the same group that passed dedup (CLIP may drop it after)
    passed_dedup = {row["uid"]: row["key"] for row in curated + rejected if row.get("reason") in (None, "clip_score")}
    group = lambda key: record["by_key"][key].get("duplicate_of") or key  # noqa: E731
    for row in rejected:
        if row["reason"] == "duplicate":
            assert row["duplicate_of"] == row["detail"].split(" of ")[1].split(" ")[0]
            assert group(passed_dedup[row["duplicate_of"]]) == group(row["key"])
        else:
            assert row["duplicate_of"] is None
    source = report["sources"]["laion-en"]
    found = {reason: n for reason, n in source["dropped"].items() if n}
    found["curated"] = source["kept"]
    assert found == dict(Counter(outcome.values()))
    assert source["input"] == PAIRS and source["languages_kept"] == {"en": source["kept"]}


def test_clip_quantile_keeps_the_top_share_with_the_scores_open_clip_gives(webdataset_run):
    root, _, report = webdataset_run
    curated, rejected = rows(root / "out" / "curated"), rows(root / "out" / "rejected")
    dropped = [row for row in rejected if row["reason"] == "clip_score"]
    scored = len(curated) + len(dropped)
    assert abs(len(curated) - KEEP_FRACTION * scored) <= 1
    threshold = report["settings"]["clip_thresholds"]["laion-en"]
    assert min(row["clip_score"] for row in curated) >= threshold
    assert all(float(row["detail"].split(" < ")[0]) < threshold for row in dropped)
    sample = curated[:: max(1, len(curated) // 20)]
    by_hand = direct_scores(clip_model(root), [row["image"] for row in sample], [row["caption"] for row in sample])
    assert [row["clip_score"] for row in sample] == pytest.approx(by_hand, abs=1e-5)
    clip = report["settings"]["clip"]["model"]
    assert (clip["random_weights"], clip["note"], clip["precision"]) == (True, RANDOM_NOTE, "fp32")
    assert f"WARNING: {RANDOM_NOTE}" in format_report(report)


def test_rerun_writes_the_same_rows(webdataset_run):
    root, _, _ = webdataset_run
    first = {name: rows(root / "out" / name) for name in ("curated", "rejected")}
    stage1.run(stage1_argv(root, root / "raw", root / "out"))
    assert {name: rows(root / "out" / name) for name in ("curated", "rejected")} == first
    assert not (root / "out" / "_work").exists()  # the work files and their folder are removed


def test_parquet_layout_gives_the_same_result(webdataset_run, tmp_path):
    root, record, _ = webdataset_run
    make_sample(str(tmp_path / "raw"), pairs=PAIRS, seed=3, shard_size=250, output_format="parquet")
    stage1.run(stage1_argv(root, tmp_path / "raw", tmp_path / "out"))
    for name in ("curated", "rejected"):
        assert rows(tmp_path / "out" / name) == rows(root / "out" / name)


def test_manifest_input(webdataset_run, tmp_path):
    root, _, _ = webdataset_run
    curated = rows(root / "out" / "curated")[:20]
    (tmp_path / "img").mkdir()
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "caption", "image"])
        for row in curated:
            (tmp_path / "img" / f"{row['key']}.bin").write_bytes(row["image"])
            writer.writerow([row["key"], row["caption_raw"], f"img/{row['key']}.bin"])
        writer.writerow(["gone", "a caption whose image is missing", "img/gone.jpg"])
    report = stage1.run(["--input", f"mine={tmp_path / 'pairs.csv'}", "--output", str(tmp_path / "out")])
    fields = lambda r: (r["key"], r["caption"], r["image"], r["phash"])  # noqa: E731
    assert sorted(map(fields, rows(tmp_path / "out" / "curated"))) == sorted(map(fields, curated))
    assert report["sources"]["mine"]["dropped"]["image_unreadable"] == 1


def test_report_tables_and_chart(tmp_path):
    settings = {
        "inputs": {"a": {}, "b": {}},
        "thresholds": {"a": {"language": "en"}, "b": {"language": "zh"}},
        "langid": {"model": "lid.176.ftz"},
        "dedup": {"max_distance": 4},
        "clip": None,
    }
    # one (source, outcome) may come from two output streams: the counts add up
    counts = [(("a", KEPT), 30), (("a", "caption_too_short"), 6), (("a", "caption_too_short"), 4), (("b", KEPT), 10), (("b", "image_too_small"), 50)]
    languages = [(("a", "en"), 29), (("a", "zh"), 1), (("b", "zh"), 10)]
    report = build_report(counts, languages, settings)
    assert report["sources"]["a"]["input"] == 40 and report["sources"]["a"]["kept_pct"] == 75.0
    assert report["sources"]["a"]["languages_kept"] == {"en": 29, "zh": 1}
    assert report["total"]["language_split_pct"] == {"en": 72.5, "zh": 27.5}
    text = format_report(report)
    assert "a         en     40    30   75.0%" in text
    assert "total           100    40   40.0%" in text
    assert "language split of kept pairs: en 72.5%, zh 27.5%" in text
    assert text.endswith("language ID: lid.176.ftz\ndedup: pHash within 4 bits\nCLIP: not run (no --clip-model); clip_score is null")
    assert "caption_too_short             10   0     10" in text
    assert "image_too_small                0  50     50" in text
    write_chart(report, str(tmp_path / "funnel.png"))
    from PIL import Image

    with Image.open(tmp_path / "funnel.png") as chart:
        assert chart.format == "PNG" and chart.width > 400
    assert json.loads(json.dumps(report)) == report


def test_multi_processing_runner_gives_the_same_rows(webdataset_run, tmp_path):
    root, _, report = webdataset_run
    argv = stage1_argv(root, root / "raw", tmp_path / "out")
    again = stage1.run(argv + ["--direct_running_mode=multi_processing", "--direct_num_workers=2", "--clip-threads", "1"])
    assert again["sources"] == report["sources"]
    for name in ("curated", "rejected"):
        assert rows(tmp_path / "out" / name) == rows(root / "out" / name)
