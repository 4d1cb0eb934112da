"""The composed model on the tiny preset (CPU, fp32): image slots, loss, stage freezing."""

import pytest
import torch

from formats.tokenizer import IMG_END_ID, IMG_ID, IMGPAD_ID, PAD_ID
from model.config import PRESETS, STAGES
from model.qwen_vl import QwenVL

TINY = PRESETS["tiny"]


def batch(seed: int = 0):
    """Two sequences of 300 tokens: an image span (258 tokens) then text, and text only with padding."""
    g = torch.Generator().manual_seed(seed)
    image_span = torch.tensor([IMG_ID] + [IMGPAD_ID] * 256 + [IMG_END_ID])
    first = torch.cat([torch.randint(0, 1000, (5,), generator=g), image_span, torch.randint(0, 1000, (37,), generator=g)])
    second = torch.cat([torch.randint(0, 1000, (280,), generator=g), torch.full((20,), PAD_ID)])
    input_ids = torch.stack([first, second])
    loss_mask = torch.zeros_like(input_ids)
    loss_mask[0, 263:] = 1
    loss_mask[1, 100:280] = 1
    doc_ids = torch.zeros_like(input_ids)
    doc_ids[1, 280:] = -1
    position_ids = torch.arange(300).expand(2, 300).clone()
    position_ids[1, 280:] = torch.arange(20)
    images = torch.randn(1, 3, 224, 224, generator=g)
    return input_ids, position_ids, doc_ids, loss_mask, images


@pytest.fixture
def model():
    torch.manual_seed(0)
    return QwenVL(TINY)


def test_image_slots_are_replaced_and_only_them(model):
    input_ids, _, _, _, images = batch()
    x = model.embed(input_ids, images)
    plain = model.llm.embed(input_ids)
    slots = input_ids == IMGPAD_ID
    assert torch.equal(x[~slots], plain[~slots])
    assert torch.allclose(x[slots], model.image_features(images).reshape(-1, TINY.llm.hidden))
    with pytest.raises(ValueError, match="256 <imgpad> slots in the batch for 2 images x 256 queries"):
        model.embed(input_ids, torch.cat([images, images]))


def test_loss_goes_down_on_a_repeated_batch(model):
    inputs = batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(*inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_trains_exactly_its_parts(model, stage):
    model.train_only(STAGES[stage].trainable)
    model(*batch()).backward()
    for name, part in model.parts().items():
        grads = [p.grad for p in part.parameters()]
        if name in STAGES[stage].trainable:
            assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name
        else:
            assert all(g is None for g in grads) and not any(p.requires_grad for p in part.parameters()), name
