"""The Qwen2 decoder of Qwen2-VL with M-RoPE (Qwen2-VL paper, arXiv 2409.12191, §2.1; transformers 4.57
`modeling_qwen2_vl.py`: `Qwen2VLTextModel`, `apply_multimodal_rotary_pos_emb`).

Block: x + self_attn(input_layernorm(x)), then + mlp(post_attention_layernorm(x)); a final RMSNorm
`norm`. Attention: q_proj, k_proj, v_proj with bias, o_proj without; grouped-query (kv_heads key/value
heads, each shared by heads / kv_heads query heads). MLP: down_proj(silu(gate_proj(x)) * up_proj(x)).
The output head is `lm_head`, or the embedding table itself with tie_word_embeddings (then there is no
lm_head parameter, as the released checkpoint of the 2B has no lm_head.weight).

M-RoPE: each token has three position ids (temporal, height, width: formats/mrope.py), shape [3, B, T].
The head_dim / 2 rotary frequencies are cut into mrope_section = (16, 24, 24) runs: the first run
rotates by the temporal id, the next by the height id, the last by the width id; the "rotate half"
layout repeats the same angles over the second half of the dimensions. Text tokens have three equal ids,
which is plain RoPE.

RMSNorm, the rotation (in fp32), the document mask and the loss are model/llm.py's. With doc_ids
[B, T] (-1: padding) attention stays inside each document (block-diagonal causal); M-RoPE ids restart at
0 per document, so a packed document computes what it computes alone.
Parameter names are the released checkpoint's with `model.` dropped (lm_head.weight kept; model/weights.py).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import Qwen2LLMConfig
from model.llm import RMSNorm, apply_rope, document_attention_mask, next_token_loss


def mrope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, section: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, B, T] position ids -> cos, sin [B, 1, T, head_dim] (fp32): frequency run i of `section`
    rotates by position_ids[i]."""
    if sum(section) != head_dim // 2:
        raise ValueError(f"mrope_section {tuple(section)} must sum to head_dim / 2 = {head_dim // 2}")
    exponent = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponent)
    freqs = position_ids.float()[..., None] * inv_freq  # [3, B, T, D/2]
    freqs = torch.cat([run[i] for i, run in enumerate(freqs.split(list(section), dim=-1))], dim=-1)  # [B, T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, D]
    return emb.cos(), emb.sin()


class Attention(nn.Module):
    def __init__(self, cfg: Qwen2LLMConfig):
        super().__init__()
        if cfg.hidden % cfg.heads or cfg.heads % cfg.kv_heads:
            raise ValueError(f"hidden {cfg.hidden}, {cfg.heads} heads, {cfg.kv_heads} kv heads: each must divide the one before")
        self.heads, self.kv_heads = cfg.heads, cfg.kv_heads
        self.head_dim = cfg.hidden // cfg.heads
        self.q_proj = nn.Linear(cfg.hidden, cfg.heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden, cfg.kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden, cfg.kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(cfg.heads * self.head_dim, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # [B, nh, T, D]
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # [B, nkv, T, D]
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        group = self.heads // self.kv_heads  # each kv head serves `group` consecutive query heads
        k, v = (z.repeat_interleave(group, dim=1) for z in (k, v))  # [B, nh, T, D]
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: Qwen2LLMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen2LLMConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2LM(nn.Module):
    """The decoder: embeddings [B, T, H] (`embed`, then vision tokens spliced in) -> final hidden states;
    `logits` or `loss` next."""

    def __init__(self, cfg: Qwen2LLMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        self.checkpointing = False  # recompute each layer in backward (set by the trainer)

    @property
    def head(self) -> torch.Tensor:
        """The output head's weight [vocab, H]: lm_head's, or the embedding table when tied."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None,
        doc_ids: torch.Tensor | None = None,
        document_mask: bool = True,
    ) -> torch.Tensor:
        """Embeddings [B, T, H] -> final hidden states [B, T, H] (after `norm`).

        position_ids [3, B, T] are the M-RoPE ids (None: 0..T-1 on all three). doc_ids [B, T] (-1 =
        padding), with document_mask, restrict attention to earlier tokens of the same document;
        otherwise causal.
        """
        b, t, _ = x.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=x.device).expand(3, b, t)
        head_dim = self.cfg.hidden // self.cfg.heads
        cos, sin = mrope_cos_sin(position_ids, head_dim, self.cfg.rope_theta, self.cfg.mrope_section)
        mask = document_attention_mask(doc_ids) if document_mask and doc_ids is not None else None
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            x = checkpoint(layer, x, cos, sin, mask, use_reentrant=False) if recompute else layer(x, cos, sin, mask)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., vocab] in the model's dtype."""
        return F.linear(hidden, self.head)

    def loss(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        loss_mask: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        reduction: str = "mean",
        chunk: int = 4096,
    ) -> torch.Tensor:
        """Next-token cross-entropy over the supervised targets only (model/llm.py `next_token_loss`)."""
        return next_token_loss(hidden, self.head, input_ids, loss_mask, doc_ids, reduction, chunk)
