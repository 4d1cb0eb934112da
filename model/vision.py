"""The ViT image encoder (Qwen-VL paper §2.1; its visual.py): open_clip's VisionTransformer, used without a class token.

Qwen-VL initialises its ViT from OpenCLIP's ViT-bigG/14 and feeds *all* patch tokens (no class token,
no final LayerNorm, no projection) to the adapter. Here the trunk is open_clip's own
`open_clip.transformer.VisionTransformer`, built from a `VisionConfig`, so an OpenCLIP checkpoint's
`visual.*` tensors load straight into it; `forward` re-runs its pieces the Qwen-VL way:

    conv1 -> flatten -> + learned positions (class row dropped, bicubic-resized to the actual grid)
          -> ln_pre -> transformer blocks -> patch tokens [B, (H/p)*(W/p), width]

Unused parts of open_clip's module (class_embedding, ln_post, proj) are deleted so that every parameter
receives a gradient (no DDP "unused parameter" errors, nothing for the optimizer to special-case).
OpenCLIP key mapping (`openclip_to_vision`): `visual.<k>` -> `trunk.<k>`, with `OPENCLIP_UNUSED` dropped.
`qwen_vl_to_vision` maps the released Qwen-VL checkpoint's ViT onto the same module.
"""

from functools import partial
import math

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, VisionTransformer
from PIL import Image
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import VisionConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# OpenCLIP `visual.*` tensors the encoder does not have (deleted from the trunk; dropped on load):
# the class token, and the final LayerNorm and projection that only serve CLIP's pooled embedding.
OPENCLIP_UNUSED = ("class_embedding", "ln_post.weight", "ln_post.bias", "proj")


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> normalised [3, size, size] float32: straight bicubic resize (no aspect preservation,
    no crop), then CLIP mean/std. The same arithmetic as torchvision's
    Compose([Resize((size, size), BICUBIC), ToTensor(), Normalize(CLIP_MEAN, CLIP_STD)]) on a PIL image."""
    image = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def interpolate_pos(table: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """A square position table [g*g, C] (row-major) resized to `grid` ([gh*gw, C]).

    Bicubic, align_corners=False, no antialias, computed in float32 and cast back: Qwen-VL's get_abs_pos.
    (Antialias only changes downsampling, i.e. grids smaller than the stored one; Qwen-VL does not use it.)
    At the stored size the table itself is returned.
    """
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    n, c = table.shape
    src = math.isqrt(n)
    if src * src != n:
        raise ValueError(f"position table of {n} rows is not a square grid")
    if (gh, gw) == (src, src):
        return table
    x = table.float().reshape(1, src, src, c).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(gh, gw), mode="bicubic", align_corners=False, antialias=False)
    return x.permute(0, 2, 3, 1).reshape(gh * gw, c).to(table.dtype)


class VisionEncoder(nn.Module):
    """Images [B, 3, H, W] -> patch tokens [B, (H/p)*(W/p), width]; no class token, no final norm."""

    blocks_name = "trunk.transformer.resblocks"  # its blocks, for the optimizer's layer-wise LR decay
    top_names: tuple[str, ...] = ()  # parameters above the blocks (trained at the full LR)

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False  # set by model/train.py: torch.utils.checkpoint per block
        mlp_ratio = cfg.mlp / cfg.width
        if int(cfg.width * mlp_ratio) != cfg.mlp:  # open_clip sizes the MLP as int(width * mlp_ratio)
            mlp_ratio = (cfg.mlp + 0.5) / cfg.width
        self.trunk = VisionTransformer(
            image_size=cfg.image_size,
            patch_size=cfg.patch,
            width=cfg.width,
            layers=cfg.layers,
            heads=cfg.heads,
            mlp_ratio=mlp_ratio,
            output_dim=cfg.width,  # sizes `proj`, deleted below
            act_layer=nn.GELU,
            norm_layer=partial(LayerNorm, eps=cfg.eps),
        )
        del self.trunk.class_embedding, self.trunk.ln_post, self.trunk.proj
        # forward() calls the blocks directly with [B, L, D] tensors
        assert self.trunk.transformer.batch_first
        assert self.trunk.transformer.resblocks[0].mlp.c_fc.out_features == cfg.mlp

    @property
    def stored_grid(self) -> int:
        """The side of the grid the learned position table is stored for (16 for 224 / 14)."""
        return self.cfg.image_size // self.cfg.patch

    def grid(self, size: int) -> int:
        """Patches per side for a square image of `size` pixels (16 at 224, 32 at 448)."""
        if size % self.cfg.patch:
            raise ValueError(f"image size {size} is not a multiple of the patch size {self.cfg.patch}")
        return size // self.cfg.patch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        gh, gw = self.grid(images.shape[-2]), self.grid(images.shape[-1])
        x = t.conv1(images.to(t.conv1.weight.dtype))  # [B, width, gh, gw]
        x = x.flatten(2).transpose(1, 2)  # [B, gh*gw, width], row-major like the table
        x = x + interpolate_pos(t.positional_embedding[1:], (gh, gw)).to(x.dtype)  # row 0: class position
        x = t.ln_pre(x)
        # open_clip's blocks are batch-first nn.MultiheadAttention called with need_weights=False, which
        # runs F.scaled_dot_product_attention (flash / memory-efficient kernels on GPU)
        for block in t.transformer.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


def openclip_to_vision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP state dict (a whole CLIP model's, with `visual.` keys, or its visual tower's alone) ->
    a `VisionEncoder` state dict: `visual.<k>` -> `trunk.<k>`, `OPENCLIP_UNUSED` dropped, other towers
    ignored. Load it with `encoder.load_state_dict(..., strict=True)`."""
    if any(k.startswith("visual.") for k in state):
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    return {f"trunk.{k}": v for k, v in state.items() if k not in OPENCLIP_UNUSED}


def qwen_vl_to_vision(
    state: dict[str, torch.Tensor], heads: int, prefix: str = "transformer.visual."
) -> dict[str, torch.Tensor]:
    """The released Qwen-VL checkpoint's ViT -> a `VisionEncoder` state dict. Differences from OpenCLIP:
    - positional_embedding has no class row ([256, width]): a zero row is put in front (never read);
    - attention is `attn.in_proj` (a Linear) whose 3*width output rows are interleaved per head
      ([q_h, k_h, v_h] for each head h: Qwen-VL's VisualAttention splits a [.., heads, 3*head_dim] view),
      while nn.MultiheadAttention's `in_proj_weight` is [Wq; Wk; Wv]: rows are regrouped.
    Adapter tensors (`attn_pool.*`, `ln_post.*`, `proj`) are left to `model.adapter.qwen_vl_to_adapter`."""
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        k = k.removeprefix(prefix)
        if k.startswith("attn_pool.") or k.startswith("ln_post.") or k == "proj":
            continue
        if k == "positional_embedding":
            v = torch.cat([v.new_zeros(1, v.shape[1]), v])
        elif k.endswith(".attn.in_proj.weight") or k.endswith(".attn.in_proj.bias"):
            k = k.replace(".attn.in_proj.weight", ".attn.in_proj_weight").replace(
                ".attn.in_proj.bias", ".attn.in_proj_bias"
            )
            rest = v.shape[1:]
            v = v.reshape(heads, 3, -1, *rest).transpose(0, 1).reshape(-1, *rest)
        out[f"trunk.{k}"] = v
    return out
