"""Model sizes and training-stage presets, as plain dataclasses: the paper's model (Qwen-VL, arXiv
2308.12966, §2.1) and its three stages (§3 and the appendix's hyperparameter table); docs/recipe.md
lists them.

Model presets: `tiny` (CPU tests, seconds), `small` (about 2B: a ViT-L/14-sized encoder and a 1.8B
Qwen-sized LLM, for one GPU), `qwen-vl` (the paper's 9.6B: ViT-bigG/14 + Qwen-7B). Stage presets: what
is trained, image size, LLM sequence length and the optimizer schedule of each of the three stages.
The `tiny` preset also shrinks each stage's batch and schedule (PRESET_DEFAULTS) so that it runs on the
demo's data. Every field can be overridden (model/train.py: by option or a TOML file).
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
PRESET_DEFAULTS = {"tiny": {"global_batch": 4, "steps": 4, "warmup_steps": 1, "unit_rows": 1}}


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
