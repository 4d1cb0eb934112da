import io
import json
import re
from pathlib import Path

import apache_beam as beam
import open_clip
import pytest
import torch
import torch.nn.functional as F
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from filters.clip_score import RANDOM_NOTE, ClipError, load_preprocessor, load_scorer, save_random_model
from pipelines.score_clip import ScoreClip

# torchvision 0.29 deprecates its JPEG decoder (the device-decode path); pytest resets the module's filter
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")

CAPTIONS = ["a red square on a white wall", "mandelbrot fractal", "noise", "", "两只猫在沙发上睡觉", "a very long caption " * 30]


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def images() -> list[bytes]:
    """Small images of varied content, size, mode and format."""
    mandelbrot = Image.effect_mandelbrot((320, 240), (-2, -1.5, 1, 1.5), 80)
    return [
        encode(Image.new("RGB", (300, 200), (200, 30, 30)), "JPEG"),
        encode(mandelbrot.convert("RGB"), "JPEG"),
        encode(Image.effect_noise((256, 256), 60), "PNG"),  # grey
        encode(Image.linear_gradient("L").resize((230, 500)).convert("RGBA"), "PNG"),  # alpha, tall
        encode(mandelbrot.convert("P"), "PNG"),  # palette
        encode(Image.radial_gradient("L").resize((400, 300)).convert("RGB"), "WEBP"),
    ]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return save_random_model(tmp_path_factory.mktemp("clip") / "tiny")


def direct_scores(model: str, blobs: list[bytes], captions: list[str]) -> list[float]:
    """The reference: open_clip by hand on the same folder, one pair at a time."""
    clip, _, preprocess = open_clip.create_model_and_transforms(model)
    tokenizer = open_clip.get_tokenizer(model)
    clip.eval()
    scores = []
    with torch.no_grad():
        for blob, caption in zip(blobs, captions):
            image = preprocess(Image.open(io.BytesIO(blob)).convert("RGB")).unsqueeze(0)
            image_emb = F.normalize(clip.encode_image(image), dim=-1)
            text_emb = F.normalize(clip.encode_text(tokenizer([caption])), dim=-1)
            scores.append((image_emb @ text_emb.T).item())
    return scores


def run_score_clip(model: str, rows: list[dict], out: Path, key="uid", **kwargs) -> dict:
    """ScoreClip in a real pipeline: {key: score}, one output per input row."""
    keys = [row[key] if isinstance(key, str) else tuple(row[field] for field in key) for row in rows]
    with beam.Pipeline(runner="FnApiRunner") as p:
        scores = p | beam.Create(rows) | ScoreClip(model, key=key, **kwargs)
        assert_that(scores | beam.Map(lambda pair: pair[0]), equal_to(keys))
        scores | beam.Map(json.dumps) | beam.io.WriteToText(str(out / "scores"))
    pairs = [json.loads(line) for path in out.glob("scores*") for line in path.read_text().splitlines()]
    return {tuple(k) if isinstance(k, list) else k: scores and scores["clip_score"] for k, scores in pairs}


def test_random_model_loads_back_and_says_so(model):
    scorer = load_scorer(model, None)
    folder = model.removeprefix("local-dir:")
    assert scorer.describe() == {
        "model": model,
        "weights": f"{folder}/open_clip_model.safetensors",
        "precision": "fp32",
        "device": "cpu",
        "random_weights": True,
        "note": RANDOM_NOTE,
    }
    assert RANDOM_NOTE == "randomly initialised test model: its scores mean nothing"
    config = json.loads(open(f"{folder}/open_clip_config.json").read())
    assert config["model_cfg"]["text_cfg"]["vocab_size"] == 49408  # open_clip's own BPE tokenizer fits
    pixels = torch.stack([scorer.preprocess(blob) for blob in images()])
    assert pixels.shape == (6, 3, 224, 224)
    scores = scorer.score(pixels, scorer.tokenize(CAPTIONS))
    assert all(isinstance(s, float) and -1.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) == 6


def test_same_seed_same_weights(tmp_path):
    a = load_scorer(save_random_model(tmp_path / "a", seed=3), None)
    b = load_scorer(save_random_model(tmp_path / "b", seed=3), None)
    c = load_scorer(save_random_model(tmp_path / "c", seed=4), None)
    pixels, tokens = a.preprocess(images()[1]).unsqueeze(0), a.tokenize(["x"])
    assert a.score(pixels, tokens) == b.score(pixels, tokens) != c.score(pixels, tokens)


def test_preprocessor_without_weights_matches_the_scorer(model):
    pre, scorer = load_preprocessor(model, None), load_scorer(model, None)
    for blob in images():
        assert torch.equal(pre.preprocess(blob), scorer.preprocess(blob))
    assert torch.equal(pre.tokenize(CAPTIONS), scorer.tokenize(CAPTIONS))


def test_undecodable_bytes_give_none(model):
    pre = load_preprocessor(model, None)
    good = images()[1]
    for bad in (b"", b"not an image", good[: len(good) // 2], b"\x89PNG\r\n\x1a\n" + b"\0" * 50):
        assert pre.preprocess(bad) is None


def test_score_clip_in_beam_equals_open_clip_by_hand(model, tmp_path):
    blobs = images()
    rows = [{"uid": f"u{i}", "caption": c, "image": b, "source": "s"} for i, (b, c) in enumerate(zip(blobs, CAPTIONS))]
    rows.insert(3, {"uid": "bad", "caption": "a broken file", "image": b"\xff\xd8\xff\xe0 truncated"})
    found = run_score_clip(model, rows, tmp_path, batch_size=4)  # batches of 4 and 3: padding never leaks
    assert found.pop("bad") is None
    expected = direct_scores(model, blobs, CAPTIONS)
    assert sorted(found) == [f"u{i}" for i in range(6)]
    for i, want in enumerate(expected):
        assert found[f"u{i}"] == pytest.approx(want, abs=1e-5)


def test_decode_on_device_path_is_close_to_pil(model, tmp_path):
    # keyed by (uid, source) this time, torch_threads set. On CPU this path is torchvision's libjpeg-turbo decode and torch's
    # resize: resampling differs from PIL's a little, so JPEG scores agree to ~1e-3, not exactly; other
    # formats take the PIL path unchanged
    blobs = images()
    rows = [{"uid": f"u{i}", "source": "s", "caption": c, "image": b} for i, (b, c) in enumerate(zip(blobs, CAPTIONS))]
    rows.append({"uid": "bad", "source": "s", "caption": "x", "image": blobs[1][:300]})
    threads = torch.get_num_threads()
    try:
        found = run_score_clip(model, rows, tmp_path, key=("uid", "source"), batch_size=3, decode_on_device=True, torch_threads=1)
        assert torch.get_num_threads() == 1  # the in-process runner's worker is this process
    finally:
        torch.set_num_threads(threads)
    assert found.pop(("bad", "s")) is None
    expected = direct_scores(model, blobs, CAPTIONS)
    for i, want in enumerate(expected):
        is_jpeg = blobs[i][:3] == b"\xff\xd8\xff"
        assert found[(f"u{i}", "s")] == pytest.approx(want, abs=2e-3 if is_jpeg else 1e-5)


def test_errors(tmp_path, model):
    def message(*args) -> str:
        with pytest.raises(ClipError) as e:
            load_scorer(*args)
        return str(e.value)

    assert message("ViT-B-32", None) == (
        "CLIP model 'ViT-B-32' has no weights: name an open_clip pretrained tag (openai, laion400m_e31, "
        "laion400m_e32, ...) or a weights file; random weights are refused"
    )
    assert message("ViT-B-32", str(tmp_path / "gone.safetensors")) == (
        f"CLIP weights '{tmp_path}/gone.safetensors' for 'ViT-B-32': neither an open_clip pretrained tag "
        "(openai, laion400m_e31, laion400m_e32, ...) nor a file"
    )
    assert message("ViT-X-99", "openai") == "unknown CLIP model 'ViT-X-99': neither an open_clip model name nor local-dir:PATH"
    assert message(f"local-dir:{tmp_path}/nowhere", None) == f"CLIP model folder not found: {tmp_path}/nowhere"
    assert message(f"local-dir:{tmp_path}", None) == f"CLIP model folder {tmp_path} has no open_clip_config.json"
    assert message(model, "openai") == f"CLIP model {model!r} holds its own weights: pretrained must not be given"
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "open_clip_config.json").write_text(open(f"{model.removeprefix('local-dir:')}/open_clip_config.json").read())
    assert message(f"local-dir:{no_weights}", None) == f"CLIP model folder {no_weights} has no weights file (open_clip_model.safetensors)"
    (no_weights / "open_clip_config.json").write_text("{}")
    assert message(f"local-dir:{no_weights}", None) == f"{no_weights}/open_clip_config.json has no model_cfg"
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"cut")  # shorter than the 8-byte header length
    assert message("ViT-B-32", str(corrupt)) == (
        f"CLIP model 'ViT-B-32' with weights '{corrupt}' did not load: SafetensorError: Error while deserializing header: header too small"
    )
    assert message(model, None, "cpu", "fp8") == "CLIP precision 'fp8': one of fp32, bf16, fp16"
    if not torch.cuda.is_available():
        assert message(model, None, "cuda") == "CLIP device 'cuda': torch sees no CUDA device"
    with pytest.raises(ClipError, match=re.escape("has no weights")):
        load_preprocessor("ViT-L-14", None)  # the CPU side refuses too, before any work


def test_a_model_on_a_remote_filesystem_is_copied_once_and_scores_the_same(model, tmp_path, monkeypatch):
    """gs://bucket/... served from a local folder through pyarrow's filesystem, as a worker would read it."""
    import pyarrow.fs as pafs

    import formats.files

    bucket = Path(model.removeprefix("local-dir:")).parent
    real_resolve = formats.files._resolve

    def resolve(path):
        if path.startswith("gs://bucket/"):
            return pafs.LocalFileSystem(), str(bucket / path.removeprefix("gs://bucket/"))
        return real_resolve(path)

    monkeypatch.setattr(formats.files, "_resolve", resolve)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "worker-tmp"))
    (tmp_path / "worker-tmp").mkdir()
    remote = f"local-dir:gs://bucket/{Path(model.removeprefix('local-dir:')).name}"
    scorer = load_scorer(remote, None)
    copied = list((tmp_path / "worker-tmp" / "qwen-vl-data-models").glob("*/*"))
    assert [sorted(p.name for p in c.iterdir()) for c in copied] == [["open_clip_config.json", "open_clip_model.safetensors"]]
    assert scorer.describe()["model"] == remote and scorer.describe()["weights"] == f"{copied[0]}/open_clip_model.safetensors"
    assert scorer.describe()["random_weights"] is True
    mtime = (copied[0] / "open_clip_model.safetensors").stat().st_mtime_ns
    load_preprocessor(remote, None)  # a second load on the machine takes the copy
    assert (copied[0] / "open_clip_model.safetensors").stat().st_mtime_ns == mtime
    local = load_scorer(model, None)
    pixels, tokens = local.preprocess(images()[0]).unsqueeze(0), local.tokenize(["a red square"])
    assert scorer.score(pixels, tokens) == local.score(pixels, tokens)
