"""model/weights.py: small checkpoints written here in the published layouts load completely and exactly;
an unknown key, a missing key or a wrong shape is refused in one line, before anything is written."""

import contextlib
import json
import pickle
from dataclasses import replace

import open_clip
import pytest
import torch
from safetensors.torch import save_file

import model.weights as weights
from model.config import PRESETS, ModelConfig
from model.llm import QwenLM, to_hf_qwen_key
from model.qwen_vl import QwenVL
from model.vision import OPENCLIP_UNUSED, interpolate_pos
from model.weights import CheckpointMismatch, load_hf_qwen_llm, load_openclip_vision, load_qwen_vl

TINY = PRESETS["tiny"]
CFG = ModelConfig(TINY.vision, TINY.adapter, replace(TINY.llm, vocab=256))  # a small vocab: small files
V, H = CFG.vision, CFG.llm


@pytest.fixture
def model():
    torch.manual_seed(0)
    return QwenVL(CFG)


def save(state, path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def one_line_error(match, fn, *args):
    with pytest.raises(CheckpointMismatch, match=match) as err:
        fn(*args)
    assert "\n" not in str(err.value)
    return str(err.value)


# --- OpenCLIP -------------------------------------------------------------------------------------


def tiny_clip(image_size=V.image_size):
    torch.manual_seed(1)
    return open_clip.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.model.CLIPVisionCfg(
            layers=V.layers, width=V.width, head_width=V.width // V.heads, mlp_ratio=V.mlp / V.width,
            patch_size=V.patch, image_size=image_size, norm_kwargs={"eps": V.eps},
        ),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    )


def assert_vision_equals(model, state, prefix="visual."):
    ours = model.vision.state_dict()
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        k = k.removeprefix(prefix)
        if k not in OPENCLIP_UNUSED:
            assert torch.equal(ours[f"trunk.{k}"], v), k


def test_openclip_full_clip_safetensors(model, tmp_path):
    state = tiny_clip().state_dict()
    save(state, tmp_path / "clip.safetensors")
    report = load_openclip_vision(model, tmp_path / "clip.safetensors")
    assert set(report.loaded) == set(model.vision.state_dict())
    assert set(report.loaded.values()) | set(report.ignored) == set(state)  # every key accounted for
    assert report.ignored["visual.class_embedding"].startswith("class token")
    assert "pooled" in report.ignored["visual.ln_post.weight"] and "projection" in report.ignored["visual.proj"]
    assert "text tower" in report.ignored["token_embedding.weight"]
    assert "text tower" in report.ignored["logit_scale"]
    assert report.notes == []
    assert_vision_equals(model, state)
    assert report.loaded["trunk.transformer.resblocks.1.attn.in_proj_weight"] == (
        "visual.transformer.resblocks.1.attn.in_proj_weight"
    )


def test_openclip_bin_pt_and_visual_only(model, tmp_path):
    state = tiny_clip().state_dict()
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")  # the hub's file
    # a training checkpoint of open_clip (DDP-wrapped): {"state_dict": {"module.<k>": ...}, ...}
    ckpt = {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(ckpt, tmp_path / "epoch_3.pt")
    visual = tiny_clip().visual.state_dict()
    save(visual, tmp_path / "visual.safetensors")
    for name in ("open_clip_pytorch_model.bin", "epoch_3.pt"):
        fresh = QwenVL(CFG)
        load_openclip_vision(fresh, tmp_path / name)
        assert_vision_equals(fresh, state)
    report = load_openclip_vision(model.vision, tmp_path / "visual.safetensors")  # the part itself works too
    assert set(report.ignored) == set(OPENCLIP_UNUSED)
    assert_vision_equals(model, visual, prefix="")


class NotATensor:
    pass


def test_openclip_bin_is_never_unpickled_beyond_tensors(model, tmp_path):
    torch.save({"state_dict": tiny_clip().state_dict(), "extra": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_openclip_vision(model, tmp_path / "evil.pt")


def test_openclip_other_grid_is_resized(model, tmp_path):
    state = tiny_clip(image_size=112).state_dict()  # an 8x8+1 table
    assert state["visual.positional_embedding"].shape == (65, V.width)
    save(state, tmp_path / "clip112.safetensors")
    report = load_openclip_vision(model, tmp_path / "clip112.safetensors")
    assert report.notes == ["position table resized from 64 to 256 patches"]
    pos = model.vision.trunk.positional_embedding
    stored = state["visual.positional_embedding"]
    assert pos.shape == (257, V.width)
    assert torch.equal(pos[0], stored[0])
    assert torch.equal(pos[1:], interpolate_pos(stored[1:], 16))
    assert torch.equal(model.vision.trunk.conv1.weight, state["visual.conv1.weight"])


def test_openclip_refuses_unknown_missing_and_misshapen_keys(model, tmp_path):
    state = tiny_clip().state_dict()
    before = model.vision.trunk.conv1.weight.clone()
    cases = {
        "extra": ({**state, "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(V.width)},
                  r"1 checkpoint keys unused: visual\.transformer\.resblocks\.0\.ls_1\.gamma$"),
        "missing": ({k: v for k, v in state.items() if k != "visual.ln_pre.bias"},
                    r"1 model keys not in the checkpoint: trunk\.ln_pre\.bias$"),
        "shape": ({**state, "visual.conv1.weight": torch.zeros(V.width, 3, 16, 16)},
                  r"shape mismatch: visual\.conv1\.weight \[64, 3, 16, 16\] -> trunk\.conv1\.weight \[64, 3, 14, 14\]$"),
    }
    for name, (bad, match) in cases.items():
        save(bad, tmp_path / f"{name}.safetensors")
        one_line_error(match, load_openclip_vision, model, tmp_path / f"{name}.safetensors")
    assert torch.equal(model.vision.trunk.conv1.weight, before)  # nothing written


# --- HF Qwen-7B -----------------------------------------------------------------------------------


def hf_qwen_state(seed=2):
    """A Qwen-7B-layout state dict (transformer.wte.weight, transformer.h.N.*, transformer.ln_f.weight,
    lm_head.weight) of random values, plus the rotary buffer some exports carry."""
    torch.manual_seed(seed)
    state = {to_hf_qwen_key(k): torch.randn_like(v) for k, v in QwenLM(H).state_dict().items()}
    state["transformer.rotary_emb.inv_freq"] = torch.rand(H.hidden // H.heads // 2)
    return state


def write_sharded(state, folder, n=2):
    """HF's sharded layout: model-0000i-of-0000n.safetensors + model.safetensors.index.json."""
    folder.mkdir(exist_ok=True)
    keys = list(state)
    weight_map = {}
    for i in range(n):
        shard = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = keys[i * len(keys) // n : (i + 1) * len(keys) // n]
        save({k: state[k] for k in part}, folder / shard)
        weight_map |= dict.fromkeys(part, shard)
    meta = {"total_size": sum(v.numel() * v.element_size() for v in state.values())}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": meta, "weight_map": weight_map}))
    return folder


def test_hf_qwen_two_shards_load_exactly_one_shard_open_at_a_time(model, tmp_path, monkeypatch):
    state = hf_qwen_state()
    folder = write_sharded(state, tmp_path / "qwen")
    open_now, most = [], []
    real = weights.safe_open

    @contextlib.contextmanager
    def counting(*args, **kwargs):
        with real(*args, **kwargs) as f:
            open_now.append(1)
            most.append(len(open_now))
            yield f
            open_now.pop()

    monkeypatch.setattr(weights, "safe_open", counting)
    report = load_hf_qwen_llm(model, folder)
    assert max(most) == 1
    assert set(report.loaded) == set(model.llm.state_dict())
    assert report.ignored == {"transformer.rotary_emb.inv_freq": "RoPE inv_freq buffer: recomputed"}
    ours = model.llm.state_dict()
    for k in ("transformer.wte.weight", "transformer.h.1.attn.c_attn.bias", "transformer.h.0.mlp.w2.weight",
              "transformer.ln_f.weight", "lm_head.weight"):
        assert torch.equal(ours[k.removeprefix("transformer.")], state[k]), k
    assert all(torch.equal(ours[k], state[to_hf_qwen_key(k)]) for k in ours)


def test_hf_qwen_single_file_folder(tmp_path):
    state = hf_qwen_state()
    (tmp_path / "one").mkdir()
    save(state, tmp_path / "one" / "model.safetensors")
    llm = QwenLM(H)
    load_hf_qwen_llm(llm, tmp_path / "one")
    assert torch.equal(llm.h[1].mlp.c_proj.weight, state["transformer.h.1.mlp.c_proj.weight"])


def test_hf_qwen_refuses(model, tmp_path):
    state = hf_qwen_state()
    cases = {
        "extra": ({**state, "transformer.h.0.attn.q_proj.weight": torch.zeros(H.hidden, H.hidden)},
                  r"1 checkpoint keys unused: transformer\.h\.0\.attn\.q_proj\.weight$"),
        "missing": ({k: v for k, v in state.items() if k != "transformer.ln_f.weight"},
                    r"1 model keys not in the checkpoint: ln_f\.weight$"),
        "shape": ({**state, "lm_head.weight": torch.zeros(300, H.hidden)},
                  r"shape mismatch: lm_head\.weight \[300, 64\] -> lm_head\.weight \[256, 64\]$"),
        "no layers": ({k: v for k, v in state.items() if ".h." not in k},
                      r"16 model keys not in the checkpoint: h\.0\.ln_1\.weight, [^;]* \(\+8 more\)$"),
    }
    for name, (bad, match) in cases.items():
        one_line_error(match, load_hf_qwen_llm, model, write_sharded(bad, tmp_path / name))
    folder = write_sharded(state, tmp_path / "bad-index")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["transformer.ln_f.weight"] = "model-00001-of-00002.safetensors"  # it is in shard 2
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    one_line_error(r"weight_map disagrees with the shards on transformer\.ln_f\.weight$", load_hf_qwen_llm, model, folder)


# --- the released Qwen-VL -------------------------------------------------------------------------


def qwen_vl_state(seed=3, dtype=torch.bfloat16):
    """The released Qwen-VL checkpoint's names and shapes (modeling_qwen.py / visual.py of HF
    Qwen/Qwen-VL), written out by hand, random values in bf16 as released."""
    torch.manual_seed(seed)
    w, d, m, q = V.width, H.hidden, V.mlp, CFG.adapter.queries
    vis = {
        "conv1.weight": (w, 3, V.patch, V.patch),  # no bias
        "positional_embedding": ((V.image_size // V.patch) ** 2, w),  # no class row
        "ln_pre.weight": (w,), "ln_pre.bias": (w,),
        "attn_pool.query": (q, d), "attn_pool.pos_embed": (q, d), "attn_pool.kv_proj.weight": (d, w),
        "attn_pool.attn.in_proj_weight": (3 * d, d), "attn_pool.attn.in_proj_bias": (3 * d,),
        "attn_pool.attn.out_proj.weight": (d, d), "attn_pool.attn.out_proj.bias": (d,),
        "attn_pool.ln_q.weight": (d,), "attn_pool.ln_q.bias": (d,),
        "attn_pool.ln_kv.weight": (d,), "attn_pool.ln_kv.bias": (d,),
        "ln_post.weight": (d,), "ln_post.bias": (d,), "proj": (d, d),
    }
    for i in range(V.layers):
        block = {
            "ln_1.weight": (w,), "ln_1.bias": (w,), "ln_2.weight": (w,), "ln_2.bias": (w,),
            "attn.in_proj.weight": (3 * w, w), "attn.in_proj.bias": (3 * w,),  # per-head [q_h, k_h, v_h]
            "attn.out_proj.weight": (w, w), "attn.out_proj.bias": (w,),
            "mlp.c_fc.weight": (m, w), "mlp.c_fc.bias": (m,), "mlp.c_proj.weight": (w, m), "mlp.c_proj.bias": (w,),
        }
        vis |= {f"transformer.resblocks.{i}.{k}": s for k, s in block.items()}
    state = {f"transformer.visual.{k}": torch.randn(s).to(dtype) for k, s in vis.items()}
    return state | {k: v.to(dtype) for k, v in hf_qwen_state(seed).items()}


def test_qwen_vl_loads_every_key_into_the_whole_model(model, tmp_path):
    state = qwen_vl_state()
    keys = sorted(state)  # interleave visual and LLM keys over 3 shards
    folder = write_sharded({k: state[k] for k in keys[::2] + keys[1::2]}, tmp_path / "qwen-vl", n=3)
    report = load_qwen_vl(model, folder)
    assert set(report.loaded) == set(model.state_dict())
    assert report.ignored == {"transformer.rotary_emb.inv_freq": "RoPE inv_freq buffer: recomputed"}
    assert set(report.loaded.values()) | set(report.ignored) == set(state)

    vis, ad, llm = model.vision.trunk, model.adapter, model.llm
    f32 = {k: v.float() for k, v in state.items()}  # bf16 -> the model's fp32 is exact
    assert torch.equal(vis.conv1.weight, f32["transformer.visual.conv1.weight"])
    assert torch.equal(vis.positional_embedding[1:], f32["transformer.visual.positional_embedding"])
    assert torch.equal(vis.transformer.resblocks[1].mlp.c_fc.bias, f32["transformer.visual.transformer.resblocks.1.mlp.c_fc.bias"])
    # in_proj: released rows per head [q_h; k_h; v_h] -> nn.MultiheadAttention's [Wq; Wk; Wv]
    hd = V.width // V.heads
    for i in range(V.layers):
        pre = f"transformer.visual.transformer.resblocks.{i}.attn.in_proj."
        attn = vis.transformer.resblocks[i].attn
        for name, ours in (("weight", attn.in_proj_weight), ("bias", attn.in_proj_bias)):
            released = f32[pre + name]
            for h in range(V.heads):
                for j in range(3):  # q, k, v
                    want = released[(3 * h + j) * hd : (3 * h + j + 1) * hd]
                    assert torch.equal(ours[j * V.width + h * hd : j * V.width + (h + 1) * hd], want), (i, name, h, j)
    assert torch.equal(ad.query, f32["transformer.visual.attn_pool.query"])
    assert torch.equal(ad.pos_embed, f32["transformer.visual.attn_pool.pos_embed"])
    assert torch.equal(ad.attn.in_proj_weight, f32["transformer.visual.attn_pool.attn.in_proj_weight"])
    assert torch.equal(ad.kv_proj.weight, f32["transformer.visual.attn_pool.kv_proj.weight"])
    assert torch.equal(ad.ln_post.bias, f32["transformer.visual.ln_post.bias"])
    assert torch.equal(ad.proj, f32["transformer.visual.proj"])
    assert torch.equal(llm.h[0].attn.c_attn.weight, f32["transformer.h.0.attn.c_attn.weight"])
    assert torch.equal(llm.lm_head.weight, f32["lm_head.weight"])


def test_qwen_vl_refuses(model, tmp_path):
    state = qwen_vl_state(dtype=torch.float32)
    before = model.adapter.query.clone()
    cases = {
        "extra": ({**state, "transformer.visual.attn_pool.kv_proj.bias": torch.zeros(H.hidden)},
                  r"1 checkpoint keys unused: transformer\.visual\.attn_pool\.kv_proj\.bias$"),
        "missing": ({k: v for k, v in state.items() if k != "transformer.visual.transformer.resblocks.1.attn.in_proj.bias"},
                    r"1 model keys not in the checkpoint: vision\.trunk\.transformer\.resblocks\.1\.attn\.in_proj_bias$"),
        "class row": ({**state, "transformer.visual.positional_embedding": torch.zeros(257, V.width)},
                      r"shape mismatch: transformer\.visual\.positional_embedding \[257, 64\] \(mapped \[258, 64\]\) -> "
                      r"vision\.trunk\.positional_embedding \[257, 64\]$"),
        "both": ({**{k: v for k, v in state.items() if k != "transformer.wte.weight"}, "transformer.visual.bogus": torch.zeros(1)},
                 r"1 model keys not in the checkpoint: llm\.wte\.weight; 1 checkpoint keys unused: transformer\.visual\.bogus$"),
    }
    for name, (bad, match) in cases.items():
        one_line_error(match, load_qwen_vl, model, write_sharded(bad, tmp_path / name))
    assert torch.equal(model.adapter.query, before)


def test_meta_model_is_refused(tmp_path):
    save(hf_qwen_state(), tmp_path / "model.safetensors")
    with torch.device("meta"):
        llm = QwenLM(H)
    with pytest.raises(ValueError, match="meta device"):
        load_hf_qwen_llm(llm, tmp_path / "model.safetensors")
