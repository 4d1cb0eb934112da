import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision import transforms

from model.config import PRESETS
from model.vision import (
    CLIP_MEAN,
    CLIP_STD,
    OPENCLIP_UNUSED,
    VisionEncoder,
    interpolate_pos,
    openclip_to_vision,
    preprocess,
    qwen_vl_to_vision,
)

CFG = PRESETS["tiny"].vision


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return VisionEncoder(CFG).eval()


def test_patch_tokens_at_224_and_448_without_class_token(encoder):
    assert (encoder.grid(224), encoder.grid(448)) == (16, 32)
    with torch.no_grad():
        assert encoder(torch.randn(2, 3, 224, 224)).shape == (2, 16 * 16, CFG.width)
        assert encoder(torch.randn(1, 3, 448, 448)).shape == (1, 32 * 32, CFG.width)
    names = dict(encoder.named_parameters())
    assert "trunk.class_embedding" not in names and "trunk.proj" not in names
    assert not any(n.startswith("trunk.ln_post") for n in names)
    assert names["trunk.positional_embedding"].shape == (16 * 16 + 1, CFG.width)  # OpenCLIP's shape
    with pytest.raises(ValueError):
        encoder.grid(230)


def test_position_table_resize(encoder):
    table = encoder.trunk.positional_embedding.detach()[1:]
    assert torch.equal(interpolate_pos(table, 16), table)
    grid = table.reshape(1, 16, 16, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False)
    assert torch.equal(interpolate_pos(table, 32), want.permute(0, 2, 3, 1).reshape(32 * 32, -1))


def test_every_parameter_gets_a_gradient_and_attention_is_sdpa(encoder, monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    encoder.train()
    encoder(torch.randn(2, 3, 224, 224)).square().mean().backward()
    assert [tuple(s) for s in calls] == [(2, CFG.heads, 256, CFG.width // CFG.heads)] * CFG.layers
    assert all(p.grad is not None for p in encoder.parameters())
    assert encoder.trunk.positional_embedding.grad[0].abs().sum() == 0  # the class row is never read


def test_grad_checkpointing_is_exact(encoder):
    images = torch.randn(1, 3, 224, 224)
    grads = []
    for flag in (False, True):
        encoder.zero_grad()
        encoder.grad_checkpointing = flag
        out = encoder(images)
        out.square().mean().backward()
        grads.append((out.detach(), [p.grad.clone() for p in encoder.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads[0][1], grads[1][1]))


def test_openclip_checkpoint_loads_and_matches_openclip(tmp_path):
    torch.manual_seed(0)
    clip = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.model.CLIPVisionCfg(
            layers=CFG.layers, width=CFG.width, head_width=CFG.width // CFG.heads,
            mlp_ratio=CFG.mlp / CFG.width, patch_size=CFG.patch, image_size=CFG.image_size,
            norm_kwargs={"eps": CFG.eps}, output_tokens=True,
        ),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    ).eval()
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    state = load_file(str(path))

    encoder = VisionEncoder(CFG).eval()
    mapped = openclip_to_vision(state)
    result = encoder.load_state_dict(mapped, strict=False)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    visual = {k.removeprefix("visual.") for k in state if k.startswith("visual.")}
    assert visual - {k.removeprefix("trunk.") for k in mapped} == set(OPENCLIP_UNUSED)
    tower = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    assert openclip_to_vision(tower).keys() == mapped.keys()  # the visual tower's state dict alone

    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = encoder(images)
        # open_clip's own modules with its class token made invisible (every query's class-key score -inf)
        # give the same patch tokens
        ref = clip.visual
        x = ref._embeds(images)
        mask = torch.zeros(x.shape[1], x.shape[1])
        mask[:, 0] = -math.inf
        masked = ref.transformer(x, attn_mask=mask)[:, 1:]
        assert torch.allclose(ours, masked, atol=1e-5)
        # what open_clip 3.3's forward returns as tokens is not comparable: the patches attended to the
        # class token, and ln_post was applied
        _, tokens = ref(images)
        assert torch.allclose(tokens, ref.ln_post(ref.transformer(x))[:, 1:], atol=1e-6)
        assert not torch.allclose(tokens, ours, atol=1e-3)


def test_qwen_vl_checkpoint_layout():
    torch.manual_seed(0)
    encoder = VisionEncoder(CFG).eval()
    d, h = CFG.width, CFG.heads
    qwen = {
        f"transformer.visual.{k.removeprefix('trunk.')}": torch.randn_like(v)
        for k, v in encoder.state_dict().items()
        if ".attn.in_proj_" not in k
    }
    qwen["transformer.visual.positional_embedding"] = torch.randn(256, d)
    for i in range(CFG.layers):
        pre = f"transformer.visual.transformer.resblocks.{i}.attn."
        qwen[pre + "in_proj.weight"] = torch.randn(3 * d, d) / d**0.5
        qwen[pre + "in_proj.bias"] = torch.randn(3 * d)
    qwen["transformer.visual.proj"] = torch.randn(8, 8)  # the adapter's, not mapped here
    qwen["transformer.visual.attn_pool.query"] = torch.randn(4, 8)
    encoder.load_state_dict(qwen_vl_to_vision(qwen, heads=h), strict=True)
    assert torch.equal(encoder.trunk.positional_embedding[1:], qwen["transformer.visual.positional_embedding"])

    # Qwen-VL's VisualAttention: one Linear, output viewed [.., heads, 3 * head_dim] and split q, k, v
    x = torch.randn(2, 5, d)
    pre = "transformer.visual.transformer.resblocks.0.attn."
    mixed = F.linear(x, qwen[pre + "in_proj.weight"], qwen[pre + "in_proj.bias"])
    mixed = mixed.view(2, 5, h, 3 * d // h)
    q, k, v = (t.transpose(1, 2) for t in mixed.split(d // h, dim=-1))
    att = ((q / math.sqrt(d // h)) @ k.transpose(-2, -1)).softmax(-1) @ v
    att = att.transpose(1, 2).reshape(2, 5, d)
    want = F.linear(att, qwen[pre + "out_proj.weight"], qwen[pre + "out_proj.bias"])
    with torch.no_grad():
        got = encoder.trunk.transformer.resblocks[0].attn(x, x, x, need_weights=False)[0]
    assert torch.allclose(got, want, atol=1e-5)


def test_preprocess_is_a_straight_bicubic_resize_with_clip_normalisation():
    torch.manual_seed(0)
    image = Image.fromarray(torch.randint(0, 256, (100, 300, 3), dtype=torch.uint8).numpy())
    reference = transforms.Compose([
        transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    for size in (224, 448):
        x = preprocess(image, size)
        assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert torch.equal(preprocess(image, 224), reference(image))
    gray = image.convert("L")
    assert preprocess(gray, 224).shape == (3, 224, 224)
