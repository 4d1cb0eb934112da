"""model/llm.py: the Qwen decoder, checked against direct computations on the tiny preset (CPU, fp32)."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from model.config import PRESETS
from model.llm import (
    QwenLM,
    convert_hf_qwen_state_dict,
    document_attention_mask,
    hf_qwen_key,
    supervised_targets,
    to_hf_qwen_key,
)

TINY = PRESETS["tiny"].llm
CFG = dataclasses.replace(TINY, vocab=512)  # the tiny shapes, a small vocabulary: fast
ATOL = 1e-5


def make_model(cfg=CFG, seed=0, **kw):
    torch.manual_seed(seed)
    model = QwenLM(cfg, **kw).eval()
    # non-zero biases, so that q/k/v bias handling is exercised too
    with torch.no_grad():
        for block in model.h:
            block.attn.c_attn.bias.normal_(0.0, 0.1)
    return model


def run(model, ids, pos, doc=None, document_mask=True):
    with torch.no_grad():
        return model(model.embed(ids), pos, doc, document_mask=document_mask)


def packed_example(vocab=CFG.vocab, seed=1):
    """One sequence: doc 0 (5 tokens), doc 1 (7 tokens), 4 padding tokens (positions 0.. as the packer)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, 16), generator=g)
    doc = torch.tensor([[0] * 5 + [1] * 7 + [-1] * 4])
    pos = torch.tensor([list(range(5)) + list(range(7)) + list(range(4))])
    return ids, pos, doc


def test_shapes_on_the_tiny_preset():
    model = QwenLM(TINY).eval()
    ids = torch.randint(0, TINY.vocab, (2, 10))
    pos = torch.arange(10).expand(2, 10)
    x = model.embed(ids)
    assert x.shape == (2, 10, TINY.hidden)
    h = model(x, pos, torch.zeros(2, 10, dtype=torch.int16))
    assert h.shape == (2, 10, TINY.hidden)
    assert model.logits(h).shape == (2, 10, TINY.vocab)
    assert model(x, None).shape == (2, 10, TINY.hidden)  # position_ids None: 0..T-1, causal


def test_packed_documents_equal_each_document_alone():
    model = make_model()
    ids, pos, doc = packed_example()
    packed = run(model, ids, pos, doc)[0]
    for start, end in ((0, 5), (5, 12)):
        alone = run(model, ids[:, start:end], torch.arange(end - start)[None])[0]
        torch.testing.assert_close(packed[start:end], alone, atol=ATOL, rtol=0)
    # a batch of two differently packed rows: row 1 has doc 1 first
    ids2 = torch.cat([ids, torch.cat([ids[:, 5:12], ids[:, :5], ids[:, 12:]], 1)])
    pos2 = torch.cat([pos, torch.tensor([list(range(7)) + list(range(5)) + list(range(4))])])
    doc2 = torch.cat([doc, torch.tensor([[0] * 7 + [1] * 5 + [-1] * 4])])
    batch = run(model, ids2, pos2, doc2)
    torch.testing.assert_close(batch[1, :7], packed[5:12], atol=ATOL, rtol=0)
    torch.testing.assert_close(batch[1, 7:12], packed[0:5], atol=ATOL, rtol=0)


def test_padding_gives_no_nan_forward_or_backward():
    model = make_model()
    model.train()
    ids, pos, doc = packed_example()
    ids = torch.cat([ids, ids])
    pos = torch.cat([pos, torch.zeros_like(pos)])  # row 1: all positions 0
    doc = torch.cat([doc, torch.full_like(doc, -1)])  # row 1: all padding
    h = model(model.embed(ids), pos, doc)
    assert torch.isfinite(h).all()
    loss_mask = (doc >= 0).to(torch.int8)
    loss = model.loss(h, ids, loss_mask, doc) + h.sum() * 0
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # padding never leaks into real tokens: changing the padding's ids changes nothing before it
    ids3 = ids[:1].clone()
    ids3[0, 12:] = (ids3[0, 12:] + 1) % CFG.vocab
    model.eval()
    before = run(model, ids[:1], pos[:1], doc[:1])[0, :12]
    torch.testing.assert_close(run(model, ids3, pos[:1], doc[:1])[0, :12], before)


def test_without_document_mask_doc_two_sees_doc_one():
    model = make_model()
    ids, pos, doc = packed_example()
    masked = run(model, ids, pos, doc)[0]
    causal = run(model, ids, pos, doc, document_mask=False)[0]
    torch.testing.assert_close(causal[:5], masked[:5], atol=ATOL, rtol=0)  # doc 0 is first: same either way
    assert (causal[5:12] - masked[5:12]).abs().max() > 1e-3  # doc 1 now attends to doc 0
    # doc_ids None is plain causal as well
    torch.testing.assert_close(run(model, ids, pos)[0], causal, atol=ATOL, rtol=0)


def test_document_mask_contents():
    doc = torch.tensor([[0, 0, 1, 1, -1, -1]])
    m = document_attention_mask(doc)
    assert m.shape == (1, 1, 6, 6) and m.dtype == torch.bool
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m[0, 0], expected)


def test_rope_depends_on_relative_positions_only():
    model = make_model()
    ids = torch.randint(0, CFG.vocab, (1, 9), generator=torch.Generator().manual_seed(3))
    base = run(model, ids, torch.arange(9)[None])
    shifted = run(model, ids, torch.arange(5, 14)[None])
    torch.testing.assert_close(shifted, base, atol=ATOL, rtol=0)
    spread = run(model, ids, (2 * torch.arange(9))[None])  # different relative distances
    assert (spread - base).abs().max() > 1e-3
    flat = run(model, ids, torch.zeros(1, 9, dtype=torch.long))  # no position information
    assert (flat - base).abs().max() > 1e-3
    # packed: doc 1 placed at positions restarting from 0 vs continuing from 5 gives the same hidden
    # states (document masked, so only its own relative positions matter) ...
    ids_p, pos, doc = packed_example()
    pos_cont = pos.clone()
    pos_cont[0, 5:12] = torch.arange(5, 12)
    torch.testing.assert_close(run(model, ids_p, pos_cont, doc), run(model, ids_p, pos, doc), atol=ATOL, rtol=0)


def test_swiglu_matches_a_hand_computation():
    model = make_model()
    mlp = model.h[0].mlp
    x = torch.randn(2, 3, CFG.hidden)
    w1, w2, wc = mlp.w1.weight, mlp.w2.weight, mlp.c_proj.weight
    a1 = x @ w1.T
    a2 = x @ w2.T
    expected = (a1 * (a2 / (1 + torch.exp(-a2)))) @ wc.T  # c_proj(w1(x) * silu(w2(x)))
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), expected, atol=1e-6, rtol=1e-5)
    assert w1.shape == w2.shape == (CFG.intermediate, CFG.hidden) and wc.shape == (CFG.hidden, CFG.intermediate)
    assert mlp.w1.bias is None and mlp.w2.bias is None and mlp.c_proj.bias is None


def hf_state_dict(cfg, seed=5, visual=True):
    """A tiny HF Qwen-style checkpoint with the real key names (and Qwen-VL's extra keys)."""
    g = torch.Generator().manual_seed(seed)
    h, i, v = cfg.hidden, cfg.intermediate, cfg.vocab

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    sd = {"transformer.wte.weight": r(v, h)}
    for n in range(cfg.layers):
        p = f"transformer.h.{n}."
        sd[p + "ln_1.weight"] = 1 + r(h)
        sd[p + "attn.c_attn.weight"] = r(3 * h, h)
        sd[p + "attn.c_attn.bias"] = r(3 * h)
        sd[p + "attn.c_proj.weight"] = r(h, h)
        sd[p + "ln_2.weight"] = 1 + r(h)
        sd[p + "mlp.w1.weight"] = r(i, h)
        sd[p + "mlp.w2.weight"] = r(i, h)
        sd[p + "mlp.c_proj.weight"] = r(h, i)
    sd["transformer.ln_f.weight"] = 1 + r(h)
    sd["lm_head.weight"] = r(v, h)
    if visual:  # in a Qwen-VL checkpoint, not the LLM's
        sd["transformer.visual.conv1.weight"] = r(8, 3, 2, 2)
        sd["transformer.visual.attn_pool.query"] = r(4, 8)
        sd["transformer.rotary_emb.inv_freq"] = r(h // cfg.heads // 2)
    return sd


def reference_forward(sd, cfg, ids):
    """Qwen-7B's forward written directly from the HF-named tensors: one document, positions 0..T-1,
    explicit softmax attention with a causal mask."""
    nh, hd = cfg.heads, cfg.hidden // cfg.heads
    t = ids.shape[1]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.eps) * w

    inv = 1.0 / (cfg.rope_base ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.arange(t).float()[:, None] * inv[None]  # [T, D/2]
    cos, sin = ang.cos(), ang.sin()

    def rope(z):  # z [B, nh, T, D]: rotate (x1, x2) pairs that are D/2 apart
        z1, z2 = z[..., : hd // 2], z[..., hd // 2 :]
        return torch.cat((z1 * cos - z2 * sin, z2 * cos + z1 * sin), -1)

    x = sd["transformer.wte.weight"][ids]
    for n in range(cfg.layers):
        p = f"transformer.h.{n}."
        a = rms(x, sd[p + "ln_1.weight"])
        qkv = a @ sd[p + "attn.c_attn.weight"].T + sd[p + "attn.c_attn.bias"]
        q, k, v = (z.reshape(1, t, nh, hd).transpose(1, 2) for z in qkv.split(cfg.hidden, -1))
        q, k = rope(q), rope(k)
        s = q @ k.transpose(-1, -2) / math.sqrt(hd)
        s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(1, t, cfg.hidden)
        x = x + o @ sd[p + "attn.c_proj.weight"].T
        m = rms(x, sd[p + "ln_2.weight"])
        a1, a2 = m @ sd[p + "mlp.w1.weight"].T, m @ sd[p + "mlp.w2.weight"].T
        x = x + (a1 * F.silu(a2)) @ sd[p + "mlp.c_proj.weight"].T
    return rms(x, sd["transformer.ln_f.weight"])


def test_hf_qwen_state_dict_loads_one_to_one_and_matches_a_reference_forward():
    sd = hf_state_dict(CFG)
    model = QwenLM(CFG).eval()
    converted = convert_hf_qwen_state_dict(sd)
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(converted) == set(model.state_dict())  # every parameter, nothing else (no buffers)
    assert len(converted) == len(sd) - 3  # only the visual / inv_freq keys dropped
    for k, v in sd.items():
        ours = hf_qwen_key(k)
        if ours is None:
            assert k.startswith("transformer.visual.") or k.endswith("inv_freq")
            continue
        assert to_hf_qwen_key(ours) == k
        assert torch.equal(model.state_dict()[ours], v)
    ids = torch.randint(0, CFG.vocab, (1, 11), generator=torch.Generator().manual_seed(7))
    expected = reference_forward(sd, CFG, ids)
    torch.testing.assert_close(run(model, ids, torch.arange(11)[None]), expected, atol=ATOL, rtol=1e-5)
    one_doc = run(model, ids, torch.arange(11)[None], torch.zeros(1, 11, dtype=torch.int16))
    torch.testing.assert_close(one_doc, expected, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(model.logits(expected), expected @ sd["lm_head.weight"].T)


def test_hf_qwen_key_rejects_unknown_keys():
    assert hf_qwen_key("transformer.h.31.attn.c_attn.bias") == "h.31.attn.c_attn.bias"
    assert hf_qwen_key("lm_head.weight") == "lm_head.weight"
    assert hf_qwen_key("transformer.h.0.attn.masked_bias") is None
    for bad in ("transformer.h.0.attn.q_proj.weight", "model.embed_tokens.weight", "transformer.h.0.mlp.w3.weight"):
        with pytest.raises(KeyError):
            hf_qwen_key(bad)


def test_init():
    model = QwenLM(dataclasses.replace(TINY, vocab=4096, intermediate=1024, hidden=256))
    assert abs(model.wte.weight.std().item() - 0.02) < 1e-3
    assert abs(model.h[0].mlp.w1.weight.std().item() - 0.02) < 1e-3
    assert abs(model.h[0].mlp.c_proj.weight.std().item() - 0.02 / math.sqrt(2 * TINY.layers)) < 1e-3
    assert torch.all(model.h[0].attn.c_attn.bias == 0)
    assert torch.all(model.h[0].ln_1.weight == 1) and torch.all(model.ln_f.weight == 1)
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()  # untied


def test_activation_checkpointing_gives_the_same_output_and_grads():
    ids, pos, doc = packed_example()
    grads, outs, calls = [], [], []
    for ckpt in (False, True):
        model = make_model(checkpointing=ckpt).train()
        n = [0]
        model.h[0].attn.register_forward_pre_hook(lambda *_: n.__setitem__(0, n[0] + 1))
        h = model(model.embed(ids), pos, doc)
        h.pow(2).sum().backward()
        outs.append(h.detach())
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
        calls.append(n[0])
    assert calls == [1, 2]  # checkpointed: the block runs again in backward
    torch.testing.assert_close(outs[0], outs[1])
    assert len(grads[0]) == len(grads[1]) == len(list(model.parameters())) - 1  # all but lm_head
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_loss_only_on_supervised_targets_matches_full_logits():
    model = make_model().train()
    ids, pos, doc = packed_example()
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.int8)
    loss_mask[0, 5] = 1  # doc 1's first token: never predicted from doc 0
    h = model(model.embed(ids), pos, doc)
    logits = model.logits(h)[0, :-1]
    sel = torch.tensor([t + 1 in (2, 3, 4, 7, 8, 9, 10, 11) for t in range(15)])
    expected = F.cross_entropy(logits[sel], ids[0, 1:][sel])
    assert supervised_targets(loss_mask, doc) == 8
    for chunk in (4096, 3):
        torch.testing.assert_close(model.loss(h, ids, loss_mask, doc, chunk=chunk), expected)
    torch.testing.assert_close(model.loss(h, ids, loss_mask, doc, reduction="sum"), expected * 8)
    # gradients agree with the full-logits computation
    g_full = torch.autograd.grad(expected, h, retain_graph=True)[0]
    g_ours = torch.autograd.grad(model.loss(h, ids, loss_mask, doc, chunk=3), h)[0]
    torch.testing.assert_close(g_ours, g_full)
    # nothing supervised: 0, still differentiable
    zero = model.loss(h, ids, torch.zeros_like(loss_mask), doc)
    assert zero.item() == 0.0 and zero.requires_grad


def test_bf16_runs():
    model = make_model().to(torch.bfloat16)
    ids, pos, doc = packed_example()
    h = run(model, ids, pos, doc)
    assert h.dtype == torch.bfloat16 and torch.isfinite(h).all()
    fp32 = run(make_model(), ids, pos, doc)
    assert (h.float() - fp32).abs().max() < 0.1
