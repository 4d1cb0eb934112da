"""CLIP score of an image-text pair with open_clip: plain torch, no Beam.

The score is the cosine similarity of the L2-normalised image and text embeddings, a float in [-1, 1]: not
multiplied by the model's logit_scale and not x100. LAION-400M's threshold of 0.28 for ViT-B-32 is on this
scale (CLIPScore papers that quote 28 or 30 mean x100).

Preprocessing and tokenizing are open_clip's own (the eval transform of create_model_and_transforms and
get_tokenizer), never rewritten here. The weights must be named: a built-in open_clip name needs a
pretrained tag (a hub download, only when a user names one) or a weights file, and a `local-dir:PATH`
folder (open_clip 3.3's layout: open_clip_config.json and open_clip_model.safetensors) or an
`hf-hub:ORG/REPO` holds its own. Scoring with random weights is refused, except for a folder written by
`save_random_model`, which describe() marks random_weights with a note that its scores mean nothing.

Precision: bf16 by default on CUDA (open_clip's "bf16": the model cast to bf16 with its layer norms
computing in fp32, the OpenAI recipe, which runs faster than autocast; bench/clip_score.py measures it),
fp32 on CPU. The embeddings are normalised and compared in fp32.
"""

import io
import json
import logging
import warnings
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import ToTensor

from formats.files import local_copy

LOCAL_DIR = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")  # what open_clip looks for in a local-dir folder
PRECISIONS = ("fp32", "bf16", "fp16")
MARKER = "qwen_vl_data"  # top-level key of open_clip_config.json that save_random_model writes
RANDOM_NOTE = "randomly initialised test model: its scores mean nothing"
SCALE_NOTE = "cosine similarity of the L2-normalised image and text embeddings, in [-1, 1] (not x100)"
JPEG_MAGIC = b"\xff\xd8\xff"

# torchvision 0.29 deprecates its image decoders for torchcodec (not a dependency); the pinned one works
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)

# save_random_model's architecture: tiny towers, but open_clip's real 224 px preprocessing and its BPE
# tokenizer (vocab 49408, 77 tokens), so the work around the model is what a real one costs.
TINY_MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 64, "head_width": 32, "layers": 2},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
DEFAULT_PREPROCESS_CFG = {  # open_clip's defaults (OpenAI's mean and std), written out so the folder says them
    "size": 224,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}


class ClipError(ValueError):
    """A CLIP model or weights that cannot be used (one line, for a usage error)."""


class ClipPreprocessor:
    """open_clip's eval transform and tokenizer: what a CPU worker needs before the model."""

    def __init__(self, transform, tokenizer):
        self.transform, self.tokenizer = transform, tokenizer

    @staticmethod
    def decode(image_bytes: bytes) -> Image.Image | None:
        """Encoded image -> RGB PIL image; None when the bytes do not decode (never raises)."""
        try:
            return Image.open(io.BytesIO(image_bytes)).convert("RGB")
        except Exception:  # PIL raises OSError, ValueError, DecompressionBombError, SyntaxError...
            return None

    def preprocess(self, image_bytes: bytes) -> torch.Tensor | None:
        """Encoded image -> [3, H, W] float tensor; None when the bytes do not decode (never raises)."""
        image = self.decode(image_bytes)
        return None if image is None else self.transform(image)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Captions -> [B, context_length] token ids."""
        return self.tokenizer(captions)


class ClipScorer(ClipPreprocessor):
    """An open_clip model in eval mode on its device, with its preprocessing: scores pairs."""

    def __init__(self, model, transform, tokenizer, device: str, precision: str, info: dict):
        super().__init__(transform, tokenizer)
        self.model = model.eval()
        self.device, self.precision, self.info = device, precision, info
        self.input_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)

    @property
    def embed_width(self) -> int:
        """The width of the image embedding (open_clip's embed_dim: 768 for ViT-L-14)."""
        return self.model.visual.output_dim

    def score(self, images: torch.Tensor, tokens: torch.Tensor) -> list[float]:
        """[B, 3, H, W] preprocessed images and [B, L] tokens -> B cosine similarities in [-1, 1]."""
        return self.score_and_embed(images, tokens)[0].cpu().tolist()

    def score_and_embed(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `score`, with one image forward: (the B similarities, the [B, D] L2-normalised fp32 image
        embeddings, on the device, for the heads of filters/score_heads.py)."""
        with torch.inference_mode():
            image = self.model.encode_image(images.to(self.device, self.input_dtype, non_blocking=True))
            text = self.model.encode_text(tokens.to(self.device, non_blocking=True))
            image = F.normalize(image.float(), dim=-1)
            sims = (image * F.normalize(text.float(), dim=-1)).sum(dim=-1)
        return sims.clamp(-1.0, 1.0), image

    def preprocess_on_device(self, images: list[bytes]) -> list[torch.Tensor | None]:
        """Like `preprocess` for a batch, with JPEGs decoded by torchvision on the model's device (nvJPEG on
        CUDA), then open_clip's transform applied to the uint8 tensor on that device; other formats, and
        JPEGs that fail there, go through PIL. On CPU this is libjpeg-turbo and torch's resize, within
        ~1e-3 of the PIL path's scores. NOT MEASURED OR TESTED ON A GPU in this repo (no GPU here)."""
        out: list[torch.Tensor | None] = [None] * len(images)
        jpegs = [i for i, data in enumerate(images) if data[:3] == JPEG_MAGIC]
        for i, pixels in zip(jpegs, self._decode_jpegs([images[i] for i in jpegs])):
            if pixels is not None:
                out[i] = self._transform_tensor(pixels)
        for i, data in enumerate(images):
            if out[i] is None:
                pixels = self.preprocess(data)
                out[i] = None if pixels is None else pixels.to(self.device)
        return out

    def _decode_jpegs(self, images: list[bytes]) -> list[torch.Tensor | None]:
        """uint8 [3, H, W] tensors on the device, one call for the batch; one bad file only fails itself."""
        if not images:
            return []
        data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in images]
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            decoded = []
            for one in data:
                try:
                    decoded.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    decoded.append(None)
            return decoded

    def _transform_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        """open_clip's transform on a uint8 tensor: resize and crop in uint8 as PIL does, then ToTensor's
        scaling to [0, 1] (its tensor pass-through skips it), then the rest (Normalize)."""
        for step in self.transform.transforms:
            pixels = pixels.float().div_(255) if isinstance(step, ToTensor) else step(pixels)
        return pixels

    def describe(self) -> dict:
        """What scored, for the report: model, weights origin, precision, device, random_weights, note."""
        return dict(self.info, precision=self.precision, device=str(self.device))


def _builtin_weights(model: str, pretrained: str | None) -> str:
    """The weights origin of a built-in name, checked: a known tag, or a file that exists."""
    if model not in open_clip.list_models():
        raise ClipError(f"unknown CLIP model {model!r}: neither an open_clip model name nor {LOCAL_DIR}PATH")
    tags = open_clip.list_pretrained_tags_by_model(model)
    known = ", ".join(tags[:3] + ["..."] if len(tags) > 3 else tags) or "none known"
    if not pretrained:
        raise ClipError(f"CLIP model {model!r} has no weights: name an open_clip pretrained tag ({known}) or a weights file; random weights are refused")
    if not open_clip.get_pretrained_cfg(model, pretrained) and not Path(pretrained).is_file():
        raise ClipError(f"CLIP weights {pretrained!r} for {model!r}: neither an open_clip pretrained tag ({known}) nor a file")
    return pretrained


def _local_dir_weights(folder: Path) -> tuple[str, bool]:
    """(weights file, random_weights marker) of a local-dir folder, checked."""
    if not folder.is_dir():
        raise ClipError(f"CLIP model folder not found: {folder}")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ClipError(f"CLIP model folder {folder} has no {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClipError(f"{config_path} is not readable JSON: {e}") from None
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise ClipError(f"{config_path} has no model_cfg")
    weights = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        raise ClipError(f"CLIP model folder {folder} has no weights file ({WEIGHTS_FILE})")
    chosen = folder / WEIGHTS_FILE if (folder / WEIGHTS_FILE).is_file() else weights[0]
    marker = config.get(MARKER)
    return str(chosen), isinstance(marker, dict) and marker.get("random_weights") is True


def check_model(model: str, pretrained: str | None) -> dict:
    """Check a model and its weights without loading them (cheap, for a launcher): the describe() fields
    that follow from them (model, weights, random_weights, note). Raises ClipError."""
    random_weights = False
    if model.startswith(LOCAL_DIR):
        if pretrained:
            raise ClipError(f"CLIP model {model!r} holds its own weights: pretrained must not be given")
        weights, random_weights = _local_dir_weights(Path(model[len(LOCAL_DIR) :]))
    elif model.startswith("hf-hub:"):
        if pretrained:
            raise ClipError(f"CLIP model {model!r} holds its own weights: pretrained must not be given")
        weights = model
    else:
        weights = _builtin_weights(model, pretrained)
    note = RANDOM_NOTE if random_weights else SCALE_NOTE
    return {"model": model, "weights": weights, "random_weights": random_weights, "note": note}


class _DropRandomInitWarning(logging.Filter):
    """load_preprocessor builds the model without weights on purpose; open_clip's warning would mislead."""

    def filter(self, record):
        return not str(record.msg).startswith("No pretrained weights loaded")


def local_model(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """`model` and `pretrained` with a remote folder (local-dir:gs://...) or weights file (gs://, s3://)
    copied to this machine once (formats.files.local_copy); names and tags as they are."""
    if model.startswith(LOCAL_DIR):
        model = LOCAL_DIR + local_copy(model[len(LOCAL_DIR) :])
    return model, pretrained and local_copy(pretrained)


def load_preprocessor(model: str, pretrained: str | None) -> ClipPreprocessor:
    """The transform and tokenizer of `model` without its weights (built on torch's meta device: no
    memory, no time), for CPU workers that only preprocess. Same checks as load_scorer. With a pretrained
    tag, open_clip still fetches the weights file (from its cache once load_scorer has)."""
    model, pretrained = local_model(model, pretrained)
    check_model(model, pretrained)
    drop = _DropRandomInitWarning()
    logging.getLogger().addFilter(drop)
    try:
        with torch.device("meta"):
            _, _, transform = open_clip.create_model_and_transforms(model, pretrained=pretrained, load_weights=False, device="meta")
    finally:
        logging.getLogger().removeFilter(drop)
    return ClipPreprocessor(transform, open_clip.get_tokenizer(model))


def load_scorer(model: str, pretrained: str | None, device: str | None = None, precision: str | None = None) -> ClipScorer:
    """An open_clip model with its weights, in eval mode: `model` is a built-in name (pretrained: a tag or
    a weights file), `local-dir:PATH` or `hf-hub:ORG/REPO` (pretrained: None); a folder or file on gs://,
    s3:// or hdfs:// is copied to this machine first, once. Raises ClipError."""
    given = model
    model, pretrained = local_model(model, pretrained)
    info = {**check_model(model, pretrained), "model": given}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ClipError(f"CLIP device {device!r}: torch sees no CUDA device")
    precision = precision or ("bf16" if device.startswith("cuda") else "fp32")
    if precision not in PRECISIONS:
        raise ClipError(f"CLIP precision {precision!r}: one of {', '.join(PRECISIONS)}")
    try:
        clip, _, transform = open_clip.create_model_and_transforms(
            model, pretrained=pretrained, precision=precision, device=device, require_pretrained=True
        )
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # a failed download, a corrupt file, weights that do not fit the architecture
        first_line = (str(e).splitlines() or [""])[0]
        raise ClipError(f"CLIP model {model!r} with weights {info['weights']!r} did not load: {type(e).__name__}: {first_line}") from e
    return ClipScorer(clip, transform, open_clip.get_tokenizer(model), device, precision, info)


def save_random_model(folder: str | Path, seed: int = 0, architecture: str | None = None) -> str:
    """Write a randomly initialised open_clip model to `folder` in local-dir layout, marked random
    (describe() says its scores mean nothing), and return "local-dir:FOLDER" for load_scorer. By default a
    tiny model, for tests and the demo: open_clip's real preprocessing and tokenizer at little model cost;
    `architecture` (a built-in name such as "ViT-L-14") gives a full-size one, for benchmarks."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = TINY_MODEL_CFG if architecture is None else open_clip.get_model_config(architecture)
    if model_cfg is None:
        raise ClipError(f"unknown CLIP model {architecture!r}: not an open_clip model name")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if architecture is None:
            model = open_clip.CLIP(**TINY_MODEL_CFG)
        else:
            drop = _DropRandomInitWarning()
            logging.getLogger().addFilter(drop)
            try:
                model = open_clip.create_model(architecture)
            finally:
                logging.getLogger().removeFilter(drop)
    from safetensors.torch import save_file

    save_file({name: t.contiguous() for name, t in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    preprocess_cfg = dict(DEFAULT_PREPROCESS_CFG, size=model_cfg["vision_cfg"]["image_size"])
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg, MARKER: {"random_weights": True, "seed": seed}}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return LOCAL_DIR + str(folder)
