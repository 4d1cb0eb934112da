import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.adapter import Adapter, CrossAttention, qwen_vl_to_adapter, sincos_2d
from model.config import PRESETS
from model.vision import VisionEncoder

TINY = PRESETS["tiny"]
HIDDEN, WIDTH = TINY.llm.hidden, TINY.vision.width


@pytest.fixture
def adapter():
    torch.manual_seed(0)
    return Adapter(TINY.adapter, WIDTH, HIDDEN)


def test_sincos_values():
    dim, m = 64, 16
    table = sincos_2d(dim, 16)
    assert table.shape == (256, dim) and table.dtype == torch.float32
    assert torch.equal(table[0], torch.tensor([0.0] * m + [1.0] * m + [0.0] * m + [1.0] * m))
    row, col = 3, 5  # position 3 * 16 + 5: the first half encodes the column, the second the row
    w = [1 / 10000 ** (i / m) for i in range(m)]
    want = (
        [math.sin(col * x) for x in w] + [math.cos(col * x) for x in w]
        + [math.sin(row * x) for x in w] + [math.cos(row * x) for x in w]
    )
    assert torch.equal(table[row * 16 + col], torch.tensor(want, dtype=torch.float32))


def test_sincos_matches_qwen_vl_float32_formula():
    # Qwen-VL's get_2d_sincos_pos_embed (MAE's), in numpy float32 as it computes it
    dim, grid = 64, 16
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))

    def axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float32) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    want = np.concatenate([axis(dim // 2, gw), axis(dim // 2, gh)], axis=1)
    assert np.allclose(sincos_2d(dim, grid).numpy(), want, atol=1e-6)


def test_output_shape_at_both_grids(adapter):
    for grid in (16, 32):
        assert adapter(torch.randn(2, grid * grid, WIDTH), grid).shape == (2, 256, HIDDEN)
    with pytest.raises(ValueError):
        adapter(torch.randn(1, 100, WIDTH), 16)


def test_positions_on_queries_and_keys_never_values(adapter, monkeypatch):
    seen = []
    forward = adapter.attn.forward
    monkeypatch.setattr(adapter.attn, "forward", lambda q, k, v: seen.append((q, k, v)) or forward(q, k, v))
    x = torch.randn(2, 32 * 32, WIDTH)
    with torch.no_grad():
        first = adapter(x, 32)
        adapter.pos_embed.copy_(torch.randn_like(adapter.pos_embed))
        second = adapter(x, 32)
        (q1, k1, v1), (q2, k2, v2) = seen
        table = adapter.pos_embed
        kv = adapter.ln_kv(adapter.kv_proj(x))
        assert torch.equal(v1, kv) and torch.equal(v2, kv)  # values: no positions
        assert torch.allclose(q2[0] - adapter.ln_q(adapter.query), table, atol=1e-6)
        keys = F.interpolate(table.reshape(1, 16, 16, -1).permute(0, 3, 1, 2), size=(32, 32), mode="bicubic")
        assert torch.allclose(k2 - kv, keys.permute(0, 2, 3, 1).reshape(1024, -1), atol=1e-6)
        assert not torch.allclose(q1, q2) and not torch.allclose(k1, k2)
        assert not torch.allclose(first, second)
        # at the stored grid the keys get the table itself
        seen.clear()
        adapter(torch.randn(1, 256, WIDTH), 16)
        (_, k, v), = seen
        assert torch.allclose(k - v, table, atol=1e-6)


def test_cross_attention_is_nn_multihead_attention(adapter):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(HIDDEN, TINY.adapter.heads, batch_first=True)
    mha.load_state_dict(adapter.attn.state_dict(), strict=True)
    q, k, v = torch.randn(1, 256, HIDDEN), torch.randn(3, 100, HIDDEN), torch.randn(3, 100, HIDDEN)
    with torch.no_grad():
        want = mha(q.expand(3, -1, -1), k, v, need_weights=False)[0]
        assert torch.allclose(adapter.attn(q, k, v), want, atol=1e-5)
    assert isinstance(CrossAttention(8, 2).in_proj_weight, nn.Parameter)


def test_gradients_reach_queries_not_the_fixed_table(adapter):
    adapter(torch.randn(2, 256, WIDTH), 16).square().mean().backward()
    assert adapter.query.grad is not None and adapter.query.grad.abs().sum() > 0
    assert all(p.grad is not None for p in adapter.parameters())
    assert "pos_embed" not in dict(adapter.named_parameters())
    assert "pos_embed" in adapter.state_dict()


def test_qwen_vl_checkpoint_keys_map(adapter):
    own = adapter.state_dict()
    qwen = {f"transformer.visual.attn_pool.{k}": torch.randn_like(v) for k, v in own.items()
            if not k.startswith("ln_post.") and k != "proj"}
    for k in ("ln_post.weight", "ln_post.bias", "proj"):
        qwen[f"transformer.visual.{k}"] = torch.randn_like(own[k])
    qwen["transformer.visual.conv1.weight"] = torch.randn(4)  # the ViT's: not the adapter's
    qwen["transformer.h.0.ln_1.weight"] = torch.randn(4)
    adapter.load_state_dict(qwen_vl_to_adapter(qwen), strict=True)
    assert torch.equal(adapter.proj, qwen["transformer.visual.proj"])
    assert torch.equal(adapter.attn.in_proj_weight, qwen["transformer.visual.attn_pool.attn.in_proj_weight"])


def test_vision_then_adapter_at_448():
    torch.manual_seed(0)
    vision = VisionEncoder(TINY.vision)
    adapter = Adapter(TINY.adapter, TINY.vision.width, TINY.llm.hidden)
    out = adapter(vision(torch.randn(1, 3, 448, 448)), vision.grid(448))
    assert out.shape == (1, 256, TINY.llm.hidden) and torch.isfinite(out).all()
