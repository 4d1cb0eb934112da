"""Scores from a CLIP image embedding: LAION's NSFW detector and aesthetic predictor as small torch MLPs.

Both heads take the L2-normalised image embedding that filters/clip_score.py computes for the CLIP score
(one image forward per image serves all three scores). Their weights come from a file the user names:
a safetensors file, or a PyTorch .pth/.pt state dict read with torch.load(weights_only=True) (tensors
only, no pickled code). The widths are read from the file, checked to chain, and the first width must be
the CLIP model's embedding width.

- aesthetic (`AESTHETIC`): LAION's improved-aesthetic-predictor (github.com/christophschuhmann/
  improved-aesthetic-predictor, simple_inference.py, class MLP): nn.Sequential of Linear(768, 1024),
  Dropout(0.2), Linear(1024, 128), Dropout(0.2), Linear(128, 64), Dropout(0.1), Linear(64, 16),
  Linear(16, 1), no activations; its released sac+logos+ava1-l14-linearMSE.pth names them `layers.0`,
  `layers.2`, `layers.4`, `layers.6`, `layers.7` (`.weight` and `.bias`). The output is a rating on the
  1-10 scale of its training data (SAC, LOGOS, AVA), unbounded.
- NSFW (`NSFW`): LAION's CLIP-based-NSFW-Detector (github.com/LAION-AI/CLIP-based-NSFW-Detector,
  clip_autokeras_binary_nsfw for ViT-L/14) is a Keras/AutoKeras model: a Normalization layer, dense
  layers 768 -> 64 -> 512 -> 256 -> 1 with ReLU between, and a sigmoid (1 = NSFW). It ships as a Keras
  saved model, not as torch weights, so this project reads it in a layout of its own, with Keras's default
  layer names: `normalization.mean` and `normalization.variance` [768] ((x - mean) / sqrt(variance)),
  then `dense`, `dense_1`, `dense_2`, `dense_3` (`.weight` [out, in], i.e. a Keras kernel transposed, and
  `.bias`). Converting the released Keras weights to this layout is left to the user; it has not been
  checked against the released model here.

`save_random_head` writes a head with random weights, marked in the safetensors metadata; describe()
then says its scores mean nothing. filters/watermark.py reads its model's weights with the same
read_weights, marker and describe() fields.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from formats.files import local_copy

MARKER = "qwen_vl_data"  # safetensors metadata key that save_random_head writes
RANDOM_NOTE = "randomly initialised test weights: their scores mean nothing"
SHOWN_NAMES = 12  # a layout error lists at most this many names of each kind
TORCH_SUFFIXES = (".pth", ".pt", ".bin")


class HeadError(ValueError):
    """A head's (or the watermark model's) weights that cannot be used (one line, for a usage error)."""


@dataclass(frozen=True)
class Layout:
    """A released head's layout: its Linear layers' names in order, and what surrounds them."""

    name: str  # "nsfw" or "aesthetic": the score's name, `{name}_score` in curated rows
    linears: tuple[str, ...]  # state-dict prefixes of the Linear layers, input first
    relu: bool  # ReLU between the Linear layers
    normalization: bool  # `normalization.mean` / `normalization.variance` applied first
    sigmoid: bool  # sigmoid on the output
    widths: tuple[int, ...]  # the released widths, input first (save_random_head's default)
    random_centre: float = 0.0  # save_random_head: added to the output's bias, the middle of the score's scale


AESTHETIC = Layout("aesthetic", ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7"), False, False, False, (768, 1024, 128, 64, 16, 1),
                   random_centre=5.5)  # LAION's 1-10 scale: a random head's scores sit near 5.5, above any usual aesthetic_min
NSFW = Layout("nsfw", ("dense", "dense_1", "dense_2", "dense_3"), True, True, True, (768, 64, 512, 256, 1))
LAYOUTS = {layout.name: layout for layout in (NSFW, AESTHETIC)}


class Head:
    """A loaded head: [B, D] L2-normalised embeddings -> B scores, in fp32 on the CLIP model's device."""

    def __init__(self, layout: Layout, tensors: dict[str, torch.Tensor], info: dict):
        self.layout, self.info = layout, info
        self.linears = [(tensors[f"{p}.weight"].float(), tensors[f"{p}.bias"].float()) for p in layout.linears]
        if layout.normalization:
            self.mean, self.std = tensors["normalization.mean"].float(), tensors["normalization.variance"].float().sqrt()
        self.input_width = self.linears[0][0].shape[1]

    def to(self, device) -> "Head":
        self.linears = [(w.to(device), b.to(device)) for w, b in self.linears]
        if self.layout.normalization:
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = embeddings.float()
        if self.layout.normalization:
            x = (x - self.mean) / self.std
        for i, (weight, bias) in enumerate(self.linears):
            x = torch.nn.functional.linear(x, weight, bias)
            if self.layout.relu and i < len(self.linears) - 1:
                x = torch.relu(x)
        x = x[:, 0]  # (B, 1) -> (B,)
        return torch.sigmoid(x) if self.layout.sigmoid else x

    def describe(self) -> dict:
        """What scored, for the report: layout, weights, input width, random_weights, note."""
        return dict(self.info, input_width=self.input_width)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, safetensors metadata) of a weights file."""
    try:
        if path.suffix in TORCH_SUFFIXES:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
                raise HeadError(f"{path} is not a state dict of tensors")
            return state, {}
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, f.metadata() or {}
    except HeadError:
        raise
    except Exception as e:  # a corrupt file, a pickle that is not weights-only
        first_line = (str(e).splitlines() or [""])[0]
        raise HeadError(f"{path} did not load: {type(e).__name__}: {first_line}") from None


def read_weights(name: str, what: str, path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, describe() fields) of the weights file of score `name` (`what` names it in errors: "nsfw
    head"): safetensors or a torch state dict read weights-only, on the CPU; a file on gs://, s3:// or
    hdfs:// is copied to this machine first, once. The fields: layout, weights, random_weights (the marker
    of save_random_head and random_metadata), note. Raises HeadError."""
    local = Path(local_copy(path))
    if not local.is_file():
        raise HeadError(f"{what} weights not found: {path}")
    tensors, metadata = _read(local)
    random_weights = json.loads(metadata.get(MARKER, "{}")).get("random_weights") is True
    return tensors, {"layout": name, "weights": path, "random_weights": random_weights, "note": RANDOM_NOTE if random_weights else None}


def random_metadata(seed: int) -> dict[str, str]:
    """The safetensors metadata that marks a file's weights random (read_weights reads it back)."""
    return {MARKER: json.dumps({"random_weights": True, "seed": seed})}


def listed(found: list[str]) -> str:
    """The first SHOWN_NAMES of `found`, comma-separated, then their count if there are more."""
    more = f", ... ({len(found)} in all)" if len(found) > SHOWN_NAMES else ""
    return ", ".join(found[:SHOWN_NAMES]) + more


def name_problems(names: list[str], tensors: dict[str, torch.Tensor]) -> list[str]:
    """`tensors`' names against a layout's `names`: "missing ..." and "unexpected ..." (listed), or
    nothing when they are the same."""
    missing, extra = [n for n in names if n not in tensors], sorted(set(tensors) - set(names))
    return [f"missing {listed(missing)}"] * bool(missing) + [f"unexpected {listed(extra)}"] * bool(extra)


def _problems(layout: Layout, tensors: dict[str, torch.Tensor]) -> list[str]:
    """What in `tensors` does not fit `layout`: missing or extra names, widths that do not chain."""
    names = [f"{p}.{kind}" for p in layout.linears for kind in ("weight", "bias")]
    names += ["normalization.mean", "normalization.variance"] if layout.normalization else []
    found = name_problems(names, tensors)
    if found:
        return found
    width = tensors[f"{layout.linears[0]}.weight"].shape[-1]
    for p in layout.linears:
        weight, bias = tensors[f"{p}.weight"], tensors[f"{p}.bias"]
        if weight.dim() != 2 or weight.shape[1] != width or tuple(bias.shape) != (weight.shape[0],):
            found.append(f"{p} has weight {tuple(weight.shape)} and bias {tuple(bias.shape)} after width {width}")
        width = weight.shape[0]
    if width != 1:
        found.append(f"the last layer gives {width} outputs, not 1")
    if layout.normalization:
        input_width = tensors[f"{layout.linears[0]}.weight"].shape[-1]
        for n in ("normalization.mean", "normalization.variance"):
            if tuple(tensors[n].shape) != (input_width,):
                found.append(f"{n} has shape {tuple(tensors[n].shape)}, not ({input_width},)")
    return found


def load_head(name: str, path: str, embed_width: int | None = None) -> Head:
    """The `name` head ("nsfw" or "aesthetic") from a weights file in its layout (module docstring), on
    the CPU (read_weights); with `embed_width`, its input width is checked against the CLIP embedding's.
    Raises HeadError."""
    layout = LAYOUTS[name]
    tensors, info = read_weights(name, f"{name} head", path)
    problems = _problems(layout, tensors)
    if problems:
        raise HeadError(f"{path} is not the {name} head's layout ({', '.join(layout.linears)}): {'; '.join(problems)}")
    head = Head(layout, tensors, info)
    if embed_width is not None and head.input_width != embed_width:
        raise HeadError(f"{name} head {path} takes {head.input_width}-wide embeddings, the CLIP model gives {embed_width}")
    return head


def save_random_head(name: str, path: str | Path, input_width: int, seed: int = 0) -> str:
    """Write a randomly initialised `name` head (the released widths after `input_width`) as safetensors,
    marked random, and return its path."""
    from safetensors.torch import save_file

    layout = LAYOUTS[name]
    widths = (input_width,) + layout.widths[1:]
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, (n_in, n_out) in zip(layout.linears, zip(widths, widths[1:])):
        bound = n_in**-0.5  # nn.Linear's default init range
        tensors[f"{prefix}.weight"] = (torch.rand(n_out, n_in, generator=generator) * 2 - 1) * bound
        tensors[f"{prefix}.bias"] = (torch.rand(n_out, generator=generator) * 2 - 1) * bound
    tensors[f"{layout.linears[-1]}.bias"] += layout.random_centre
    if layout.normalization:
        tensors["normalization.mean"] = torch.zeros(input_width)
        tensors["normalization.variance"] = torch.full((input_width,), 1.0 / input_width)  # unit-norm inputs -> unit scale
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=random_metadata(seed))
    return str(path)
