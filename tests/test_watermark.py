"""LAION's watermark detector (filters/watermark.py): the released network and transform, its weights in
.pt and safetensors, the layout errors, and the device decode it refuses. Its scores through Beam, one
decode per image, and stage 1 with it are in tests/test_score_heads.py, beside the heads."""

import io
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

import beam_runner
from filters.score_heads import RANDOM_NOTE, HeadError
from filters.watermark import load_watermark, preprocess, save_random_watermark
from pipelines.score_clip import WATERMARK_ON_DEVICE, ScoreClip
from tests.test_clip_score import images


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return save_random_watermark(tmp_path_factory.mktemp("watermark") / "watermark.safetensors", seed=3)


def released_model(state: dict) -> torch.nn.Module:
    """The network as LAION-5B-WatermarkDetection's inference.py (load_model) builds it, `state` loaded strictly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mapping deprecated model name efficientnet_b3a", UserWarning)  # timm 1.0: efficientnet_b3
        model = timm.create_model("efficientnet_b3a", pretrained=False, num_classes=2)
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(in_features=1536, out_features=625), torch.nn.ReLU(), torch.nn.Dropout(p=0.3),
        torch.nn.Linear(in_features=625, out_features=256), torch.nn.ReLU(), torch.nn.Linear(in_features=256, out_features=2),
    )
    model.load_state_dict(state)
    return model.eval()


def released_scores(model: torch.nn.Module, blobs: list[bytes]) -> list[float]:
    """P(watermark) as the release computes it (inference.py: its transforms, softmax, column 0), one image
    at a time, each opened with PIL and converted to RGB."""
    transform = T.Compose([T.Resize((256, 256)), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        return [F.softmax(model(transform(Image.open(io.BytesIO(blob)).convert("RGB")).unsqueeze(0)), dim=1)[0, 0].item() for blob in blobs]


def test_detector_is_the_released_network_and_reads_pt_too(weights, tmp_path):
    from safetensors.torch import load_file

    blobs = images()
    pixels = torch.stack([preprocess(Image.open(io.BytesIO(blob)).convert("RGB")) for blob in blobs])
    assert pixels.shape == (6, 3, 256, 256)
    detector, released = load_watermark(weights), released_model(load_file(weights))
    scores = detector(pixels)
    assert scores.tolist() == pytest.approx(released_scores(released, blobs), abs=1e-6)
    assert len(set(scores.tolist())) == 6 and ((scores > 0) & (scores < 1)).all()  # the random weights tell the images apart
    torch.save(released.state_dict(), tmp_path / "watermark_model_v1.pt")  # the release's file layout
    from_pt = load_watermark(str(tmp_path / "watermark_model_v1.pt"))
    assert torch.equal(from_pt(pixels), scores)
    architecture = "efficientnet_b3 (timm) with LAION's classifier"
    assert detector.describe() == {"layout": "watermark", "weights": weights, "random_weights": True, "note": RANDOM_NOTE,
                                   "architecture": architecture, "input_px": 256}
    assert from_pt.describe()["random_weights"] is False  # a .pt carries no marker


def test_same_seed_same_weights(weights, tmp_path):
    from safetensors.torch import load_file

    first, again = load_file(weights), load_file(save_random_watermark(tmp_path / "again.safetensors", seed=3))
    other = load_file(save_random_watermark(tmp_path / "other.safetensors", seed=4))
    assert sorted(first) == sorted(again) == sorted(other)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["classifier.5.weight"], other["classifier.5.weight"])
    assert not torch.equal(first["bn1.running_mean"], other["bn1.running_mean"])  # the noise batch follows the seed too


def test_layout_errors_are_one_line(weights, tmp_path):
    def message(path) -> str:
        with pytest.raises(HeadError) as e:
            load_watermark(str(path))
        assert "\n" not in str(e.value)
        return str(e.value)

    layout = "is not the watermark model's layout (timm efficientnet_b3, classifier.0/.3/.5)"
    assert message(tmp_path / "gone.pt") == f"watermark model weights not found: {tmp_path}/gone.pt"
    torch.save(timm.create_model("efficientnet_b3", pretrained=False, num_classes=2).state_dict(), tmp_path / "timm.pt")  # timm's own head
    assert message(tmp_path / "timm.pt") == (
        f"{tmp_path}/timm.pt {layout}: missing classifier.0.weight, classifier.0.bias, classifier.3.weight, classifier.3.bias, "
        "classifier.5.weight, classifier.5.bias; unexpected classifier.bias, classifier.weight"
    )
    from safetensors.torch import load_file

    state = load_file(weights)
    state["classifier.5.weight"], state["classifier.5.bias"] = torch.zeros(3, 256), torch.zeros(3)
    torch.save(state, tmp_path / "three.pt")
    assert message(tmp_path / "three.pt") == (
        f"{tmp_path}/three.pt {layout}: classifier.5.weight has shape (3, 256), not (2, 256), classifier.5.bias has shape (3,), not (2,)"
    )
    torch.save({"classifier.0.weight": torch.zeros(625, 1536)}, tmp_path / "part.pt")
    assert message(tmp_path / "part.pt") == (
        f"{tmp_path}/part.pt {layout}: missing conv_stem.weight, bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var, "
        "bn1.num_batches_tracked, blocks.0.0.conv_dw.weight, blocks.0.0.bn1.weight, blocks.0.0.bn1.bias, blocks.0.0.bn1.running_mean, "
        "blocks.0.0.bn1.running_var, blocks.0.0.bn1.num_batches_tracked, ... (577 in all)"
    )
    (tmp_path / "cut.safetensors").write_bytes(b"cut")
    assert message(tmp_path / "cut.safetensors").startswith(f"{tmp_path}/cut.safetensors did not load: SafetensorError: ")


def test_refused_with_decode_on_device(weights):
    with pytest.raises(ValueError) as e:
        ScoreClip("local-dir:unused", decode_on_device=True, watermark=weights)
    assert str(e.value) == WATERMARK_ON_DEVICE == "the watermark detector takes the image decoded on the CPU, not on the device"


def test_make_score_heads_writes_it_beside_the_heads(tmp_path, capsys):
    assert beam_runner.main(["make-score-heads", "--output", str(tmp_path), "--seed", "3"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["aesthetic.safetensors", "nsfw.safetensors", "watermark.safetensors"]
    assert f"wrote a random-weight watermark detector: --watermark-model {tmp_path}/watermark.safetensors" in capsys.readouterr().out
    assert load_watermark(str(tmp_path / "watermark.safetensors")).describe()["random_weights"] is True
