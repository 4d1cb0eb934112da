"""Pretrained weights in, from the checkpoint layouts they are published in, every key accounted for.

    load_openclip_vision(model, path)  OpenCLIP (e.g. ViT-bigG-14 laion2b) -> model.vision
    load_hf_qwen_llm(model, path)      HF Qwen-7B folder                  -> model.llm
    load_qwen_vl(model, path)          HF Qwen/Qwen-VL folder             -> the whole model
    load_qwen2_vl(model, path)         HF Qwen/Qwen2-VL-*-Instruct folder -> a whole `Qwen2VL`
    save_qwen2_vl(model, folder)       a `Qwen2VL` -> that layout (shards, index, config.json)

`model` is a `QwenVL`, or the part itself (a `VisionEncoder` / `QwenLM`) for the first two. The key
renaming is the parts' own (model/vision.py, model/adapter.py, model/llm.py); this module reads the
files and checks the bookkeeping. Each load runs twice over the checkpoint's keys: first on shapes only
(meta tensors through the same mapping), which must account for every key of the checkpoint (mapped
to one of ours, or ignored for a stated reason) and of ours (loaded), with equal shapes; otherwise
`CheckpointMismatch` (one line naming the keys) is raised before anything is written. Then the tensors
are read and copied in (cast to the model's dtype and device), one tensor at a time from safetensors
(`safe_open`), shard after shard.

Layouts read:
- OpenCLIP: one `.safetensors` file, or open_clip's `.bin` / `.pt` state dict (torch.load with
  weights_only=True; a training checkpoint's {"state_dict": ...} and a DDP "module." prefix are
  unwrapped as open_clip's own loader does). A whole CLIP (`visual.*` + the text tower) or the visual
  tower alone. ViT-bigG-14 at 224 stores a 16x16+1-row position table, the encoder's own; another grid
  is resized bicubically (the class row kept as is).
- HF sharded safetensors folder: `model.safetensors`, or `model-0000N-of-0000M.safetensors` +
  `model.safetensors.index.json` ({"weight_map": {key: shard file}}, checked against the shards).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from formats.dialects import QWEN2_VL
from model.adapter import qwen_vl_to_adapter
from model.config import Qwen2VLConfig
from model.llm import convert_hf_qwen_state_dict
from model.qwen2_vl import hf_key, to_hf_key
from model.vision import interpolate_pos, openclip_to_vision, qwen_vl_to_vision

INDEX = "model.safetensors.index.json"

# Why keys present in these checkpoints are not loaded
WHY_OPENCLIP = {
    "class_embedding": "class token: Qwen-VL feeds the patch tokens only",
    "ln_post.weight": "CLIP's pooled-embedding LayerNorm: not used",
    "ln_post.bias": "CLIP's pooled-embedding LayerNorm: not used",
    "proj": "CLIP's embedding projection: not used",
}
WHY_NOT_VISUAL = "not the vision tower (CLIP text tower / contrastive head)"


def _why_not_llm(key: str) -> str:
    if key.startswith("transformer.visual."):
        return "Qwen-VL vision tower / adapter: not the LLM"
    if key.endswith("inv_freq"):
        return "RoPE inv_freq buffer: recomputed"
    return "causal-mask buffer: recomputed"


class CheckpointMismatch(ValueError):
    """The checkpoint's keys or shapes do not match the model's (one line naming them)."""


@dataclass
class LoadReport:
    path: str
    loaded: dict[str, str] = field(default_factory=dict)  # our key -> checkpoint key
    ignored: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why
    notes: list[str] = field(default_factory=list)  # e.g. a resized position table

    def __str__(self) -> str:
        notes = "".join(f"; {n}" for n in self.notes)
        return f"{self.path}: {len(self.loaded)} tensors loaded, {len(self.ignored)} ignored{notes}"


# A shard: its keys' shapes (read without the data) and a way to stream its tensors.
Shard = tuple[dict[str, tuple[int, ...]], Callable[[], Iterator[tuple[str, torch.Tensor]]]]
# checkpoint key, tensor -> {our key: tensor} (empty: not ours, i.e. unused), or the reason it is ignored
Convert = Callable[[str, torch.Tensor], "dict[str, torch.Tensor] | str"]


def _names(keys: list[str], most: int = 8) -> str:
    more = f" (+{len(keys) - most} more)" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more


def _load(target: nn.Module, shards: list[Shard], convert: Convert, path: str) -> LoadReport:
    ours = target.state_dict()
    if any(t.is_meta for t in ours.values()):
        raise ValueError("the model is on the meta device: to_empty() it before loading")
    report = LoadReport(str(path))
    unused, shapes, twice = [], [], []
    for keys, _ in shards:  # pass 1: shapes only
        for k, shape in keys.items():
            try:
                out = convert(k, torch.empty(shape, device="meta"))
            except KeyError:
                out = {}
            if isinstance(out, str):
                report.ignored[k] = out
                continue
            if not out or not out.keys() <= ours.keys():
                unused.append(k)
                continue
            for d, t in out.items():
                if d in report.loaded:
                    twice.append(d)
                report.loaded[d] = k
                if t.shape != ours[d].shape:
                    mapped = f" (mapped {list(t.shape)})" if t.shape != shape else ""
                    shapes.append(f"{k} {list(shape)}{mapped} -> {d} {list(ours[d].shape)}")
    missing = [d for d in ours if d not in report.loaded]
    problems = [
        f"{what}: {_names(names)}"
        for what, names in (
            (f"{len(missing)} model keys not in the checkpoint", missing),
            (f"{len(unused)} checkpoint keys unused", unused),
            ("shape mismatch", shapes),
            ("loaded twice", twice),
        )
        if names
    ]
    if problems:
        raise CheckpointMismatch(f"{path}: " + "; ".join(problems))
    with torch.no_grad():  # pass 2: the data
        for _, tensors in shards:
            for k, t in tensors():
                if k not in report.ignored:
                    for d, v in convert(k, t).items():
                        ours[d].copy_(v)
    return report


def _safetensors_shard(file: Path) -> Shard:
    with safe_open(file, framework="pt") as f:
        keys = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        with safe_open(file, framework="pt") as f:
            for k in f.keys():
                yield k, f.get_tensor(k)

    return keys, tensors


def hf_shards(path: str | Path) -> list[Shard]:
    """A HF checkpoint (a folder with model.safetensors, or shards + model.safetensors.index.json; or
    one .safetensors file) -> its shards, in the index's order."""
    path = Path(path)
    if path.is_file():
        return [_safetensors_shard(path)]
    if (path / INDEX).exists():
        weight_map: dict[str, str] = json.loads((path / INDEX).read_text())["weight_map"]
        files = list(dict.fromkeys(weight_map.values()))
        shards = [_safetensors_shard(path / f) for f in files]
        held = {k: f for f, (keys, _) in zip(files, shards) for k in keys}
        wrong = sorted(k for k in weight_map.keys() | held.keys() if weight_map.get(k) != held.get(k))
        if wrong:
            raise CheckpointMismatch(f"{path / INDEX}: weight_map disagrees with the shards on {_names(wrong)}")
        return shards
    if (path / "model.safetensors").exists():
        return [_safetensors_shard(path / "model.safetensors")]
    raise FileNotFoundError(f"{path}: neither {INDEX} nor model.safetensors")


def _openclip_state(path: Path) -> dict[str, torch.Tensor]:
    """open_clip's .bin / .pt: a plain state dict or {"state_dict": ...}, maybe "module."-prefixed."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatch(f"{path}: not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_openclip_vision(model: nn.Module, path: str | Path) -> LoadReport:
    """An OpenCLIP checkpoint's vision tower into `model.vision` (see the module docstring)."""
    encoder = getattr(model, "vision", model)
    path = Path(path)
    if path.suffix == ".safetensors":
        shards = [_safetensors_shard(path)]
    else:
        state = _openclip_state(path)
        shards = [({k: tuple(v.shape) for k, v in state.items()}, lambda: iter(state.items()))]
    whole_clip = any(k.startswith("visual.") for k in shards[0][0])
    rows = encoder.trunk.positional_embedding.shape[0]

    def convert(k: str, t: torch.Tensor) -> dict[str, torch.Tensor] | str:
        if whole_clip and not k.startswith("visual."):
            return WHY_NOT_VISUAL
        if k.removeprefix("visual.") in WHY_OPENCLIP:
            return WHY_OPENCLIP[k.removeprefix("visual.")]
        out = openclip_to_vision({k: t})
        pos = out.get("trunk.positional_embedding")
        if pos is not None and pos.ndim == 2 and pos.shape[0] != rows:
            try:  # the class row kept, the patch rows resized to our grid
                grid = interpolate_pos(pos[1:], encoder.stored_grid)
            except ValueError:  # not a square grid: left to the shape check
                return out
            out["trunk.positional_embedding"] = torch.cat([pos[:1], grid])
        return out

    report = _load(encoder, shards, convert, str(path))
    stored = shards[0][0][report.loaded["trunk.positional_embedding"]][0]
    if stored != rows:
        report.notes.append(f"position table resized from {stored - 1} to {rows - 1} patches")
    return report


def load_hf_qwen_llm(model: nn.Module, path: str | Path) -> LoadReport:
    """A HF Qwen-7B checkpoint folder into `model.llm`. The keys that are in such checkpoints but not
    the LLM's parameters (model/llm.py `hf_qwen_key`: rotary inv_freq, mask buffers, and a Qwen-VL
    checkpoint's transformer.visual.*) are ignored; any other unknown key is an error."""
    llm = getattr(model, "llm", model)

    def convert(k: str, t: torch.Tensor) -> dict[str, torch.Tensor] | str:
        return convert_hf_qwen_state_dict({k: t}) or _why_not_llm(k)

    return _load(llm, hf_shards(path), convert, str(path))


def load_qwen_vl(model: nn.Module, path: str | Path) -> LoadReport:
    """The released Qwen-VL checkpoint folder (HF Qwen/Qwen-VL, Qwen-VL-Chat) into the whole model:
    transformer.visual.{conv1, positional_embedding, ln_pre, transformer.resblocks.*} -> model.vision,
    transformer.visual.{attn_pool.*, ln_post.*, proj} -> model.adapter, the rest -> model.llm."""
    heads = model.cfg.vision.heads

    def convert(k: str, t: torch.Tensor) -> dict[str, torch.Tensor] | str:
        if k.startswith("transformer.visual."):
            one = {k: t}
            return {f"vision.{d}": v for d, v in qwen_vl_to_vision(one, heads).items()} | {
                f"adapter.{d}": v for d, v in qwen_vl_to_adapter(one).items()
            }
        return {f"llm.{d}": v for d, v in convert_hf_qwen_state_dict({k: t}).items()} or _why_not_llm(k)

    return _load(model, hf_shards(path), convert, str(path))


def load_qwen2_vl(model: nn.Module, path: str | Path) -> LoadReport:
    """A released Qwen2-VL checkpoint folder (HF Qwen/Qwen2-VL-2B-Instruct, -7B-, -72B-) into a `Qwen2VL`:
    visual.* -> model.vision, model.* and lm_head.weight -> model.llm (model/qwen2_vl.py `hf_key`).
    Every key must be one of ours: with tied embeddings, an lm_head.weight is an unused key."""

    def convert(k: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
        ours = hf_key(k)
        return {} if ours is None else {ours: t}

    return _load(model, hf_shards(path), convert, str(path))


def hf_config(cfg: Qwen2VLConfig) -> dict:
    """The config.json of a released Qwen2-VL checkpoint for `cfg` (its flat layout: the LLM's fields at
    the top, the ViT's under vision_config), so that transformers' from_pretrained reads our folders."""
    v, t = cfg.vision, cfg.llm
    ids = QWEN2_VL.special_ids()
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "hidden_act": "silu",
        "hidden_size": t.hidden,
        "intermediate_size": t.intermediate,
        "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads,
        "num_key_value_heads": t.kv_heads,
        "vocab_size": t.vocab,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_theta,
        "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
        "tie_word_embeddings": t.tie_word_embeddings,
        "max_position_embeddings": 32768,
        "image_token_id": ids[QWEN2_VL.image_pad],
        "video_token_id": ids[QWEN2_VL.video_pad],
        "vision_start_token_id": ids[QWEN2_VL.image],
        "vision_end_token_id": ids[QWEN2_VL.image_end],
        "vision_config": {
            "depth": v.depth,
            "embed_dim": v.embed_dim,
            "hidden_size": t.hidden,
            "num_heads": v.heads,
            "mlp_ratio": v.mlp_ratio,
            "hidden_act": "quick_gelu",
            "patch_size": v.patch_size,
            "temporal_patch_size": v.temporal_patch_size,
            "spatial_merge_size": v.spatial_merge_size,
            "in_channels": v.in_channels,
        },
    }


def save_qwen2_vl(model: nn.Module, folder: str | Path, max_shard_bytes: int = 5 * 10**9) -> None:
    """A `Qwen2VL` -> `folder` in the released layout: model-0000N-of-0000M.safetensors shards of at most
    `max_shard_bytes` (unless one tensor is larger; transformers' default 5 GB), model.safetensors.index.json
    and config.json (`hf_config`). Tensors are written in the model's dtype."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {to_hf_key(k): v.detach() for k, v in model.state_dict().items()}
    groups: list[list[str]] = [[]]
    size = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if groups[-1] and size + n > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(k)
        size += n
    weight_map = {}
    for i, keys in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: state[k].cpu().contiguous() for k in keys}, str(folder / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(keys, name)
    total = sum(v.numel() * v.element_size() for v in state.values())
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(hf_config(model.cfg), indent=2))


def load_own(model: nn.Module, path: str | Path) -> LoadReport:
    """Our own checkpoint (model/checkpoint.py) into the whole model, to start a stage from the last one:
    a step-N folder, or a run folder (its latest step); the sharded format assembled into full tensors
    (checkpoint.read_full), the previous one (a full model.safetensors) read as it is. Names are ours, so
    every key must match."""
    from model.checkpoint import MODEL, TRAINER, latest, read_full

    folder = Path(path)
    if not (folder / TRAINER).is_file():
        found = latest(folder)
        if found is None:
            raise FileNotFoundError(f"{path}: neither a checkpoint folder ({TRAINER}) nor a run folder with a latest checkpoint")
        folder = found
    full = read_full(folder / MODEL)
    shard = ({k: tuple(t.shape) for k, t in full.items()}, lambda: iter(full.items()))
    return _load(model, [shard], lambda k, t: {k: t}, str(folder))
