"""Model sizes and training-stage presets, as plain dataclasses: the paper's model (Qwen-VL, arXiv
2308.12966, §2.1) and its three stages (§3 and the appendix's hyperparameter table); docs/recipe.md
lists them.

Model presets: `tiny` (CPU tests, seconds), `small` (about 2B: a ViT-L/14-sized encoder and a 1.8B
Qwen-sized LLM, for one GPU), `qwen-vl` (the paper's 9.6B: ViT-bigG/14 + Qwen-7B). Stage presets: what
is trained, image size, LLM sequence length and the optimizer schedule of each of the three stages.
The `tiny` preset also shrinks each stage's batch and schedule (PRESET_DEFAULTS) so that it runs on the
demo's data. Every field can be overridden (model/train.py: by option or a TOML file).

Qwen2-VL (arXiv 2409.12191; model/qwen2_vl.py) has its own model presets, QWEN2_VL_PRESETS:
`qwen2-vl-tiny` (CPU tests) and the released `qwen2-vl-2b`, `qwen2-vl-7b`, `qwen2-vl-72b`.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class VisionConfig:
    """The ViT trunk (open_clip's VisionTransformer layout; no class token is used)."""

    width: int
    layers: int
    heads: int
    mlp: int  # hidden size of the MLP
    patch: int = 14
    image_size: int = 224  # the grid the learned position table is stored for (16x16 at 224 / 14)
    eps: float = 1e-6  # LayerNorm epsilon


@dataclass(frozen=True)
class AdapterConfig:
    """The vision-language adapter: learned queries, one cross-attention layer, its width the LLM's."""

    queries: int = 256  # a 16x16 grid of queries: the image's tokens in the LLM
    heads: int = 32


@dataclass(frozen=True)
class LLMConfig:
    """The Qwen decoder: RMSNorm, RoPE, SwiGLU MLP, QKV with bias, untied output head."""

    hidden: int
    layers: int
    heads: int
    intermediate: int  # SwiGLU hidden size (each of the two up projections)
    vocab: int = 151_936  # embedding rows (151,643 BPE ranks + specials, padded)
    rope_base: float = 10_000.0
    eps: float = 1e-6  # RMSNorm epsilon
    max_seq: int = 2048


@dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig
    adapter: AdapterConfig
    llm: LLMConfig


PRESETS = {
    "tiny": ModelConfig(
        VisionConfig(width=64, layers=2, heads=2, mlp=128),
        AdapterConfig(queries=256, heads=2),
        LLMConfig(hidden=64, layers=2, heads=4, intermediate=128),
    ),
    "small": ModelConfig(  # ViT-L/14 (0.30B) + adapter + a Qwen-1.8B-shaped LLM: about 2.2B
        VisionConfig(width=1024, layers=24, heads=16, mlp=4096),
        AdapterConfig(queries=256, heads=16),
        LLMConfig(hidden=2048, layers=24, heads=16, intermediate=5504),
    ),
    "qwen-vl": ModelConfig(  # ViT-bigG/14 (1.9B) + adapter (0.08B) + Qwen-7B (7.7B): 9.6B
        VisionConfig(width=1664, layers=48, heads=16, mlp=8192),
        AdapterConfig(queries=256, heads=32),
        LLMConfig(hidden=4096, layers=32, heads=32, intermediate=11008),
    ),
}

VISION, ADAPTER, LLM = "vision", "adapter", "llm"  # the parts a stage trains or freezes

# What a model preset changes in every stage preset and run default: `tiny` is for the demo's few
# hundred rows on a CPU, where the paper's global batch (30,720 pairs in stage 1) would need more rows
# per step than the data holds, and a few row groups give fewer readers than two DataLoader workers
# (unit_rows 1: every row can go to any reader).
PRESET_DEFAULTS = {name: {"global_batch": 4, "steps": 4, "warmup_steps": 1, "unit_rows": 1} for name in ("tiny", "qwen2-vl-tiny")}


@dataclass(frozen=True)
class StageConfig:
    """One training stage: what it trains, its image size and sequence, and its optimizer schedule."""

    stage: int
    trainable: tuple[str, ...]
    image_size: int
    seq_len: int
    lr: float  # peak
    min_lr: float
    warmup_steps: int
    steps: int
    global_batch: int  # sequences (stage 1: image-text pairs) per optimizer step
    vit_layer_decay: float  # layer-wise LR decay for the ViT (0: the ViT is frozen)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.05
    grad_clip: float = 1.0


STAGES = {
    1: StageConfig(1, (VISION, ADAPTER), 224, 512, 2e-4, 1e-6, 500, 50_000, 30_720, 0.95),
    2: StageConfig(2, (VISION, ADAPTER, LLM), 448, 2048, 5e-5, 1e-5, 400, 19_000, 4096, 0.95),
    3: StageConfig(3, (ADAPTER, LLM), 448, 2048, 1e-5, 1e-6, 3000, 8000, 128, 0.0),
}


# --- Qwen2-VL (arXiv 2409.12191) -------------------------------------------------------------------


@dataclass(frozen=True)
class Qwen2VisionConfig:
    """The Qwen2-VL ViT (transformers' Qwen2VLVisionConfig): 3D patch embedding, 2D RoPE, 2x2 merger."""

    depth: int  # transformer blocks
    embed_dim: int  # width of the patch embedding and the blocks
    heads: int
    mlp_ratio: float = 4.0  # MLP hidden = int(embed_dim * mlp_ratio)
    patch_size: int = 14
    temporal_patch_size: int = 2  # frames per patch: an image is its frame twice
    spatial_merge_size: int = 2  # the merger joins merge x merge patches into one LLM token
    in_channels: int = 3

    @property
    def patch_values(self) -> int:
        """The values of one flattened patch: channels x frames x pixels (3 x 2 x 14 x 14 = 1176)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class Qwen2LLMConfig:
    """The Qwen2 decoder with M-RoPE (transformers' Qwen2VLTextConfig): RMSNorm, grouped-query
    attention with QKV bias, SwiGLU MLP."""

    hidden: int  # also the merger's output: one vision token is one embedding
    intermediate: int  # SwiGLU hidden size (each of gate_proj, up_proj)
    layers: int
    heads: int  # query heads
    kv_heads: int  # key/value heads, each shared by heads / kv_heads query heads
    vocab: int = 151_936
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)  # rotary frequencies for t, h, w: sum = head_dim / 2
    tie_word_embeddings: bool = False  # the output head is the embedding table


@dataclass(frozen=True)
class Qwen2VLConfig:
    vision: Qwen2VisionConfig
    llm: Qwen2LLMConfig


# Sizes from the released config.json files (Hugging Face Qwen/Qwen2-VL-2B-Instruct, -7B-Instruct and
# -72B-Instruct; their vision_config only names hidden_size, the merger's output, the rest being
# Qwen2VLVisionConfig's defaults: 32 blocks, 1280 wide, 16 heads, mlp_ratio 4). Parameters: 2.21B, 8.29B
# and 73.4B as the hub counts their safetensors; the ViT is 675M with the 7B's merger (2B's: 665M).
_QWEN2_VIT = Qwen2VisionConfig(depth=32, embed_dim=1280, heads=16)
QWEN2_VL_PRESETS = {
    "qwen2-vl-tiny": Qwen2VLConfig(
        Qwen2VisionConfig(depth=2, embed_dim=32, heads=2),
        Qwen2LLMConfig(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, mrope_section=(2, 3, 3),
                       tie_word_embeddings=True),
    ),
    "qwen2-vl-2b": Qwen2VLConfig(
        _QWEN2_VIT,
        Qwen2LLMConfig(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, tie_word_embeddings=True),
    ),
    "qwen2-vl-7b": Qwen2VLConfig(
        _QWEN2_VIT,
        Qwen2LLMConfig(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152_064),
    ),
    "qwen2-vl-72b": Qwen2VLConfig(
        _QWEN2_VIT,
        Qwen2LLMConfig(hidden=8192, intermediate=29568, layers=80, heads=64, kv_heads=8, vocab=152_064),
    ),
}


# Qwen2-VL's three stages (Qwen2-VL paper §2.2): the ViT alone on image-text data, then every parameter,
# then the LLM alone on instruction data with the ViT frozen. The merger (the 2x2 MLP into the LLM) is part
# of the vision tower. The paper gives no optimizer settings: these are Qwen-VL's stages' (STAGES above),
# and every stage reads packed rows of the qwen2-vl dialect (images at their own size: no image_size, 0).
QWEN2_VL_STAGES = {
    1: StageConfig(1, (VISION,), 0, 2048, 2e-4, 1e-6, 500, 50_000, 30_720, 0.95),
    2: StageConfig(2, (VISION, LLM), 0, 2048, 5e-5, 1e-5, 400, 19_000, 4096, 0.95),
    3: StageConfig(3, (LLM,), 0, 2048, 1e-5, 1e-6, 3000, 8000, 128, 0.0),
}
