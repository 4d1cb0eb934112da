"""The trainer on the Qwen2-VL plug-in (model/architectures.py QWEN2_VL), qwen2-vl-tiny, CPU, fp32: each
stage trains exactly its parts, the loss goes down, exact resume, two processes under FSDP2 (gloo) equal
one, and their sharded checkpoint resumes on one process and on two. Data: packed qwen2-vl rows written
here: 56 px images (a 4x4 patch grid: 4 pads), a 4-frame video (8 pads), text-only rows, 128 tokens."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from formats.mrope import IMAGE_PAD_ID, VIDEO_PAD_ID, mrope_positions
from formats.packing import Sample, document_starts, pack
from formats.schemas import PACKED
from model import checkpoint, train
from model.config import LLM, QWEN2_VL_STAGES, VISION
from tests.test_train import as_fsdp, losses, optimizer_tensors, torchrun, weights

VISION_START, VISION_END = 151652, 151653
SEQ = 128
COMMON = ["--preset", "qwen2-vl-tiny", "--seq-len", str(SEQ), "--num-workers", "0", "--unit-rows", "1"]


def jpeg(colour, size=56) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, "JPEG")
    return out.getvalue()


def packed_rows(n: int = 8, seed: int = 0) -> list[dict]:
    """Row 0 a video, other even rows an image, odd rows two text documents (no vision at all)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        text = rng.integers(100, 300, 30).tolist()
        images, videos = [], []
        if i % 2:
            samples = [Sample(f"r{i}a", rng.integers(100, 300, 50).tolist(), [0] * 40 + [1] * 10),
                       Sample(f"r{i}b", rng.integers(100, 300, 60).tolist(), [0] * 45 + [1] * 15)]
        else:
            video = i == 0
            pad, slots = (VIDEO_PAD_ID, 8) if video else (IMAGE_PAD_ID, 4)
            ids = [VISION_START] + [pad] * slots + [VISION_END] + text
            samples = [Sample(f"r{i}", ids, [0] * (slots + 2) + [1] * 30, [None])]
            colour = (int(rng.integers(256)), 40, 90)
            (videos if video else images).append([jpeg(colour)] * 4 if video else jpeg(colour))
        (s,), rejects = pack(samples, seq_len=SEQ, image_id=VISION_START)
        assert rejects == []
        image_grids, video_grids = [[1, 4, 4]] * len(images), [[2, 4, 4]] * len(videos)
        starts = document_starts(s.doc)
        rows.append({
            "uid": "+".join(s.uids), "task": "t", "input_ids": s.ids.tolist(), "loss_mask": s.mask.tolist(),
            "doc_ids": s.doc.tolist(), "position_ids": s.pos.tolist(), "images": images, "sample_uids": s.uids,
            "dialect": "qwen2-vl", "image_sizes": [[56, 56]] * len(images), "image_grid_thw": image_grids,
            "videos": videos, "video_grid_thw": video_grids,
            "mrope_position_ids": mrope_positions(s.ids, image_grids, video_grids, starts).tolist(),
        })  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("data") / "packed"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(packed_rows(), schema=PACKED), folder / "part-0.parquet", row_group_size=4)
    return str(folder)


def stage2_args(data: str, out, steps: int = 6, extra=()) -> list[str]:
    return ["--stage", "2", "--data", data, "--output", str(out), "--steps", str(steps), "--warmup-steps", "2",
            "--lr", "1e-3", "--min-lr", "1e-4", "--global-batch", "4", "--micro-batch", "2", *COMMON, *extra]  # fmt: skip


def fsdp_args(data: str, out, extra=()) -> list[str]:
    return as_fsdp(stage2_args(data, out, extra=extra))


@pytest.fixture(scope="module")
def reference(packed, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert train.main(stage2_args(packed, out)) == 0
    return out


@pytest.mark.parametrize("stage", [1, 3])
def test_each_stage_trains_exactly_its_parts(stage, packed, tmp_path):
    """Stage 1 the vision tower alone (its merger included), stage 3 the LLM alone: frozen parts
    bit-identical to the seeded init, trained ones moved; the optimizer holds only the trained part."""
    out = tmp_path / "out"
    argv = ["--stage", str(stage), "--data", packed, "--output", str(out), "--steps", "1", "--global-batch", "2", "--micro-batch", "2",
            "--lr", "1e-2", "--min-lr", "1e-2", "--warmup-steps", "0", *COMMON]  # fmt: skip
    assert train.main(argv) == 0
    cfg = train.resolve(train.build_parser().parse_args(argv), 1)
    assert cfg.stage.trainable == QWEN2_VL_STAGES[stage].trainable == ((VISION,) if stage == 1 else (LLM,))
    before, after = train.init_model(cfg).state_dict(), weights(out, 1)
    assert set(after) == set(before)
    for part in (VISION, LLM):
        keys = [k for k in before if k.startswith(part + ".")]
        moved = [k for k in keys if not torch.equal(before[k], after[k])]
        if part in cfg.stage.trainable:
            assert len(moved) == len(keys), (part, sorted(set(keys) - set(moved)))
        else:
            assert moved == [], part
    groups = json.loads((out / "step-1" / "trainer.json").read_text())["optimizer"]["param_groups"]
    assert {n.split(".")[0] for g in groups for n in g["names"]} == set(cfg.stage.trainable)
    if stage == 1:  # layer-wise decay over the tower's blocks; the merger at the full rate
        scales = {g["name"]: g["lr_scale"] for g in groups}
        assert scales == {"vision.embed.decay": 0.95**3, "vision.block.0.decay": 0.95**2, "vision.block.0.no_decay": 0.95**2,
                          "vision.block.1.decay": 0.95, "vision.block.1.no_decay": 0.95, "vision.top.decay": 1.0, "vision.top.no_decay": 1.0}


def test_loss_goes_down_on_repeated_data(packed, tmp_path):
    out = tmp_path / "out"
    argv = ["--stage", "2", "--data", packed, "--output", str(out), "--steps", "8", "--warmup-steps", "1", "--lr", "1e-2",
            "--min-lr", "1e-3", "--global-batch", "4", "--micro-batch", "4", *COMMON]  # fmt: skip
    assert train.main(argv) == 0
    got = losses(out)
    assert len(got) == 8 and got[-1] < got[0] - 1.0 and got[-2] < got[1] - 1.0, got


def test_resume_equals_uninterrupted(packed, reference, tmp_path):
    out = tmp_path / "out"
    assert train.main(stage2_args(packed, out, extra=["--stop-at", "3"])) == 0
    assert train.main(stage2_args(packed, out, extra=["--resume"])) == 0
    assert losses(out) == losses(reference)  # exactly, step by step
    a, b = weights(reference, 6), weights(out, 6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = optimizer_tensors(reference, 6), optimizer_tensors(out, 6)
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)


def test_two_processes_and_their_sharded_checkpoint(packed, reference, tmp_path):
    """FSDP2 on 2 ranks (gloo) equals one process; stopped after step 3, its shards resume on 1 process
    (float summation order apart) and on 2 (exactly the uninterrupted 2-process run)."""
    import shutil

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    for out, extra in ((whole, []), (stopped, ["--stop-at", "3"])):
        done = torchrun(fsdp_args(packed, out, extra=extra))
        assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 process(es), FSDP2, cpu fp32" in done.stdout
    assert losses(whole) == pytest.approx(losses(reference), abs=1e-5, rel=0)
    shard = "shard-0000{}-model-00001-of-00001.safetensors"
    assert sorted(p.name for p in (stopped / "step-3" / "model").iterdir()) == [shard.format(1), shard.format(2)]
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(stopped, one)
    shutil.copytree(stopped, two)
    assert train.main(stage2_args(packed, one, extra=["--resume"])) == 0
    assert losses(one)[3:] == pytest.approx(losses(whole)[3:], abs=1e-5, rel=0)
    done = torchrun(fsdp_args(packed, two, extra=["--resume"]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert losses(two) == losses(whole)
    a, b = weights(whole, 6), weights(two, 6)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert checkpoint.latest(two) == two / "step-6"


def test_usage_errors_of_the_qwen2_vl_family(packed, tmp_path, capsys):
    base = ["--stage", "2", "--data", packed, "--output", str(tmp_path / "o"), *COMMON]
    for extra, message in [
        (["--trainable", "adapter,llm"], "error: --trainable: 'adapter' is not a part (parts: vision, llm)"),
        (["--init-qwen-vl", packed], "error: --init-qwen-vl: not for a qwen2-vl model (it takes --init, --init-qwen2-vl)"),
        (["--stage", "1", "--vit-layer-decay", "0"], "error: --vit-layer-decay 0 freezes the ViT, but the stage trains it (trainable includes vision)"),
    ]:
        assert train.main([*base, *extra]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [message]
