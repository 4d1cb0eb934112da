"""Packed qwen2-vl rows as training items: made by the pipeline's own steps (MakeSamples, pack_group), read
back by Qwen2VLPackedStream, batched, and run through the tiny Qwen2-VL model."""

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from formats import schemas
from formats.example import Example
from model.config import QWEN2_VL_PRESETS, STAGES
from model.qwen2_vision import image_patches, video_patches
from model.qwen2_vl import Qwen2VL
from model.qwen2_vl_data import Qwen2VLPackedStream, collate
from pipelines import stage2
from synthetic.videos import write_video

CFG = QWEN2_VL_PRESETS["qwen2-vl-tiny"]
SEQ_LEN = 1024
STAGE = dataclasses.replace(STAGES[2], seq_len=SEQ_LEN)
SETTINGS = {"dialect": "qwen2-vl", "min_pixels": 4 * 28 * 28, "max_pixels": 300 * 28 * 28, "video_fps": 2.0, "video_max_tokens": 200}


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """Four samples (two images of different sizes, a video, text) packed into rows of 1024 tokens."""
    root = tmp_path_factory.mktemp("q2data")
    Image.new("RGB", (200, 150), "red").save(root / "a.png")
    Image.new("RGB", (90, 300), "blue").save(root / "b.png")
    write_video(root / "v.mp4", seconds=2, fps=10, width=160, height=120)
    make = stage2.MakeSamples(None, SETTINGS)
    make.setup()
    source = stage2.Source("caption", "coco", str(root), str(root), ())
    examples = [Example("caption", "coco", "a", image="a.png", text="A red square."),
                Example("caption", "coco", "b", image="b.png", text="A blue bar."),
                Example("caption", "video", "v", image="v.mp4", video=True, text="A moving pattern."),
                Example("text", "text", "t", text="Just words here.")]
    rows = sorted((row for e in examples for row in make.process(e, source)), key=lambda r: r["uid"])
    list(stage2.pack_group((("caption", 0, 1), rows), SEQ_LEN, str(root), "qwen2-vl"))
    return root, rows, pq.read_table(root / "packed").to_pylist()


def test_items_carry_the_rows_patches_grids_and_positions(packed):
    root, samples, rows = packed
    items = list(Qwen2VLPackedStream([str(p) for p in (root / "packed").iterdir()], STAGE, CFG.vision, shuffle=False, epochs=1))
    assert [item["uid"] for item in items] == [row["uid"] for row in rows]
    images = [(data, size) for s in samples for data, size in zip(s["images"], s["image_sizes"])]
    for item, row in zip(items, rows):
        assert item["position_ids"].tolist() == row["mrope_position_ids"]
        assert item["image_grids"] == [tuple(g) for g in row["image_grid_thw"]] and item["video_grids"] == [tuple(g) for g in row["video_grid_thw"]]
    assert sorted(g for item in items for g in item["image_grids"]) == [(1, 10, 14), (1, 22, 6)]
    want = torch.cat([image_patches(d, tuple(s), CFG.vision)[0] for d, s in images])
    got = torch.cat([item["images"] for item in items])
    assert got.shape == (140 + 132, 3 * 2 * 14 * 14) and torch.equal(got.sort(dim=0).values, want.sort(dim=0).values)
    [video] = [v for s in samples for v in s["videos"]]
    assert torch.equal(torch.cat([item["videos"] for item in items]), video_patches(video, CFG.vision)[0])


def test_a_batch_runs_through_the_tiny_model(packed):
    root, _, rows = packed
    items = list(Qwen2VLPackedStream([str(p) for p in (root / "packed").iterdir()], STAGE, CFG.vision, shuffle=False, epochs=1))
    batch = collate(items)
    assert batch["position_ids"].shape == (3, len(items), SEQ_LEN) and batch["input_ids"].shape == (len(items), SEQ_LEN)
    torch.manual_seed(0)
    model = Qwen2VL(CFG)
    keys = ("input_ids", "position_ids", "doc_ids", "loss_mask", "images", "image_grids", "videos", "video_grids")
    together = model(*(batch[k] for k in keys), reduction="sum")
    alone = sum(model(*(collate([item])[k] for k in keys), reduction="sum") for item in items)
    assert torch.isfinite(together) and torch.allclose(together, alone, rtol=1e-5)


def test_bad_rows_are_skipped_and_counted(packed, tmp_path):
    _, _, rows = packed
    with_image = next(r for r in rows if r["images"])
    broken = dict(with_image, uid="broken", images=[b"not an image"] * len(with_image["images"]))
    wrong = dict(with_image, uid="wrong", image_grid_thw=[[1, 2, 2]] * len(with_image["images"]))
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([broken, wrong, with_image], schemas.PACKED), path)
    stream = Qwen2VLPackedStream([str(path)], STAGE, CFG.vision, shuffle=False, epochs=1)
    assert [item["uid"] for item in stream] == [with_image["uid"]]
    assert stream.skipped() == {"bad_image": 1, "too_long": 0, "invalid": 1}


def test_qwen_vl_rows_are_refused(packed, tmp_path):
    _, _, rows = packed
    path = tmp_path / "old.parquet"
    pq.write_table(pa.Table.from_pylist([dict(rows[0], dialect="qwen-vl")], schemas.PACKED), path)
    with pytest.raises(ValueError, match=r"old.parquet: rows in the qwen-vl dialect: the qwen2-vl model's data is written with --dialect qwen2-vl$"):
        Qwen2VLPackedStream([str(path)], STAGE, CFG.vision)
