"""LAION's watermark detector: the probability that an image carries a watermark, from its pixels.

The released model, as github.com/LAION-AI/LAION-5B-WatermarkDetection builds and runs it (checked in
inference.py, load_model and inference, and example_use.py):
- timm's `efficientnet_b3a` with num_classes=2, its `classifier` replaced by nn.Sequential(Linear(1536,
  625), ReLU, Dropout(0.3), Linear(625, 256), ReLU, Linear(256, 2)): state-dict names `classifier.0`,
  `classifier.3`, `classifier.5`. timm 1.0 maps the name `efficientnet_b3a` to `efficientnet_b3` (the
  same network; timm/models/efficientnet.py, _deprecated_models), which is built here, without
  pretrained weights: the file's state dict replaces them all, loaded strictly.
- input: T.Resize((256, 256)), T.ToTensor(), T.Normalize(ImageNet's mean and std) on the PIL image;
- score: softmax of the two logits, column 0 ("P Watermark"; column 1 is "P Clean"), in [0, 1].
Its released weights are `models/watermark_model_v1.pt`, a torch state dict, read here with
torch.load(weights_only=True); safetensors works too. A file is read by filters/score_heads.py's
read_weights (the random-weights marker, describe()'s fields), and one of another layout is a one-line
HeadError. The image given is the one CLIP's preprocessing decoded, in RGB (pipelines/score_clip.py: one
decode per image for every score); the release opens it as it is, the same for an RGB JPEG.

`save_random_watermark` writes the architecture with random weights, marked random, for tests and the demo.
"""

from pathlib import Path

import timm
import torch
from PIL import Image
from torchvision import transforms as T

from filters.score_heads import HeadError, listed, name_problems, random_metadata, read_weights

NAME = "watermark"  # the score's name: `watermark_score` in curated rows
ARCHITECTURE = "efficientnet_b3"  # timm's name for the release's `efficientnet_b3a`
INPUT_PX = 256
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREPROCESS = T.Compose([T.Resize((INPUT_PX, INPUT_PX)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def preprocess(image: Image.Image) -> torch.Tensor:
    """A decoded RGB image -> the model's [3, 256, 256] input (the release's transform)."""
    return PREPROCESS(image)


def build_model() -> torch.nn.Module:
    """The release's network, with timm's random initialisation (no download)."""
    model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=2)
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(1536, 625), torch.nn.ReLU(), torch.nn.Dropout(p=0.3),
        torch.nn.Linear(625, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2),
    )
    return model


class WatermarkDetector:
    """The loaded model in eval mode, fp32 on every device (bf16 on a GPU is not measured): [B, 3, 256,
    256] preprocessed images -> B watermark probabilities, on its device. Its convolutions run
    channels-last (NHWC): on the busy 2-core CPU machine a batch of 32 took 6.4 s, 8.6 s contiguous."""

    def __init__(self, model: torch.nn.Module, info: dict):
        self.model, self.info, self.device = model.eval().to(memory_format=torch.channels_last), info, "cpu"

    def to(self, device) -> "WatermarkDetector":
        self.model, self.device = self.model.to(device), device
        return self

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = self.model(pixels.to(self.device, memory_format=torch.channels_last, non_blocking=True))  # (B, 2)
        return logits.float().softmax(dim=-1)[:, 0]

    def describe(self) -> dict:
        """What scored, for the report: layout, weights, random_weights, note, architecture, input_px."""
        return dict(self.info, architecture=f"{ARCHITECTURE} (timm) with LAION's classifier", input_px=INPUT_PX)


def _problems(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> list[str]:
    """What in `tensors` does not fit the network's state dict: names, then shapes."""
    found = name_problems(list(expected), tensors)
    if found:
        return found
    wrong = [f"{n} has shape {tuple(tensors[n].shape)}, not {tuple(t.shape)}" for n, t in expected.items() if tensors[n].shape != t.shape]
    return [listed(wrong)] if wrong else []


def load_watermark(path: str) -> WatermarkDetector:
    """The detector from a weights file in the release's layout (module docstring), on the CPU. A file on
    gs://, s3:// or hdfs:// is copied to this machine first, once. Raises HeadError."""
    tensors, info = read_weights(NAME, "watermark model", path)
    model = build_model()
    problems = _problems(model.state_dict(), tensors)
    if problems:
        raise HeadError(f"{path} is not the watermark model's layout (timm {ARCHITECTURE}, classifier.0/.3/.5): {'; '.join(problems)}")
    model.load_state_dict(tensors, strict=True)
    return WatermarkDetector(model, info)


def save_random_watermark(path: str | Path, seed: int = 0) -> str:
    """Write the network with random weights as safetensors, marked random, and return its path. As timm
    initialises it, every image would score the same: with batch norm's initial statistics the
    activations vanish through the 26 blocks. So the statistics come from one batch of noise images, and
    each residual block's branch starts at zero (its last batch norm's weight, as ResNet's zero-init):
    the blocks that change shape remain, shallow enough that the scores differ from image to image
    (0.3-0.7 on the tests' and make-sample's images) and do not depend on the batch beyond float rounding."""
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model()
        for block in (block for stage in model.blocks for block in stage if block.has_skip):
            torch.nn.init.zeros_(getattr(block, "bn3", block.bn2).weight)  # InvertedResidual's last norm, or DepthwiseSeparableConv's
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            norm.momentum = None  # the statistics of the one batch, not a running blend with the initial ones
        with torch.no_grad():
            model.train()(torch.randn(8, 3, INPUT_PX, INPUT_PX))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in model.state_dict().items()}, str(path), metadata=random_metadata(seed))
    return str(path)
