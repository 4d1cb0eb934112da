"""Stage 1 end to end on make-sample corpora: exact counts per reason, nothing lost, idempotent, all layouts."""

import csv
import json

import pyarrow.parquet as pq
import pytest

from pipelines import stage1
from pipelines.report import KEPT, build_report, format_report, write_chart
from pipelines.sample_corpus import make_sample

PAIRS = 1000


@pytest.fixture(scope="module")
def webdataset_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    record = make_sample(str(root / "raw"), pairs=PAIRS, seed=3, shard_size=250)
    report = stage1.run(["--input", f"laion-en={root / 'raw'}", "--output", str(root / "out")])
    return root, record, report


def rows(folder) -> list[dict]:
    return sorted(pq.read_table(folder).to_pylist(), key=lambda row: row["uid"])


def test_counts_per_reason_match_what_make_sample_injected(webdataset_run):
    root, record, report = webdataset_run
    source = report["sources"]["laion-en"]
    found = {reason: n for reason, n in source["dropped"].items() if n}
    found["curated"] = source["kept"]
    assert found == record["expected"]
    assert source["input"] == PAIRS


def test_every_pair_in_exactly_one_output_with_its_expected_outcome(webdataset_run):
    root, record, _ = webdataset_run
    curated, rejected = rows(root / "out" / "curated"), rows(root / "out" / "rejected")
    assert len(curated) + len(rejected) == PAIRS
    outcome = {row["key"]: "curated" for row in curated} | {row["key"]: row["reason"] for row in rejected}
    assert len(outcome) == PAIRS
    assert outcome == {key: item["expect"] for key, item in record["by_key"].items()}
    for row in curated:
        assert row["caption"] == record["by_key"][row["key"]]["caption"]
        assert row["width"] > 0 and len(row["phash"]) == 16


def test_rerun_writes_the_same_rows(webdataset_run):
    root, _, _ = webdataset_run
    first = {name: rows(root / "out" / name) for name in ("curated", "rejected")}
    stage1.run(["--input", f"laion-en={root / 'raw'}", "--output", str(root / "out")])
    assert {name: rows(root / "out" / name) for name in ("curated", "rejected")} == first


def test_parquet_layout_gives_the_same_result(webdataset_run, tmp_path):
    root, record, _ = webdataset_run
    make_sample(str(tmp_path / "raw"), pairs=PAIRS, seed=3, shard_size=250, output_format="parquet")
    stage1.run(["--input", f"laion-en={tmp_path / 'raw'}", "--output", str(tmp_path / "out")])
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
    }
    counts = [(("a", KEPT), 30), (("a", "caption_too_short"), 10), (("b", KEPT), 10), (("b", "image_too_small"), 50)]
    report = build_report(counts, settings)
    assert report["sources"]["a"]["input"] == 40 and report["sources"]["a"]["kept_pct"] == 75.0
    assert report["total"]["language_split_pct"] == {"en": 75.0, "zh": 25.0}
    text = format_report(report)
    assert "a         en     40    30   75.0%" in text
    assert "total           100    40   40.0%" in text
    assert "language split of kept pairs: en 75.0%, zh 25.0%" in text
    assert "caption_too_short             10   0     10" in text
    assert "image_too_small                0  50     50" in text
    write_chart(report, str(tmp_path / "funnel.png"))
    from PIL import Image

    with Image.open(tmp_path / "funnel.png") as chart:
        assert chart.format == "PNG" and chart.width > 400
    assert json.loads(json.dumps(report)) == report


def test_multi_processing_runner_gives_the_same_rows(webdataset_run, tmp_path):
    root, _, report = webdataset_run
    argv = ["--input", f"laion-en={root / 'raw'}", "--output", str(tmp_path / "out")]
    again = stage1.run(argv + ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert again["sources"] == report["sources"]
    for name in ("curated", "rejected"):
        assert rows(tmp_path / "out" / name) == rows(root / "out" / name)
