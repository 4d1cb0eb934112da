"""The optimizer of a stage: AdamW parameter groups (weight decay, ViT layer-wise LR decay) and the LR schedule.

Weight decay (the stage's `weight_decay`, 0.05) applies to every matrix and higher-rank tensor: Linear
and conv weights, the token embedding and the output head, the ViT's learned position table, the
adapter's learned queries and its `proj`. Tensors of fewer than 2 dimensions get none: biases and the
gains / biases of LayerNorm and RMSNorm. This is the rule of Megatron-LM (Qwen's own trainer lineage),
of HF Trainer (Qwen-VL's fine-tuning script: biases and LayerNorm weights excluded), of open_clip
(`p.ndim < 2 or "ln" or "bias"`: the ViT's pretraining) and of nanoGPT; decaying a norm's gain pulls
it to 0, a bias has no scale for decay to regularise. Embeddings are decayed, as in all of those.

Layer-wise LR decay for the ViT (BEiT's scheme, as Qwen-VL's stage 1 and 2 apply to the ViT with factor
0.95): with L blocks and decay d, block i (0-based) trains at lr * d^(L - i), and everything before the
first block (patch embedding conv1, the position table, ln_pre) at lr * d^(L + 1); the adapter and the
LLM, above the ViT, at lr itself. So the top block gets d^1 and the patch embedding the smallest factor.
Qwen2-VL's tower: its blocks the same way, its merger (the projection into the LLM, above the blocks,
like Qwen-VL's adapter) at lr itself. The vision module names its blocks (`blocks_name`) and what sits
above them (`top_names`).
`vit_layer_decay` 0 means a frozen ViT (stage 3); it is an error for a stage that trains the ViT.

Frozen parts (not in the stage's `trainable`) have requires_grad False and are in no group. Each group
carries `lr_scale` (the layer-decay factor) and a `name`; `set_lr(optimizer, lr)` sets every group's lr
to lr * lr_scale, once per step, from `lr_at(step, stage)`:

    step n (1-based: the n-th optimizer update), W = warmup_steps, N = steps
    n <= W:     peak * n / W                                  linear warm-up, step W is at peak
    W < n < N:  min + (peak - min) * (1 + cos(pi * (n - W) / (N - W))) / 2
    n >= N:     min_lr                                        the last step is at min_lr
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.config import VISION, StageConfig

NO_DECAY, DECAY = "no_decay", "decay"


def vit_layer_scales(layers: int, decay: float) -> dict[str, float]:
    """The LR factor of each ViT parameter group: "embed" (conv1, positions, ln_pre) and "block.i"."""
    scales = {"embed": decay ** (layers + 1)}
    scales.update({f"block.{i}": decay ** (layers - i) for i in range(layers)})
    return scales


def vit_layer_of(name: str, blocks_name: str = "trunk.transformer.resblocks", top_names: tuple[str, ...] = ()) -> str:
    """A vision parameter name (relative to the vision module) -> its layer key in `vit_layer_scales`:
    "block.i" in the blocks, "top" above them (scale 1), else "embed"."""
    prefix = blocks_name + "."
    if name.startswith(prefix):
        return "block." + name[len(prefix) :].split(".", 1)[0]
    return "top" if name.startswith(top_names) else "embed"


def decays(param: torch.Tensor) -> bool:
    """Whether weight decay applies: matrices and up, not biases or norm parameters (see the docstring)."""
    return param.ndim >= 2


def param_groups(model: nn.Module, stage: StageConfig) -> list[dict]:
    """AdamW groups for the trainable parameters of a QwenVL or Qwen2VL (`model.parts()`), frozen ones left out.

    Groups: one per (part or ViT layer, decay or not), in model order, each with `params`, `names`
    (their names in the model), `name`, `lr_scale` and `weight_decay`; empty groups are dropped.
    """
    if VISION in stage.trainable and stage.vit_layer_decay == 0:
        raise ValueError("vit_layer_decay 0 freezes the ViT, but the stage trains it (trainable includes vision)")
    if not 0 <= stage.vit_layer_decay <= 1:
        raise ValueError(f"vit_layer_decay must be in [0, 1], not {stage.vit_layer_decay}")
    groups: dict[tuple[str, str], dict] = {}
    for part_name, part in model.parts().items():
        if part_name == VISION:
            scales = {**vit_layer_scales(len(part.get_submodule(part.blocks_name)), stage.vit_layer_decay), "top": 1.0}
        for name, param in part.named_parameters():
            if not param.requires_grad:
                continue
            key = vit_layer_of(name, part.blocks_name, part.top_names) if part_name == VISION else part_name
            layer = f"{part_name}.{key}" if part_name == VISION else part_name
            scale = scales[key] if part_name == VISION else 1.0
            kind = DECAY if decays(param) else NO_DECAY
            group = groups.setdefault(
                (layer, kind),
                {
                    "params": [],
                    "names": [],
                    "name": f"{layer}.{kind}",
                    "lr_scale": scale,
                    "weight_decay": stage.weight_decay if kind == DECAY else 0.0,
                },
            )
            group["params"].append(param)
            group["names"].append(f"{part_name}.{name}")
    return list(groups.values())


def make_optimizer(model: nn.Module, stage: StageConfig, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over `param_groups` with the stage's betas and eps; lr is set per step by `set_lr`."""
    groups = param_groups(model, stage)
    if not groups:
        raise ValueError("nothing to train: the stage's trainable parts have no parameters")
    return torch.optim.AdamW(groups, lr=stage.lr, betas=tuple(stage.betas), eps=stage.eps, fused=fused)


def lr_at(step: int, stage: StageConfig) -> float:
    """The peak-relative learning rate of optimizer step `step` (1-based), per the docstring's formula."""
    peak, low, warmup, total = stage.lr, stage.min_lr, stage.warmup_steps, stage.steps
    if step <= warmup:
        return peak * step / warmup
    if step >= total:
        return low
    progress = (step - warmup) / (total - warmup)
    return low + (peak - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
