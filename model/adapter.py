"""The position-aware vision-language adapter (Qwen-VL paper §2.1; visual.py's `Resampler` + its
`ln_post`/`proj`): 256 learned queries cross-attend once to the ViT's patch tokens.

    kv   = ln_kv(kv_proj(patch_tokens))                 # vision width -> LLM hidden, no bias
    q    = ln_q(query) + pos(16x16)                      # fixed 2D sin-cos table
    k    = kv + pos resized (bicubic) to the patch grid  # values get no positions
    out  = ln_post(attn(q, k, kv)) @ proj                # [B, 256, hidden]

Parameter names are the released checkpoint's: `transformer.visual.attn_pool.<k>` -> `<k>` (query,
pos_embed, kv_proj, attn.in_proj_weight / in_proj_bias / out_proj, ln_q, ln_kv) and
`transformer.visual.{ln_post.*, proj}` -> `{ln_post.*, proj}` (`qwen_vl_to_adapter`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import AdapterConfig
from model.vision import interpolate_pos

EPS = 1e-6  # Qwen-VL's LayerNorm epsilon (ln_q, ln_kv, ln_post)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """The fixed 2D sin-cos table [grid*grid, dim] (row-major positions), as Qwen-VL's
    get_2d_sincos_pos_embed (from MAE): the first dim/2 channels encode the column (x), the last dim/2
    the row (y); each half is [sin(p * w_0..w_{m-1}), cos(p * w_0..w_{m-1})] with m = dim/4 and
    w_i = 10000^(-i/m). Computed in float64, stored float32 (Qwen-VL computes in float32: differences
    of about 1e-7; its checkpoint carries the table, which loads over this one)."""
    if dim % 4:
        raise ValueError(f"sin-cos table width {dim} is not a multiple of 4")
    m = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(m, dtype=torch.float64) / m)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def axis(pos: torch.Tensor) -> torch.Tensor:
        angle = pos.reshape(-1, 1).double() * omega
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    return torch.cat([axis(cols), axis(rows)], dim=1).float()


class CrossAttention(nn.Module):
    """nn.MultiheadAttention's parameters and maths (in_proj_weight = [Wq; Wk; Wv], in_proj_bias,
    out_proj; no dropout), batch-first, through F.scaled_dot_product_attention. Its state dict is
    interchangeable with nn.MultiheadAttention's, the layer the released Qwen-VL uses."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's init

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [1 or B, Lq, D] (a batch of 1 is shared), k and v [B, Lk, D] -> [B, Lq, D]."""
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)

        def split(x: torch.Tensor) -> torch.Tensor:  # [b, L, D] -> [b, heads, L, D/heads]
            return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        b = k.shape[0]
        q = split(F.linear(q, wq, bq)).expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, split(F.linear(k, wk, bk)), split(F.linear(v, wv, bv)))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class Adapter(nn.Module):
    """Patch tokens [B, grid*grid, vision_width] -> [B, queries, hidden]: the image's tokens in the LLM."""

    def __init__(self, cfg: AdapterConfig, vision_width: int, hidden: int):
        super().__init__()
        side = math.isqrt(cfg.queries)
        if side * side != cfg.queries:
            raise ValueError(f"{cfg.queries} queries are not a square grid")
        self.cfg = cfg
        self.query = nn.Parameter(torch.empty(cfg.queries, hidden))
        # fixed (not trained) but in the state dict, as the checkpoint's attn_pool.pos_embed is
        self.register_buffer("pos_embed", sincos_2d(hidden, side))
        # Qwen-VL skips kv_proj when the widths are equal; here it is always there (the tiny preset)
        self.kv_proj = nn.Linear(vision_width, hidden, bias=False)
        self.attn = CrossAttention(hidden, cfg.heads)
        self.ln_q = nn.LayerNorm(hidden, eps=EPS)
        self.ln_kv = nn.LayerNorm(hidden, eps=EPS)
        self.ln_post = nn.LayerNorm(hidden, eps=EPS)
        self.proj = nn.Parameter(hidden**-0.5 * torch.randn(hidden, hidden))  # applied as x @ proj
        # Qwen-VL's init: trunc_normal_(std=0.02) (bounds +-2 absolute, so practically a normal) for the
        # queries and the Linear weights, zero Linear biases; xavier in_proj (above); LayerNorms 1 / 0
        nn.init.trunc_normal_(self.query, std=0.02)
        nn.init.trunc_normal_(self.kv_proj.weight, std=0.02)
        nn.init.trunc_normal_(self.attn.out_proj.weight, std=0.02)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, patch_tokens: torch.Tensor, grid: int) -> torch.Tensor:
        if patch_tokens.shape[1] != grid * grid:
            raise ValueError(f"{patch_tokens.shape[1]} patch tokens are not a {grid}x{grid} grid")
        kv = self.ln_kv(self.kv_proj(patch_tokens))
        q = self.ln_q(self.query) + self.pos_embed.to(kv.dtype)
        k = kv + interpolate_pos(self.pos_embed, grid).to(kv.dtype)
        out = self.attn(q.unsqueeze(0), k, kv)
        return self.ln_post(out) @ self.proj


def qwen_vl_to_adapter(
    state: dict[str, torch.Tensor], prefix: str = "transformer.visual."
) -> dict[str, torch.Tensor]:
    """The released Qwen-VL checkpoint -> an `Adapter` state dict: `<prefix>attn_pool.<k>` -> `<k>`,
    `<prefix>ln_post.*` and `<prefix>proj` kept as named. (Its attn_pool.attn is an
    nn.MultiheadAttention: same tensors as `CrossAttention`, nothing to permute.)"""
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        k = k.removeprefix(prefix)
        if k.startswith("attn_pool."):
            out[k.removeprefix("attn_pool.")] = v
        elif k.startswith("ln_post.") or k == "proj":
            out[k] = v
    return out
