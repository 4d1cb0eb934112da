"""The Qwen decoder (Qwen-7B's layout) in plain PyTorch: embedding, pre-norm blocks, final RMSNorm, untied head.

Block: x + attn(ln_1(x)), then + mlp(ln_2(x)). RMSNorm (normalized in fp32, cast back, times weight);
attention with one fused QKV projection with bias (`c_attn`: q, k, v concatenated on the output dim,
heads contiguous inside each), rotary embedding on the full head dim (Qwen's rotary_pct = 1.0; the
"rotate half" layout: frequencies repeated as [f, f], x -> (-x2, x1)), output projection `c_proj`
without bias; SwiGLU MLP without bias: c_proj(w1(x) * silu(w2(x))) (Qwen gates with w2, not w1;
Qwen's `intermediate_size` 22016 is twice ours: each of w1, w2 has 22016 // 2 = 11008 rows).

Names are Qwen's own, so an HF Qwen-7B / Qwen-VL state dict maps 1:1 by dropping "transformer."
(`hf_qwen_key`, `convert_hf_qwen_state_dict`):

    transformer.wte.weight                 -> wte.weight                [vocab, H]
    transformer.h.N.ln_1.weight            -> h.N.ln_1.weight           [H]
    transformer.h.N.attn.c_attn.weight     -> h.N.attn.c_attn.weight    [3H, H]
    transformer.h.N.attn.c_attn.bias       -> h.N.attn.c_attn.bias      [3H]
    transformer.h.N.attn.c_proj.weight     -> h.N.attn.c_proj.weight    [H, H]
    transformer.h.N.ln_2.weight            -> h.N.ln_2.weight           [H]
    transformer.h.N.mlp.w1.weight          -> h.N.mlp.w1.weight         [I, H]
    transformer.h.N.mlp.w2.weight          -> h.N.mlp.w2.weight         [I, H]
    transformer.h.N.mlp.c_proj.weight      -> h.N.mlp.c_proj.weight     [H, I]
    transformer.ln_f.weight                -> ln_f.weight               [H]
    lm_head.weight                         -> lm_head.weight            [vocab, H]

Use: `x = lm.embed(input_ids)`; splice image features into x (at the <imgpad> positions); then
`h = lm(x, position_ids, doc_ids)`; then `lm.loss(h, input_ids, loss_mask, doc_ids)` (full-vocab logits
only at supervised targets, in chunks) or `lm.logits(h)`.

Attention masks. With `document_mask` (the default) and doc_ids given, token i attends to token j iff
doc_ids[i] == doc_ids[j] and j <= i: block-diagonal causal. Padding (doc -1) is one more block: its
tokens see only earlier padding tokens and themselves, so no row is empty (no NaN), and no real token
ever sees padding. The mask is a [B, 1, T, T] bool built once per forward and shared by every layer and
head: B * T^2 bytes (4 MiB per 2048-token sequence; SDPA turns it into an additive mask of the query's
dtype per call, 8 MiB per sequence in bf16, transient). An explicit mask rules out SDPA's FlashAttention
backend on GPU: it runs the memory-efficient (or cuDNN) kernel, which is still O(T) memory, but
computes the masked-out blocks too (no block skipping). Without doc_ids, or with document_mask=False,
attention is plain causal (`is_causal=True`, Flash-eligible) and documents in a sequence see each other.

RoPE angles come from position_ids (restarting at 0 per document), never from arange, so a document
packed anywhere in a sequence computes exactly what it computes alone. Qwen's inference-only
extensions (dynamic NTK, log-n attention scaling) do nothing at or below 2048 tokens and are left out;
dropout is 0 in Qwen-VL and left out.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import LLMConfig

INIT_STD = 0.02  # Qwen's initializer_range


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [B, 1, T, head_dim] (fp32) for the "rotate half" layout.

    Computed from scratch each forward (head_dim / 2 frequencies): no buffer that a .to(bfloat16) could
    degrade, nothing to initialise after building on the meta device.
    """
    exponent = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (base**exponent)
    freqs = position_ids.float()[..., None] * inv_freq  # [B, T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, D]
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, D]; rotated in fp32 (as Qwen does), returned in x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).type_as(x)


def document_attention_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] document ids -> [B, 1, T, T] bool, True where query i may attend key j.

    Same document and j <= i. Padding (-1) forms its own block; the diagonal is always True, so every
    query has at least one key. B * T^2 bytes.
    """
    t = doc_ids.shape[-1]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    return (same & causal)[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        assert cfg.hidden % cfg.heads == 0, "hidden must be a multiple of heads"
        self.heads = cfg.heads
        self.head_dim = cfg.hidden // cfg.heads
        self.c_attn = nn.Linear(cfg.hidden, 3 * cfg.hidden, bias=True)
        self.c_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, h = x.shape
        q, k, v = self.c_attn(x).split(h, dim=-1)
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))  # [B, nh, T, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, h))


class MLP(nn.Module):
    """SwiGLU as Qwen writes it: c_proj(w1(x) * silu(w2(x)))."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.w2 = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.c_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.w1(x) * F.silu(self.w2(x)))


class Block(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.ln_1 = RMSNorm(cfg.hidden, cfg.eps)
        self.attn = Attention(cfg)
        self.ln_2 = RMSNorm(cfg.hidden, cfg.eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cos, sin, mask)
        return x + self.mlp(self.ln_2(x))


class QwenLM(nn.Module):
    """The Qwen decoder. `checkpointing`: recompute each block in backward (saves activations; may be
    toggled on the instance at any time; only acts while training with grad enabled)."""

    def __init__(self, cfg: LLMConfig, checkpointing: bool = False):
        super().__init__()
        self.cfg = cfg
        self.checkpointing = checkpointing
        self.wte = nn.Embedding(cfg.vocab, cfg.hidden)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = RMSNorm(cfg.hidden, cfg.eps)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Qwen's init: Linear and Embedding N(0, 0.02), biases 0, norms 1, and both c_proj (the
        projections back into the residual stream) N(0, 0.02 / sqrt(2 * layers)). Call again after
        `to_empty()` if the model was built on the meta device and is not loaded from a checkpoint."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, INIT_STD)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, RMSNorm):
                m.weight.fill_(1.0)
        for block in self.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.normal_(0.0, INIT_STD / math.sqrt(2 * self.cfg.layers))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] token ids -> [B, T, H] embeddings (splice image features in before `forward`)."""
        return self.wte(input_ids)

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None,
        doc_ids: torch.Tensor | None = None,
        document_mask: bool = True,
    ) -> torch.Tensor:
        """Embeddings [B, T, H] -> final hidden states [B, T, H] (after ln_f; `logits` or `loss` next).

        position_ids [B, T] drive RoPE (None: 0..T-1). doc_ids [B, T] (-1 = padding), with
        document_mask, restrict attention to earlier tokens of the same document; otherwise causal.
        """
        b, t, _ = x.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=x.device).expand(b, t)
        cos, sin = rope_cos_sin(position_ids, self.cfg.hidden // self.cfg.heads, self.cfg.rope_base)
        mask = document_attention_mask(doc_ids) if document_mask and doc_ids is not None else None
        use_ckpt = self.checkpointing and self.training and torch.is_grad_enabled()
        for block in self.h:
            if use_ckpt:
                x = checkpoint(block, x, cos, sin, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask)
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., vocab] in the model's dtype."""
        return self.lm_head(hidden)

    def loss(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        loss_mask: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        reduction: str = "mean",
        chunk: int = 4096,
    ) -> torch.Tensor:
        """Next-token cross-entropy over the supervised targets only (`next_token_loss` with lm_head)."""
        return next_token_loss(hidden, self.lm_head.weight, input_ids, loss_mask, doc_ids, reduction, chunk)


def next_token_loss(
    hidden: torch.Tensor,
    head: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    doc_ids: torch.Tensor | None = None,
    reduction: str = "mean",
    chunk: int = 4096,
) -> torch.Tensor:
    """Next-token cross-entropy over the supervised targets only; `head` is the output head's weight
    [vocab, H] (logits = hidden @ head.T).

    The hidden state at t predicts input_ids[t + 1], counted where loss_mask[t + 1] is 1 (and, with
    doc_ids, where t and t + 1 are in the same document: a document's first token is never predicted
    from the previous document). Logits exist only for those rows, `chunk` rows at a time, in fp32;
    with grad enabled each chunk is recomputed in backward, so at most one chunk of logits is alive.
    reduction "mean": over the supervised targets (0 if none); "sum": the sum (divide by
    `supervised_targets(...)` yourself when averaging across micro-batches).
    """
    sel = supervised_targets_mask(loss_mask, doc_ids)
    rows = hidden[:, :-1][sel]  # [N, H]
    targets = input_ids[:, 1:][sel].long()  # [N]
    total = hidden.new_zeros((), dtype=torch.float32)
    if rows.shape[0] == 0:  # keep the graph connected (every parameter gets a zero grad)
        total = total + F.linear(rows, head).float().sum()
    for i in range(0, rows.shape[0], chunk):
        r, y = rows[i : i + chunk], targets[i : i + chunk]
        if torch.is_grad_enabled() and (r.requires_grad or head.requires_grad):
            total = total + checkpoint(_ce_sum, r, y, head, use_reentrant=False)
        else:
            total = total + _ce_sum(r, y, head)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / max(rows.shape[0], 1)
    raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")


def _ce_sum(rows: torch.Tensor, targets: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(rows, head).float(), targets, reduction="sum")


def supervised_targets_mask(loss_mask: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] -> [B, T - 1] bool: True where hidden t predicts a supervised token t + 1 (same document)."""
    sel = loss_mask[:, 1:] != 0
    if doc_ids is not None:
        sel = sel & (doc_ids[:, 1:] == doc_ids[:, :-1]) & (doc_ids[:, 1:] >= 0)
    return sel


def supervised_targets(loss_mask: torch.Tensor, doc_ids: torch.Tensor | None = None) -> int:
    """How many targets `QwenLM.loss` counts (for token-weighted averaging across micro-batches)."""
    return int(supervised_targets_mask(loss_mask, doc_ids).sum())


# --- HF Qwen checkpoint names -------------------------------------------------------------------

_HF_LLM_KEY = re.compile(
    r"transformer\.(wte\.weight|ln_f\.weight"
    r"|h\.\d+\.(?:ln_1\.weight|ln_2\.weight|attn\.c_attn\.(?:weight|bias)|attn\.c_proj\.weight"
    r"|mlp\.(?:w1|w2|c_proj)\.weight))"
)
# In a Qwen / Qwen-VL checkpoint but not parameters of this module: the vision tower and adapter
# (transformer.visual.*, model/vision.py and model/adapter.py's business) and recomputed buffers.
_HF_NOT_OURS = re.compile(
    r"transformer\.visual\..*"
    r"|transformer\.(?:h\.\d+\.attn\.)?rotary_emb\.inv_freq"
    r"|transformer\.h\.\d+\.attn\.(?:bias|masked_bias)"
)


def hf_qwen_key(name: str) -> str | None:
    """An HF Qwen-7B / Qwen-VL checkpoint key -> this module's parameter name.

    None for keys that are in such a checkpoint but not ours (transformer.visual.*, rotary inv_freq,
    the causal-mask buffers); KeyError for anything else (a different architecture, a typo).
    """
    if name == "lm_head.weight":
        return name
    m = _HF_LLM_KEY.fullmatch(name)
    if m:
        return m.group(1)
    if _HF_NOT_OURS.fullmatch(name):
        return None
    raise KeyError(f"not a Qwen LLM checkpoint key: {name!r}")


def to_hf_qwen_key(name: str) -> str:
    """The inverse of hf_qwen_key: this module's parameter name -> the HF Qwen key. Not used by the product
    (which only imports HF checkpoints); the tests write their HF-layout checkpoints with it."""
    return name if name == "lm_head.weight" else "transformer." + name


def convert_hf_qwen_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an HF Qwen state dict (or a shard of one) to ours, dropping the keys that are not ours.

    Load with `model.load_state_dict(converted, strict=True)` (a whole checkpoint) or strict=False per
    shard, checking the union of loaded keys against `model.state_dict()` yourself.
    """
    out = {}
    for k, v in state_dict.items():
        ours = hf_qwen_key(k)
        if ours is not None:
            out[ours] = v
    return out
