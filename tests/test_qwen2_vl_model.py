"""model/qwen2_vl.py and its parts (model/qwen2_vision.py, model/qwen2_llm.py, the Qwen2-VL checkpoint in
model/weights.py) on the tiny preset (CPU, fp32), checked against transformers 4.57.6's
Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor and Qwen2VLVideoProcessor, which run in a child
process (tests/qwen2vl_reference.py)."""

import dataclasses
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from formats.dynamic_resolution import image_tokens, smart_resize
from formats.mrope import mrope_positions
from formats.tokenizer import PAD_ID, QwenTokenizer
from model.config import QWEN2_VL_PRESETS
from model.llm import rope_cos_sin
from model.qwen2_llm import mrope_cos_sin
from model.qwen2_vision import image_patches, video_patches
from model.qwen2_vl import Qwen2VL, to_hf_key
from model.weights import INDEX, CheckpointMismatch, load_qwen2_vl, save_qwen2_vl
from tests.qwen2vl_reference import reference

TINY = QWEN2_VL_PRESETS["qwen2-vl-tiny"]
UNTIED = dataclasses.replace(TINY, llm=dataclasses.replace(TINY.llm, tie_word_embeddings=False))
MIN_PIXELS, MAX_PIXELS = 4 * 28 * 28, 16384 * 28 * 28  # the image processor's defaults


def make_model(cfg=TINY, seed=0):
    """Random weights of unit-scale activations (not the N(0, 0.02) init, under which attention and
    positions barely move the logits): every matrix N(0, 1 / fan_in), norms 1 + N(0, 0.1), biases N(0, 0.1)."""
    torch.manual_seed(seed)
    model = Qwen2VL(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if "norm" in name or "ln_q" in name else 0.0, 0.1)
            else:
                p.normal_(0.0, (p.shape[1] if "embed_tokens" in name else p[0].numel()) ** -0.5)
    return model


def encoded(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt)
    return out.getvalue()


def noise(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tokenizer():
    return QwenTokenizer(dialect="qwen2-vl")


def document(tokenizer, images, videos, seed=0):
    """A chat with two images of different sizes and a video, the answer supervised: ids, loss mask,
    and the images' and videos' patches and grids (our preprocessing of PNG / JPEG bytes)."""
    rng = np.random.default_rng(seed)
    pics = [image_patches(encoded(noise(rng, *size), "PNG"), size, TINY.vision) for size in images]
    clips = [video_patches([encoded(noise(rng, *size), "JPEG") for _ in range(frames)], TINY.vision) for frames, size in videos]
    spans = "".join(f"<|vision_start|>{i}<|vision_end|>" for i in range(len(pics) + len(clips)))
    vision = [(image_tokens(g), False) for _, g in pics] + [(image_tokens(g), True) for _, g in clips]
    enc = tokenizer.encode_segments(
        [(f"<|im_start|>user\n{spans}What do these show?<|im_end|>\n<|im_start|>assistant\n", False), ("Noise, twice; then noise moving.<|im_end|>", True)],
        vision=vision,
    )
    return {
        "ids": enc.ids,
        "mask": enc.mask,
        "images": torch.cat([p for p, _ in pics]),
        "image_grids": [g for _, g in pics],
        "videos": torch.cat([p for p, _ in clips]),
        "video_grids": [g for _, g in clips],
    }


@pytest.fixture(scope="module")
def row(tokenizer):
    """One row: images of 56x84 and 112x56 px (grids (1, 4, 6), (1, 8, 4)), a 4-frame 56x56 video (2, 4, 4)."""
    doc = document(tokenizer, images=[(56, 84), (112, 56)], videos=[(4, (56, 56))])
    doc["position_ids"] = torch.from_numpy(mrope_positions(doc["ids"], doc["image_grids"], doc["video_grids"]))[:, None]
    return doc


def hidden(model, doc, ids=None, position_ids=None, doc_ids=None, document_mask=True):
    """The final hidden states of a document's (or a packed row's) ids and vision inputs."""
    ids = torch.tensor([doc["ids"]]) if ids is None else ids
    position_ids = doc["position_ids"] if position_ids is None else position_ids
    vision = (doc["images"], doc["image_grids"], doc["videos"], doc["video_grids"])
    with torch.no_grad():
        return model.hidden(ids, position_ids, doc_ids, *vision, document_mask=document_mask)


# --- presets ---------------------------------------------------------------------------------------


def test_presets_have_the_released_parameter_counts():
    """The hub's counts of the released safetensors (2.21B, 8.29B, 73.4B: 3 significant digits, so the
    tolerance is their rounding), and the paper's 675M ViT (Qwen2-VL, Table 1: the 7B's, merger included;
    the merger's output is the LLM's width, so the 2B's tower is smaller and the 72B's larger)."""
    counts = {}
    for name in ("qwen2-vl-2b", "qwen2-vl-7b", "qwen2-vl-72b"):
        with torch.device("meta"):
            model = Qwen2VL(QWEN2_VL_PRESETS[name])
        trunk = sum(p.numel() for n, p in model.vision.named_parameters() if not n.startswith("merger."))
        counts[name] = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.vision.parameters()), trunk)
    assert round(counts["qwen2-vl-2b"][0] / 1e9, 2) == 2.21
    assert round(counts["qwen2-vl-7b"][0] / 1e9, 2) == 8.29
    assert round(counts["qwen2-vl-72b"][0] / 1e9, 1) == 73.4
    assert round(counts["qwen2-vl-7b"][1] / 1e6) == 676  # 675.76M
    assert len({trunk for _, _, trunk in counts.values()}) == 1  # one ViT, three mergers


# --- preprocessing ---------------------------------------------------------------------------------


def test_image_and_video_patches_equal_the_processors(tmp_path):
    """Images: bit-identical pixel values, at their stored size and resized (both PIL bicubic); a video's
    JPEG frames: equal up to float32 rounding (the video processor fuses rescale and normalisation), an
    odd frame count padded by repeating the last frame."""
    rng = np.random.default_rng(1)
    image, large = noise(rng, 56, 84), noise(rng, 100, 150)
    frames = [encoded(noise(rng, 56, 112), "JPEG") for _ in range(5)]
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in frames])
    ours, cases = [], []
    for kind, array, patches in (
        ("image", image[None], image_patches(encoded(image, "PNG"), (56, 84), TINY.vision)),
        ("image", large[None], image_patches(encoded(large, "PNG"), smart_resize(100, 150), TINY.vision)),
        ("video", decoded, video_patches(frames, TINY.vision)),
    ):
        i = len(cases)
        np.save(tmp_path / f"in{i}.npy", array)
        cases.append({"kind": kind, "frames": str(tmp_path / f"in{i}.npy"), "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "out": str(tmp_path / f"out{i}.npy")})
        ours.append(patches)
    grids = reference("processors", cases)
    assert grids == [[1, 4, 6], [1, 8, 10], [3, 4, 8]]
    for (patches, grid), want, case in zip(ours, grids, cases):
        assert list(grid) == want
        expected = torch.from_numpy(np.load(case["out"]))
        if case["kind"] == "image":
            assert torch.equal(patches, expected)
        else:
            torch.testing.assert_close(patches, expected, atol=1e-6, rtol=0)


def test_patches_must_be_whole_merge_groups():
    with pytest.raises(ValueError, match="multiples of 28"):
        image_patches(encoded(np.zeros((50, 56, 3), np.uint8), "PNG"), (50, 56), TINY.vision)
    with pytest.raises(ValueError, match="differ in size"):
        video_patches([encoded(np.zeros((56, 56, 3), np.uint8), "JPEG"), encoded(np.zeros((56, 84, 3), np.uint8), "JPEG")], TINY.vision)


# --- against transformers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_run(row, tmp_path_factory):
    """Our tiny model, tied and untied, written with save_qwen2_vl; transformers reads each folder and
    runs the row: (our model, its loading info, its outputs) per config."""
    folder = tmp_path_factory.mktemp("reference")
    ids = torch.tensor([row["ids"]])
    inputs = {
        "input_ids": ids,
        "position_ids": row["position_ids"].contiguous(),
        "labels": torch.where(torch.tensor([row["mask"]]).bool(), ids, -100),
        "pixel_values": row["images"],
        "image_grid_thw": torch.tensor(row["image_grids"]),
        "pixel_values_videos": row["videos"],
        "video_grid_thw": torch.tensor(row["video_grids"]),
    }
    save_file(inputs, str(folder / "inputs.safetensors"))
    models, cases = [], []
    for name, cfg in (("tied", TINY), ("untied", UNTIED)):
        model = make_model(cfg)
        save_qwen2_vl(model, folder / name, max_shard_bytes=10**7)  # a few shards
        models.append(model)
        cases.append({"folder": str(folder / name), "inputs": str(folder / "inputs.safetensors"), "out": str(folder / f"{name}.safetensors")})
    infos = reference("qwen2_vl", cases)
    return [(model, info, load_file(case["out"])) for model, info, case in zip(models, infos, cases)]


def test_transformers_loads_our_checkpoints_with_every_key(reference_run):
    for _, info, _ in reference_run:
        assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}


def test_vision_tower_equals_transformers(reference_run, row):
    for model, _, theirs in reference_run:
        with torch.no_grad():
            images = model.vision(row["images"], row["image_grids"])
            videos = model.vision(row["videos"], row["video_grids"])
        assert images.shape == (6 + 8, TINY.llm.hidden) and videos.shape == (8, TINY.llm.hidden)
        torch.testing.assert_close(images, theirs["images"], atol=1e-5, rtol=0)
        torch.testing.assert_close(videos, theirs["videos"], atol=1e-5, rtol=0)


def test_logits_and_loss_equal_transformers(reference_run, row):
    t = len(row["ids"])
    for model, _, theirs in reference_run:
        with torch.no_grad():
            h = hidden(model, row)
            logits = model.llm.logits(h)
            loss = model.llm.loss(h, torch.tensor([row["ids"]]), torch.tensor([row["mask"]]))
            plain = model.llm.logits(hidden(model, row, position_ids=torch.arange(t).expand(3, 1, t)))
        torch.testing.assert_close(logits, theirs["logits"], atol=1e-4, rtol=0)
        torch.testing.assert_close(loss.reshape(1), theirs["loss"], atol=1e-5, rtol=0)
        # the comparison is sensitive to M-RoPE: plain positions move the logits far beyond the tolerance
        assert (plain - logits).abs().max() > 0.1


# --- our own checks --------------------------------------------------------------------------------


def test_mrope_of_text_is_plain_rope():
    """Equal ids on all three axes give the RoPE of model/llm.py, whatever the sections."""
    positions = torch.arange(7)[None]
    cos, sin = mrope_cos_sin(positions.expand(3, 1, 7), 16, 1e6, (2, 3, 3))
    plain_cos, plain_sin = rope_cos_sin(positions, 16, 1e6)
    assert torch.equal(cos, plain_cos) and torch.equal(sin, plain_sin)
    with pytest.raises(ValueError, match="must sum to head_dim / 2 = 8"):
        mrope_cos_sin(positions.expand(3, 1, 7), 16, 1e6, (2, 3, 2))


def test_packed_documents_get_their_logits_alone(tokenizer):
    """Two documents in one row, each with its own images and video, positions restarting per document,
    then padding: each document's hidden states equal those it gets alone."""
    model = make_model()
    docs = [
        document(tokenizer, images=[(56, 84)], videos=[(2, (56, 56))], seed=2),
        document(tokenizer, images=[(56, 56), (84, 56)], videos=[(4, (56, 84))], seed=3),
    ]
    alone = []
    for doc in docs:
        positions = torch.from_numpy(mrope_positions(doc["ids"], doc["image_grids"], doc["video_grids"]))[:, None]
        alone.append(hidden(model, doc, position_ids=positions)[0])
    pad = 5
    ids = docs[0]["ids"] + docs[1]["ids"] + [PAD_ID] * pad
    n0, n1 = len(docs[0]["ids"]), len(docs[1]["ids"])
    packed = {
        "images": torch.cat([d["images"] for d in docs]),
        "image_grids": docs[0]["image_grids"] + docs[1]["image_grids"],
        "videos": torch.cat([d["videos"] for d in docs]),
        "video_grids": docs[0]["video_grids"] + docs[1]["video_grids"],
    }
    positions = torch.from_numpy(mrope_positions(ids, packed["image_grids"], packed["video_grids"], doc_starts=[0, n0, n0 + n1]))[:, None]
    doc_ids = torch.tensor([[0] * n0 + [1] * n1 + [-1] * pad])
    both = hidden(model, packed, torch.tensor([ids]), positions, doc_ids)[0]
    torch.testing.assert_close(both[:n0], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[n0 : n0 + n1], alone[1], atol=1e-5, rtol=0)
    # without the document mask, the second document sees the first
    leaky = hidden(model, packed, torch.tensor([ids]), positions, doc_ids, document_mask=False)[0]
    assert (leaky[n0 : n0 + n1] - alone[1]).abs().max() > 1e-2


def test_loss_counts_the_supervised_tokens_only(row):
    model = make_model()
    ids, mask = torch.tensor([row["ids"]]), torch.tensor([row["mask"]])
    h = hidden(model, row)
    with torch.no_grad():
        logits = model.llm.logits(h)[0, :-1]
        supervised = mask[0, 1:].bool()
        expected = F.cross_entropy(logits[supervised], ids[0, 1:][supervised])
        torch.testing.assert_close(model.llm.loss(h, ids, mask), expected)
        # hidden 0 predicts a prompt token: moving it leaves the loss as it is
        h[0, 0] += 1.0
        torch.testing.assert_close(model.llm.loss(h, ids, mask), expected)
        assert model.llm.loss(h, ids, torch.zeros_like(mask)) == 0
    # the model's forward is that loss, and every parameter gets a gradient from it
    loss = model(ids, row["position_ids"], None, mask, row["images"], row["image_grids"], row["videos"], row["video_grids"])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_pad_slots_and_vision_tokens_must_agree(row):
    model = make_model()
    ids = torch.tensor([row["ids"]])
    with pytest.raises(ValueError, match=r"^14 image pad slots in the batch for 1 images of 6 tokens$"):
        model.embed(ids, row["images"][:24], row["image_grids"][:1], row["videos"], row["video_grids"])
    with pytest.raises(ValueError, match="8 video pad slots in the batch for 0 videos of 0 tokens"):
        model.embed(ids, row["images"], row["image_grids"])


# --- checkpoint layout -----------------------------------------------------------------------------


def test_checkpoint_layout_and_round_trip(tmp_path):
    """The released key names, lm_head.weight only when untied, shards listed by the index; reading
    back gives the same tensors."""
    for cfg in (TINY, UNTIED):
        model = make_model(cfg)
        folder = tmp_path / str(cfg.llm.tie_word_embeddings)
        save_qwen2_vl(model, folder, max_shard_bytes=10**7)
        index = json.loads((folder / INDEX).read_text())
        keys = set(index["weight_map"])
        assert len(set(index["weight_map"].values())) > 1
        assert {
            "visual.patch_embed.proj.weight",
            "visual.blocks.1.attn.qkv.weight",
            "visual.blocks.1.attn.qkv.bias",
            "visual.merger.ln_q.weight",
            "visual.merger.mlp.0.weight",
            "visual.merger.mlp.2.bias",
            "model.embed_tokens.weight",
            "model.layers.1.self_attn.q_proj.bias",
            "model.layers.1.self_attn.o_proj.weight",
            "model.layers.1.mlp.gate_proj.weight",
            "model.norm.weight",
        } <= keys
        assert ("lm_head.weight" in keys) != cfg.llm.tie_word_embeddings
        assert "model.layers.1.self_attn.o_proj.bias" not in keys
        fresh = Qwen2VL(cfg)
        report = load_qwen2_vl(fresh, folder)
        assert len(report.loaded) == len(keys) and not report.ignored
        for k, v in model.state_dict().items():
            assert torch.equal(fresh.state_dict()[k], v), k


def test_missing_or_unknown_key_is_a_one_line_error(tmp_path):
    state = {to_hf_key(k): v.contiguous() for k, v in make_model().state_dict().items()}
    for name, changed, match in (
        ("missing", {k: v for k, v in state.items() if k != "model.layers.0.mlp.up_proj.weight"}, r"1 model keys not in the checkpoint: llm\.layers\.0\.mlp\.up_proj\.weight$"),
        ("unknown", state | {"visual.pos_embed": torch.zeros(2)}, r"1 checkpoint keys unused: visual\.pos_embed$"),
        ("tied head", state | {"lm_head.weight": state["model.embed_tokens.weight"].clone()}, r"1 checkpoint keys unused: lm_head\.weight$"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        save_file(changed, str(folder / "model.safetensors"))
        with pytest.raises(CheckpointMismatch, match=match) as err:
            load_qwen2_vl(Qwen2VL(TINY), folder)
        assert "\n" not in str(err.value)
