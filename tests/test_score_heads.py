"""The NSFW and aesthetic heads on the CLIP image embeddings, and the watermark detector on the same
decoded image: layouts, loading, errors, one decode and one image forward per image in Beam, the decisions
with their reasons, the histograms and stage 1 with all three (the detector's own tests:
tests/test_watermark.py)."""

import json

import apache_beam as beam
import open_clip
import PIL.Image
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import beam_runner
from cli.usage import UsageError
from filters.clip_score import load_scorer, save_random_model
from filters.config import load_config
from filters.score_heads import RANDOM_NOTE, HeadError, load_head, save_random_head
from filters.watermark import WatermarkDetector, save_random_watermark
from formats import reasons
from pipelines import stage1
from pipelines.score_clip import ScoreClip
from pipelines.stage1_report import BINS, ScoreHistograms, build_report, format_report, score_bin, write_score_charts
from synthetic.raw_corpus import make_sample
from tests.test_clip_score import CAPTIONS, images
from tests.test_watermark import released_model, released_scores

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")
WIDTH = 64  # the tiny CLIP model's embedding width


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("heads")
    return {
        "clip": save_random_model(root / "clip"),
        "nsfw": save_random_head("nsfw", root / "nsfw.safetensors", WIDTH, seed=1),
        "aesthetic": save_random_head("aesthetic", root / "aesthetic.safetensors", WIDTH, seed=2),
        "watermark": save_random_watermark(root / "watermark.safetensors", seed=3),
    }


def released_aesthetic_mlp(width: int) -> torch.nn.Module:
    """improved-aesthetic-predictor's MLP (simple_inference.py: its `layers` Sequential), the input width
    made a parameter."""
    mlp = torch.nn.Module()
    mlp.layers = torch.nn.Sequential(
        torch.nn.Linear(width, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
    )
    return mlp.eval()


def test_aesthetic_head_is_the_released_mlp_and_reads_pth_too(models, tmp_path):
    from safetensors.torch import load_file

    mlp = released_aesthetic_mlp(WIDTH)
    mlp.load_state_dict(load_file(models["aesthetic"]))  # strict: the released names, nothing more
    torch.save(mlp.state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    embeddings = F.normalize(torch.randn(5, WIDTH), dim=-1)
    want = mlp.layers(embeddings)[:, 0]
    head = load_head("aesthetic", models["aesthetic"], WIDTH)
    assert torch.allclose(head(embeddings), want, atol=1e-6)
    from_pth = load_head("aesthetic", str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth"), WIDTH)
    assert torch.allclose(from_pth(embeddings), want, atol=1e-6)
    assert head.describe() == {"layout": "aesthetic", "weights": models["aesthetic"], "random_weights": True, "note": RANDOM_NOTE, "input_width": WIDTH}
    assert from_pth.describe()["random_weights"] is False  # a .pth carries no marker


def test_nsfw_head_layout_by_hand(models):
    from safetensors.torch import load_file

    t = load_file(models["nsfw"])
    assert [tuple(t[f"{p}.weight"].shape) for p in ("dense", "dense_1", "dense_2", "dense_3")] == [(64, WIDTH), (512, 64), (256, 512), (1, 256)]
    x = F.normalize(torch.randn(4, WIDTH), dim=-1)
    h = (x - t["normalization.mean"]) / t["normalization.variance"].sqrt()
    for i, p in enumerate(("dense", "dense_1", "dense_2", "dense_3")):
        h = F.linear(h, t[f"{p}.weight"], t[f"{p}.bias"])
        h = torch.relu(h) if i < 3 else torch.sigmoid(h)
    scores = load_head("nsfw", models["nsfw"])(x)
    assert torch.allclose(scores, h[:, 0], atol=1e-6) and ((scores > 0) & (scores < 1)).all()


def test_head_errors(models, tmp_path):
    def message(name, path, width=None) -> str:
        with pytest.raises(HeadError) as e:
            load_head(name, str(path), width)
        return str(e.value)

    assert message("nsfw", tmp_path / "gone.safetensors") == f"nsfw head weights not found: {tmp_path}/gone.safetensors"
    assert message("nsfw", models["nsfw"], 768) == f"nsfw head {models['nsfw']} takes 64-wide embeddings, the CLIP model gives 768"
    assert message("aesthetic", models["nsfw"]) == (
        f"{models['nsfw']} is not the aesthetic head's layout (layers.0, layers.2, layers.4, layers.6, layers.7): "
        "missing layers.0.weight, layers.0.bias, layers.2.weight, layers.2.bias, layers.4.weight, layers.4.bias, layers.6.weight, "
        "layers.6.bias, layers.7.weight, layers.7.bias; unexpected dense.bias, dense.weight, dense_1.bias, dense_1.weight, dense_2.bias, "
        "dense_2.weight, dense_3.bias, dense_3.weight, normalization.mean, normalization.variance"
    )
    state = released_aesthetic_mlp(WIDTH).state_dict()
    state["layers.4.weight"] = state["layers.4.weight"][:, :100]
    torch.save(state, tmp_path / "bad.pth")
    assert message("aesthetic", tmp_path / "bad.pth") == (
        f"{tmp_path}/bad.pth is not the aesthetic head's layout (layers.0, layers.2, layers.4, layers.6, layers.7): "
        "layers.4 has weight (64, 100) and bias (64,) after width 128"
    )
    torch.save({"model": released_aesthetic_mlp(WIDTH)}, tmp_path / "pickled.pth")  # a whole module: not weights-only
    assert message("aesthetic", tmp_path / "pickled.pth").startswith(f"{tmp_path}/pickled.pth did not load: UnpicklingError: ")
    (tmp_path / "cut.safetensors").write_bytes(b"cut")
    assert message("nsfw", tmp_path / "cut.safetensors").startswith(f"{tmp_path}/cut.safetensors did not load: SafetensorError: ")


def test_one_decode_and_one_image_forward_per_image_for_all_four_scores(models, tmp_path, monkeypatch):
    calls = {"open": 0, "encode_image": [], "watermark": []}
    encode_image, detect, image_open = open_clip.CLIP.encode_image, WatermarkDetector.__call__, PIL.Image.open

    def counting_encode(self, image, *args, **kwargs):
        calls["encode_image"].append(image.shape[0])
        return encode_image(self, image, *args, **kwargs)

    def counting_detect(self, pixels):
        calls["watermark"].append(pixels.shape[0])
        return detect(self, pixels)

    def counting_open(*args, **kwargs):
        calls["open"] += 1
        return image_open(*args, **kwargs)

    monkeypatch.setattr(open_clip.CLIP, "encode_image", counting_encode)
    monkeypatch.setattr(WatermarkDetector, "__call__", counting_detect)
    monkeypatch.setattr(PIL.Image, "open", counting_open)
    blobs = images()
    rows = [{"uid": f"u{i}", "caption": c, "image": b} for i, (b, c) in enumerate(zip(blobs, CAPTIONS))]
    rows.append({"uid": "bad", "caption": "x", "image": b"not an image"})
    heads = {"nsfw": models["nsfw"], "aesthetic": models["aesthetic"]}
    score = ScoreClip(models["clip"], batch_size=4, heads=heads, watermark=models["watermark"])
    with beam.Pipeline(runner="FnApiRunner") as p:  # in process: the patched classes are the ones that run
        p | beam.Create(rows) | score | beam.Map(json.dumps) | beam.io.WriteToText(str(tmp_path / "s"))
    found = dict(json.loads(line) for path in tmp_path.glob("s*") for line in path.read_text().splitlines())
    assert calls["open"] == len(rows)  # every image opened once, the bad one included, for CLIP and the detector both
    assert sum(calls["encode_image"]) == sum(calls["watermark"]) == len(blobs)  # the 6 decodable images, once each
    assert found.pop("bad") is None
    monkeypatch.undo()
    from safetensors.torch import load_file

    want = released_scores(released_model(load_file(models["watermark"])), blobs)
    assert [found[f"u{i}"]["watermark_score"] for i in range(6)] == pytest.approx(want, abs=1e-6)
    scorer = load_scorer(models["clip"], None)
    pixels = torch.stack([scorer.preprocess(blob) for blob in blobs])
    sims, embeddings = scorer.score_and_embed(pixels, scorer.tokenize(CAPTIONS))
    for name in ("nsfw", "aesthetic"):
        want = load_head(name, models[name], WIDTH)(embeddings).tolist()
        assert [found[f"u{i}"][f"{name}_score"] for i in range(6)] == pytest.approx(want, abs=1e-5)
    assert [found[f"u{i}"]["clip_score"] for i in range(6)] == pytest.approx(sims.tolist(), abs=1e-5)


def test_score_reject_both_outcomes_of_each_filter(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("[default]\nnsfw_max = 0.3\naesthetic_min = 5.0\nwatermark_max = 0.5\n")
    cfg = load_config(["s"], str(path))["s"]
    ok = {"clip_score": 0.3, "nsfw_score": 0.3, "aesthetic_score": 5.0, "watermark_score": 0.5}
    assert stage1.score_reject(ok, 0.28, cfg) is None
    assert stage1.score_reject({"clip_score": 0.3}, 0.28, cfg) is None  # no head ran: only CLIP decides
    nsfw = stage1.score_reject({**ok, "nsfw_score": 0.31}, 0.28, cfg)
    assert (nsfw.reason, nsfw.detail) == (reasons.NSFW, "nsfw_score 0.3100 > nsfw_max 0.3000") == ("nsfw", nsfw.detail)
    low = stage1.score_reject({**ok, "aesthetic_score": 4.5}, 0.28, cfg)
    assert (low.reason, low.detail) == ("aesthetic_low", "aesthetic_score 4.5000 < aesthetic_min 5.0000")
    marked = stage1.score_reject({**ok, "watermark_score": 0.5001}, 0.28, cfg)
    assert (marked.reason, marked.detail) == (reasons.WATERMARK, "watermark_score 0.5001 > watermark_max 0.5000") == ("watermark", marked.detail)
    first = stage1.score_reject({"clip_score": 0.1, "nsfw_score": 0.9, "aesthetic_score": 1.0, "watermark_score": 0.9}, 0.28, cfg)
    assert (first.reason, first.detail) == ("clip_score", "0.1000 < 0.2800")  # reason order: CLIP first
    assert stage1.score_reject({**ok, "aesthetic_score": 1.0, "watermark_score": 0.9}, 0.28, cfg).reason == "aesthetic_low"  # watermark last
    assert reasons.STAGE1_REASONS[-5:] == ("clip_score", "nsfw", "aesthetic_low", "watermark", "semantic_duplicate")


def test_histograms_are_bounded_bins_per_source_and_drawn(tmp_path):
    scores = [(("a", "s1", "f"), {"clip_score": 0.3, "nsfw_score": 0.2}), (("b", "s1", "f"), {"clip_score": 2.0, "nsfw_score": 0.2}),
              (("c", "s2", "f"), {"clip_score": -1.0, "watermark_score": 0.99}), (("d", "s2", "f"), None)]
    with beam.Pipeline(runner="FnApiRunner") as p:
        (p | beam.Create(scores) | ScoreHistograms() | beam.Map(json.dumps) | beam.io.WriteToText(str(tmp_path / "h")))
    found = {tuple(key): counts for key, counts in json.loads((tmp_path / "h-00000-of-00001").read_text())}
    assert set(found) == {("s1", "clip_score"), ("s1", "nsfw_score"), ("s2", "clip_score"), ("s2", "watermark_score")}
    assert all(len(counts) == BINS for counts in found.values())
    assert found[("s1", "clip_score")][score_bin("clip_score", 0.3)] == 1 and found[("s1", "clip_score")][BINS - 1] == 1  # 2.0: the end bin
    assert found[("s1", "nsfw_score")][8] == 2 and found[("s2", "clip_score")][0] == 1 and found[("s2", "watermark_score")][39] == 1
    settings = {"inputs": {"s1": {}, "s2": {}}, "thresholds": {"s1": {"language": "en"}, "s2": {"language": "en"}}}
    report = build_report([], [], settings, list(found.items()))
    assert report["score_histograms"]["s1"]["nsfw_score"] == {"range": [0.0, 1.0], "counts": found[("s1", "nsfw_score")]}
    assert report["score_histograms"]["s2"]["watermark_score"] == {"range": [0.0, 1.0], "counts": found[("s2", "watermark_score")]}
    write_score_charts(report, str(tmp_path / "scores.png"))
    with Image.open(tmp_path / "scores.png") as chart:
        assert chart.format == "PNG" and chart.width > 600


def stage1_usage_error(argv: list[str]) -> str:
    """The one-line message of the usage error stage 1 raises for `argv` before any work."""
    with pytest.raises(UsageError) as e:
        stage1.prepare(argv)
    return str(e.value)


def test_usage_errors(models, tmp_path):
    make_sample(str(tmp_path / "raw"), pairs=10, seed=1)
    base = ["--input", f"s={tmp_path / 'raw'}", "--output", str(tmp_path / "out")]

    def message(*extra) -> str:
        return stage1_usage_error(base + list(extra))

    assert message("--nsfw-model", models["nsfw"]) == "--nsfw-model needs --clip-model (the head runs on its image embeddings)"
    assert message("--aesthetic-model", models["aesthetic"]) == "--aesthetic-model needs --clip-model (the head runs on its image embeddings)"
    wide = save_random_head("aesthetic", tmp_path / "wide.safetensors", 768)
    assert message("--clip-model", models["clip"], "--aesthetic-model", wide) == f"aesthetic head {wide} takes 768-wide embeddings, the CLIP model gives 64"
    assert message("--clip-model", models["clip"], "--nsfw-model", str(tmp_path / "none.safetensors")) == f"nsfw head weights not found: {tmp_path}/none.safetensors"
    assert message("--watermark-model", models["watermark"]) == (
        "--watermark-model needs --clip-model (the detector runs in its inference step, on the image it decodes)"
    )
    assert message("--clip-model", models["clip"], "--watermark-model", models["nsfw"]).startswith(f"{models['nsfw']} is not the watermark model's layout")
    assert message("--clip-model", models["clip"], "--watermark-model", models["watermark"], "--clip-decode-on-device") == (
        "--watermark-model does not run with --clip-decode-on-device: the watermark detector takes the image decoded on the CPU, not on the device"
    )
    (tmp_path / "marks.toml").write_text("[default]\nwatermark_max = 1.5\n")
    assert message("--config", str(tmp_path / "marks.toml")) == "source s: watermark_max must be in [0, 1] (a probability), not 1.5"


def between(values: list[float], share: float) -> float:
    """A threshold halfway between two neighbouring distinct values, `share` of the way up: no score sits on it."""
    distinct = sorted(set(values))
    i = max(1, round(share * (len(distinct) - 1)))
    return (distinct[i - 1] + distinct[i]) / 2


def test_stage1_with_both_heads_and_the_watermark_detector(models, tmp_path):
    """A first run keeps every score; a second, with thresholds inside the scores found, rejects exactly the
    pairs above nsfw_max, then those below aesthetic_min, then those above watermark_max, each with its
    reason and detail."""
    make_sample(str(tmp_path / "raw"), pairs=120, seed=5, shard_size=60)
    heads = ["--clip-model", models["clip"], "--nsfw-model", models["nsfw"], "--aesthetic-model", models["aesthetic"],
             "--watermark-model", models["watermark"]]

    def run(name: str, config: str):
        (tmp_path / f"{name}.toml").write_text(f"[sources.laion-en]\nclip_min_score = -1.0\n{config}")
        argv = ["--input", f"laion-en={tmp_path / 'raw'}", "--output", str(tmp_path / name), "--config", str(tmp_path / f"{name}.toml")]
        report = stage1.run(argv + heads)
        return report, [pq.read_table(tmp_path / name / part).to_pylist() for part in ("curated", "rejected")]

    _, (scored, _) = run("all", "")
    assert scored and all(row[f"{name}_score"] is not None for row in scored for name in ("nsfw", "aesthetic", "watermark"))
    nsfw_max = between([row["nsfw_score"] for row in scored], 0.7)
    aesthetic_min = between([row["aesthetic_score"] for row in scored], 0.3)
    watermark_max = between([row["watermark_score"] for row in scored], 0.6)
    assert aesthetic_min >= 0.0  # the seed's head rates these images above 0 (the config's floor)
    report, (curated, rejected) = run("cut", f"nsfw_max = {nsfw_max}\naesthetic_min = {aesthetic_min}\nwatermark_max = {watermark_max}\n")

    def expected(row):
        if row["nsfw_score"] > nsfw_max:
            return "nsfw"
        if row["aesthetic_score"] < aesthetic_min:
            return "aesthetic_low"
        return "watermark" if row["watermark_score"] > watermark_max else "curated"

    outcome = {row["uid"]: "curated" for row in curated} | {row["uid"]: row["reason"] for row in rejected}
    assert {row["uid"]: outcome[row["uid"]] for row in scored} == {row["uid"]: expected(row) for row in scored}
    assert {"nsfw", "aesthetic_low", "watermark", "curated"} == {expected(row) for row in scored}
    by_uid = {row["uid"]: row for row in scored}
    for row in rejected:
        if row["reason"] == "nsfw":
            assert row["detail"] == f"nsfw_score {by_uid[row['uid']]['nsfw_score']:.4f} > nsfw_max {nsfw_max:.4f}"
        elif row["reason"] == "aesthetic_low":
            assert row["detail"] == f"aesthetic_score {by_uid[row['uid']]['aesthetic_score']:.4f} < aesthetic_min {aesthetic_min:.4f}"
        elif row["reason"] == "watermark":
            assert row["detail"] == f"watermark_score {by_uid[row['uid']]['watermark_score']:.4f} > watermark_max {watermark_max:.4f}"
    dropped = report["sources"]["laion-en"]["dropped"]
    found = ("nsfw", "aesthetic_low", "watermark")
    assert tuple(dropped[r] for r in found) == tuple(sum(expected(row) == r for row in scored) for r in found)
    histograms = report["score_histograms"]["laion-en"]
    assert {name: sum(h["counts"]) for name, h in histograms.items()} == {
        "aesthetic_score": len(scored), "clip_score": len(scored), "nsfw_score": len(scored), "watermark_score": len(scored)}
    text = format_report(report)
    assert f"WARNING: nsfw head: {RANDOM_NOTE}" in text and f"WARNING: aesthetic head: {RANDOM_NOTE}" in text
    assert f"watermark: weights {models['watermark']}, on each image CLIP decoded, resized to 256x256; watermark_max: laion-en {watermark_max:.4f}" in text
    assert f"WARNING: watermark model: {RANDOM_NOTE}" in text
    with Image.open(tmp_path / "cut" / "scores.png") as chart:
        assert chart.format == "PNG"
    (tmp_path / "cut" / "scores.png").unlink()
    assert beam_runner.main(["report", str(tmp_path / "cut")]) == 0  # the report command redraws it
    assert (tmp_path / "cut" / "scores.png").is_file()
