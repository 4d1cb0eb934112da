"""The Qwen2-VL vision tower (Qwen2-VL paper, arXiv 2409.12191, §2.1; transformers 4.57
`modeling_qwen2_vl.py`: `Qwen2VisionTransformerPretrainedModel`) and its input: images and videos as
flattened patches, as `Qwen2VLImageProcessor` and `Qwen2VLVideoProcessor` make them.

    patches [N, C*T*p*p]  (N: every image's and video's patches, in the processor's order)
      -> patch_embed: Conv3d, kernel = stride = (T, p, p), no bias  -> [N, D]
      -> blocks: x + attn(norm1(x)), then + mlp(norm2(x))  (LayerNorm; fused qkv with bias; 2D RoPE;
         attention only among the patches of the same image or video frame pair; MLP quick_gelu)
      -> merger: ln_q, every m*m neighbouring patches concatenated  -> [N / m^2, m^2 * D]
         -> Linear, GELU, Linear -> [N / m^2, LLM hidden]: one LLM token per merged patch

Patch order (the processor's): frame pair by frame pair; inside one, merge group by merge group in row
major order (m*m patches each, themselves row major), so a merge group is m*m consecutive rows and the
merger only reshapes. A patch row is its values channel by channel, then frame, then pixel row, column.
There are no absolute positions: each patch's (row, column) in its image rotates the first and second
quarter of every head's dimensions (`rotary_angles`), the "rotate half" layout.

Parameter names are the released checkpoint's with `visual.` dropped (model/weights.py):
patch_embed.proj.weight, blocks.N.{norm1, norm2}.{weight, bias}, blocks.N.attn.{qkv, proj}.{weight, bias},
blocks.N.mlp.{fc1, fc2}.{weight, bias}, merger.ln_q.{weight, bias}, merger.mlp.{0, 2}.{weight, bias}.

Preprocessing (`image_patches`, `video_patches`): RGB, rescale by 1/255 (in float64, then float32),
normalise with the OpenAI CLIP mean and std (float32), an image repeated to 2 frames, then the patch
order above: the processors' arithmetic, so an image at its stored size gives bit-identical patches.
"""

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import Qwen2VisionConfig
from model.llm import rotate_half
from model.vision import CLIP_MEAN, CLIP_STD

Grid = tuple[int, int, int]  # (t, h, w): frame pairs, patch rows, patch columns (the processor's grid_thw)
EPS = 1e-6  # LayerNorm epsilon of the blocks and the merger
ROPE_THETA = 10_000.0
INIT_STD = 0.02  # Qwen2-VL's initializer_range


# --- preprocessing ---------------------------------------------------------------------------------


def frames_to_patches(frames: np.ndarray, cfg: Qwen2VisionConfig) -> tuple[torch.Tensor, Grid]:
    """RGB frames [F, H, W, C] uint8 (H, W multiples of patch * merge) -> (patches [t*h*w, C*T*p*p]
    float32, grid (t, h, w)); an odd last frame is repeated to fill its pair (the processors do)."""
    f, height, width, c = frames.shape
    p, m, tp = cfg.patch_size, cfg.spatial_merge_size, cfg.temporal_patch_size
    if height % (p * m) or width % (p * m):
        raise ValueError(f"frames of {height}x{width} px: both sides must be multiples of {p * m}")
    if f % tp:
        frames = np.concatenate([frames, np.repeat(frames[-1:], tp - f % tp, axis=0)])
    x = (frames.astype(np.float64) * (1 / 255)).astype(np.float32)  # transformers' rescale
    x = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)  # its normalize
    t, h, w = len(x) // tp, height // p, width // p
    x = x.reshape(t, tp, h // m, m, p, w // m, m, p, c)
    # -> (t, h blocks, w blocks, m rows, m cols, channel, frame, pixel row, pixel column)
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    return torch.from_numpy(np.ascontiguousarray(x).reshape(t * h * w, c * tp * p * p)), (t, h, w)


def decode_rgb(data: bytes) -> Image.Image:
    """Encoded image bytes -> an RGB PIL image (convert("RGB"), as the processor converts a PIL image;
    qwen-vl-utils' fetch_image would first composite an image with alpha onto white)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def image_patches(data: bytes, size: tuple[int, int], cfg: Qwen2VisionConfig) -> tuple[torch.Tensor, Grid]:
    """An encoded image and its stored resized size (height, width: multiples of 28) -> its patches and
    grid (1, h, w), as Qwen2VLImageProcessor makes them with that size: PIL bicubic resize (skipped at the
    image's own size, as PIL does), then `frames_to_patches` of the image twice. Pixels differ from a
    pipeline that resizes otherwise: the fast processor and qwen-vl-utils' videos (torchvision bicubic
    with antialias)."""
    image = decode_rgb(data)
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return frames_to_patches(np.asarray(image)[None], cfg)


def video_patches(frames: list[bytes], cfg: Qwen2VisionConfig) -> tuple[torch.Tensor, Grid]:
    """A video's sampled frames (JPEG, already at the resized size: formats/video.py) -> its patches and
    grid (frames / 2, h, w), as Qwen2VLVideoProcessor makes them from those frames."""
    if not frames:
        raise ValueError("a video has at least one frame")
    images = [np.asarray(decode_rgb(f)) for f in frames]
    sizes = sorted({i.shape[:2] for i in images})
    if len(sizes) > 1:
        raise ValueError(f"a video's frames differ in size: {sizes}")
    return frames_to_patches(np.stack(images), cfg)


# --- positions and attention groups ----------------------------------------------------------------


def patch_positions(grids: list[Grid], merge: int) -> torch.Tensor:
    """[N, 2] (row, column) of every patch in the processor's order (merge groups contiguous), every
    frame pair of a grid repeating its image's positions: the released `rot_pos_emb`'s ids."""
    out = []
    for t, h, w in grids:
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")

        def merge_order(x: torch.Tensor) -> torch.Tensor:  # [h, w] -> [h*w] in the patch order
            return x.reshape(h // merge, merge, w // merge, merge).permute(0, 2, 1, 3).flatten()

        out.append(torch.stack([merge_order(rows), merge_order(cols)], dim=-1).repeat(t, 1))
    return torch.cat(out)


def rotary_angles(positions: torch.Tensor, head_dim: int, theta: float = ROPE_THETA) -> torch.Tensor:
    """[N, 2] (row, column) -> [N, head_dim / 2] angles (fp32): the row's angles at head_dim / 4
    frequencies, then the column's (the released VisionRotaryEmbedding(head_dim / 2))."""
    dim = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim))
    return (positions.float()[..., None] * inv_freq).flatten(1)  # [N, 2, dim/2] -> [N, dim]


def segment_lengths(grids: list[Grid]) -> list[int]:
    """Patches per attention group: one group per frame pair of every image and video (h * w each)."""
    return [h * w for t, h, w in grids for _ in range(t)]


# --- the tower --------------------------------------------------------------------------------------


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        self.cfg = cfg
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.embed_dim, kernel_size=kernel, stride=kernel, bias=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        x = patches.view(-1, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size)
        return self.proj(x.to(self.proj.weight.dtype)).view(-1, c.embed_dim)  # [N, D]


class VisionAttention(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=True)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        n, d = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.heads, -1).permute(1, 2, 0, 3)  # each [heads, N, head_dim]
        q, k = ((z.float() * cos + rotate_half(z.float()) * sin).to(v.dtype) for z in (q, k))  # RoPE in fp32
        # one SDPA call per image / frame pair: O(sum of L^2), no [N, N] mask (transformers' non-flash path)
        groups = zip(*(z.split(lengths, dim=1) for z in (q, k, v)))
        y = torch.cat([F.scaled_dot_product_attention(*g) for g in groups], dim=1)  # [heads, N, head_dim]
        return self.proj(y.transpose(0, 1).reshape(n, d))


class VisionMLP(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=EPS)
        self.attn = VisionAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=EPS)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, lengths)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """LayerNorm, then each merge group's m*m patches side by side -> MLP -> one LLM token."""

    def __init__(self, cfg: Qwen2VisionConfig, out_dim: int):
        super().__init__()
        self.width = cfg.embed_dim * cfg.spatial_merge_size**2
        self.ln_q = nn.LayerNorm(cfg.embed_dim, eps=EPS)
        self.mlp = nn.Sequential(nn.Linear(self.width, self.width), nn.GELU(), nn.Linear(self.width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.width))  # [N, D] -> [N / m^2, m^2 * D] -> [N / m^2, out]


class Qwen2VisionTower(nn.Module):
    """Patches of images and videos [N, C*T*p*p] and their grids -> [N / m^2, out_dim] LLM tokens, grid
    after grid in order."""

    blocks_name = "blocks"  # its blocks, for the optimizer's layer-wise LR decay
    top_names = ("merger.",)  # above the blocks: the projection into the LLM, trained at the full LR

    def __init__(self, cfg: Qwen2VisionConfig, out_dim: int):
        super().__init__()
        if cfg.embed_dim % cfg.heads or (cfg.embed_dim // cfg.heads) % 4:
            raise ValueError(f"width {cfg.embed_dim} over {cfg.heads} heads: the head size must be a multiple of 4 (2D RoPE)")
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg, out_dim)
        self.checkpointing = False  # recompute each block in backward (set by the trainer)

    def forward(self, patches: torch.Tensor, grids: list[Grid]) -> torch.Tensor:
        grids = [tuple(int(v) for v in g) for g in grids]
        lengths = segment_lengths(grids)
        if sum(lengths) != patches.shape[0]:
            raise ValueError(f"{patches.shape[0]} patches for grids {grids} of {sum(lengths)} patches")
        x = self.patch_embed(patches)
        angles = rotary_angles(patch_positions(grids, self.cfg.spatial_merge_size).to(x.device), x.shape[-1] // self.cfg.heads)
        emb = torch.cat([angles, angles], dim=-1)  # [N, head_dim], the "rotate half" layout
        cos, sin = emb.cos(), emb.sin()
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, cos, sin, lengths, use_reentrant=False) if recompute else block(x, cos, sin, lengths)
        return self.merger(x)
