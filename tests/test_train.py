"""model/train.py and model/optim.py on the tiny preset, CPU, fp32: the LR schedule and layer decay exact,
each stage's frozen parts, the loss going down, exact resume, torchrun (DDP and FSDP2, gloo) equal to one
process, and the usage errors. Data: a few packed rows (formats/packing.py, PACKED schema) and curated
rows written here; images 28 px (a 2x2 patch grid) and 300-token sequences keep a step well under a
second."""

import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from formats.packing import Sample, pack
from formats.schemas import CURATED, PACKED
from formats.tokenizer import IMG_END_ID, IMG_ID, IMGPAD_ID
from model import checkpoint, train
from model.config import ADAPTER, LLM, PRESETS, STAGES, VISION, StageConfig
from model.optim import lr_at, make_optimizer, param_groups, set_lr, vit_layer_scales

ROOT = Path(__file__).resolve().parent.parent
IMAGE_IDS = [IMG_ID] + [IMGPAD_ID] * 256 + [IMG_END_ID]
SEQ = 300
COMMON = ["--preset", "tiny", "--image-size", "28", "--seq-len", str(SEQ), "--num-workers", "0", "--unit-rows", "1"]


def png(color) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, "PNG")
    return out.getvalue()


def packed_rows(n: int = 8, seed: int = 0) -> list[dict]:
    """n rows of SEQ tokens: even rows one image + 30 supervised tokens, odd rows two text documents with
    20 supervised tokens each (so some micro-batches have no image at all)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 2 == 0:
            text = [rng.randrange(100, 300) for _ in range(30)]
            samples = [Sample(f"r{i}", IMAGE_IDS + text, [0] * 258 + [1] * 30, [png((rng.randrange(256), 40, 90))])]
        else:
            samples = [
                Sample(f"r{i}a", [rng.randrange(100, 300) for _ in range(120)], [0] * 100 + [1] * 20),
                Sample(f"r{i}b", [rng.randrange(100, 300) for _ in range(150)], [0] * 130 + [1] * 20),
            ]
        (s,), rejects = pack(samples, seq_len=SEQ)
        assert rejects == []
        rows.append({
            "uid": "+".join(s.uids), "task": "t", "input_ids": s.ids.tolist(), "loss_mask": s.mask.tolist(),
            "doc_ids": s.doc.tolist(), "position_ids": s.pos.tolist(), "images": s.images, "sample_uids": s.uids,
        })  # fmt: skip
    return rows


def write_packed(folder: Path, n: int = 8) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(packed_rows(n), schema=PACKED), folder / "part-0.parquet", row_group_size=4)
    return str(folder)


def write_curated(folder: Path, n: int = 4) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "uid": f"c{i}", "source": "t", "key": f"c{i}", "url": None, "caption": f"a dog number {i}.", "caption_raw": "",
            "image": png((i * 60, 0, 0)), "image_format": "PNG", "width": 8, "height": 8, "phash": 0, "lang": "en",
            "lang_score": 0.9, "clip_score": None,
        }  # fmt: skip
        for i in range(n)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=CURATED), folder / "part-0.parquet", row_group_size=4)
    return str(folder)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> str:
    return write_packed(tmp_path_factory.mktemp("data") / "packed")


def stage2_args(data: str, out, steps: int = 6, extra=()) -> list[str]:
    return ["--stage", "2", "--data", data, "--output", str(out), "--steps", str(steps), "--warmup-steps", "2",
            "--lr", "1e-3", "--min-lr", "1e-4", "--global-batch", "4", "--micro-batch", "2", *COMMON, *extra]  # fmt: skip


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def weights(out, step: int) -> dict[str, torch.Tensor]:
    return checkpoint.read_full(checkpoint.step_dir(out, step) / checkpoint.MODEL)


def optimizer_tensors(out, step: int) -> dict[str, torch.Tensor]:
    return checkpoint.read_full(checkpoint.step_dir(out, step) / checkpoint.OPTIMIZER)


@pytest.fixture(scope="module")
def reference(packed, tmp_path_factory):
    """One uninterrupted single-process run of 6 steps (global batch 4 = 2 micro-batches of 2)."""
    out = tmp_path_factory.mktemp("reference")
    assert train.main(stage2_args(packed, out)) == 0
    return out


# --- the optimizer ---------------------------------------------------------------------------------------


def test_lr_schedule_exact():
    s = StageConfig(2, (ADAPTER, LLM), 28, SEQ, lr=1e-3, min_lr=1e-4, warmup_steps=4, steps=14, global_batch=4, vit_layer_decay=0.0)
    assert [lr_at(n, s) for n in (1, 2, 3, 4)] == [1e-3 * 1 / 4, 1e-3 * 2 / 4, 1e-3 * 3 / 4, 1e-3]
    assert lr_at(9, s) == pytest.approx((1e-3 + 1e-4) / 2, rel=1e-15)  # halfway: cos(pi/2) = 0
    assert lr_at(6, s) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 10)), rel=1e-15)
    assert lr_at(14, s) == 1e-4 and lr_at(20, s) == 1e-4
    # the paper's stages: peak at the end of warm-up, min_lr at the last step
    assert lr_at(500, STAGES[1]) == 2e-4 and lr_at(50_000, STAGES[1]) == 1e-6 and lr_at(250, STAGES[1]) == 1e-4
    assert lr_at(400, STAGES[2]) == 5e-5 and lr_at(19_000, STAGES[2]) == 1e-5
    assert lr_at(3000, STAGES[3]) == 1e-5 and lr_at(8000, STAGES[3]) == 1e-6
    assert all(lr_at(n, STAGES[2]) > lr_at(n + 1, STAGES[2]) for n in range(400, 19_000, 97))


def test_vit_layer_decay_factors_exact():
    assert vit_layer_scales(2, 0.95) == {"embed": 0.95**3, "block.0": 0.95**2, "block.1": 0.95**1}
    small = vit_layer_scales(24, 0.95)
    assert small["embed"] == 0.95**25 and small["block.0"] == 0.95**24 and small["block.23"] == 0.95
    torch.manual_seed(0)
    model = train.TrainModel(PRESETS["tiny"], 28)
    groups = param_groups(model, STAGES[2])
    scale = {name: g["lr_scale"] for g in groups for name in g["names"]}
    assert scale["vision.trunk.conv1.weight"] == 0.95**3
    assert scale["vision.trunk.positional_embedding"] == 0.95**3
    assert scale["vision.trunk.ln_pre.bias"] == 0.95**3
    assert scale["vision.trunk.transformer.resblocks.0.attn.in_proj_weight"] == 0.95**2
    assert scale["vision.trunk.transformer.resblocks.1.mlp.c_fc.bias"] == 0.95
    assert {scale[n] for n in scale if not n.startswith("vision.")} == {1.0}
    optimizer = make_optimizer(model, STAGES[2])
    set_lr(optimizer, 2e-5)
    for group in optimizer.param_groups:
        assert group["lr"] == 2e-5 * group["lr_scale"]


def test_weight_decay_on_matrices_only():
    torch.manual_seed(0)
    model = train.TrainModel(PRESETS["tiny"], 28)
    wd = {name: g["weight_decay"] for g in param_groups(model, STAGES[2]) for name in g["names"]}
    params = dict(model.named_parameters())
    assert set(wd) == set(params)
    for name, p in params.items():
        assert wd[name] == (0.05 if p.ndim >= 2 else 0.0), name
    for name in ("llm.wte.weight", "llm.lm_head.weight", "adapter.query", "adapter.proj", "vision.trunk.positional_embedding"):
        assert wd[name] == 0.05
    for name in ("llm.h.0.ln_1.weight", "llm.h.0.attn.c_attn.bias", "adapter.ln_q.bias", "vision.trunk.ln_pre.weight"):
        assert wd[name] == 0.0


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_optimizer_groups_hold_exactly_the_stage_parts(stage):
    torch.manual_seed(0)
    model = train.TrainModel(PRESETS["tiny"], 28)
    model.train_only(STAGES[stage].trainable)
    names = {name for g in param_groups(model, STAGES[stage]) for name in g["names"]}
    for part, module in model.parts().items():
        mine = {f"{part}.{n}" for n, _ in module.named_parameters()}
        trained = part in STAGES[stage].trainable
        assert (mine <= names) if trained else not (mine & names), part
        assert all(p.requires_grad == trained for p in module.parameters()), part


# --- training runs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [1, 3])
def test_each_stage_trains_exactly_its_parts(stage, packed, tmp_path):
    """One step through the CLI: frozen parts bit-identical to the seeded init, trained parts all moved."""
    data = write_curated(tmp_path / "curated") if stage == 1 else packed
    out = tmp_path / "out"
    argv = ["--stage", str(stage), "--data", data, "--output", str(out), "--steps", "1", "--global-batch", "2", "--micro-batch", "2",
            "--lr", "1e-2", "--min-lr", "1e-2", "--warmup-steps", "0", *COMMON]  # fmt: skip
    assert train.main(argv) == 0
    cfg = train.resolve(train.build_parser().parse_args(argv), 1)
    before = train.init_model(cfg).state_dict()
    after = weights(out, 1)
    assert set(after) == set(before)
    for part in (VISION, ADAPTER, LLM):
        keys = [k for k in before if k.startswith(part + ".") and k != "adapter.pos_embed"]
        moved = [k for k in keys if not torch.equal(before[k], after[k])]
        if part in STAGES[stage].trainable:
            assert len(moved) >= len(keys) - 1, (part, sorted(set(keys) - set(moved)))  # (wte: only rows used move)
        else:
            assert moved == [], part
    groups = json.loads((out / "step-1" / "trainer.json").read_text())["optimizer"]["param_groups"]
    assert {n.split(".")[0] for g in groups for n in g["names"]} == set(STAGES[stage].trainable)


def test_loss_goes_down_on_repeated_data(packed, tmp_path):
    out = tmp_path / "out"
    argv = ["--stage", "2", "--data", packed, "--output", str(out), "--steps", "8", "--warmup-steps", "1", "--lr", "1e-2",
            "--min-lr", "1e-3", "--global-batch", "4", "--micro-batch", "4", *COMMON]  # fmt: skip
    assert train.main(argv) == 0
    got = losses(out)
    assert len(got) == 8 and all(math.isfinite(x) for x in got)
    # 8 rows, 4 per step: every row is seen again every 2 steps
    assert got[-1] < got[0] - 1.0 and got[-2] < got[1] - 1.0, got


def test_resume_equals_uninterrupted(packed, reference, tmp_path, capsys):
    out = tmp_path / "out"
    assert train.main(stage2_args(packed, out, extra=["--stop-at", "3"])) == 0
    assert (out / "latest").read_text() == "step-3\n" and not (out / "step-6").exists()
    assert len(losses(out)) == 3
    capsys.readouterr()
    assert train.main(stage2_args(packed, out, extra=["--resume"])) == 0
    report = capsys.readouterr().out
    assert "steps 4-6 (3 steps, at step 6 of 6)" in report and f"checkpoint: {out / 'step-6'}" in report
    assert losses(out) == losses(reference)  # exactly, step by step
    a, b = weights(reference, 6), weights(out, 6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = optimizer_tensors(reference, 6), optimizer_tensors(out, 6)
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)
    ta, tb = (json.loads((o / "step-6" / "trainer.json").read_text()) for o in (reference, out))
    assert ta["ranks"][0]["data"] == tb["ranks"][0]["data"] and ta["tokens"] == tb["tokens"] == 6 * 4 * SEQ
    # resuming a finished run does nothing
    assert train.main(stage2_args(packed, out, extra=["--resume"])) == 0
    assert "nothing to train: already at step 6 of 6" in capsys.readouterr().out


def test_activation_checkpointing_changes_nothing(packed, reference, tmp_path):
    out = tmp_path / "out"
    assert train.main(stage2_args(packed, out, extra=["--checkpointing", "--stop-at", "2"])) == 0
    assert losses(out) == pytest.approx(losses(reference)[:2], abs=1e-6, rel=0)


def torchrun(argv: list[str], nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone", "-m", "model.train", *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def as_fsdp(argv: list[str]) -> list[str]:
    """A run's arguments for 2 ranks: micro-batch 1 (the global batch then accumulates 2), FSDP2."""
    argv = list(argv)
    argv[argv.index("--micro-batch") + 1] = "1"
    return [*argv, "--fsdp"]


def fsdp_args(data: str, out, extra=()) -> list[str]:
    """stage2_args on 2 ranks x micro-batch 1 x 2 accumulated, FSDP2."""
    return as_fsdp(stage2_args(data, out, extra=extra))


@pytest.fixture(scope="module")
def fsdp_reference(packed, tmp_path_factory):
    """One uninterrupted run of 6 steps on 2 processes under FSDP2 (gloo): (its folder, its stdout)."""
    out = tmp_path_factory.mktemp("fsdp-reference")
    done = torchrun(fsdp_args(packed, out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one(mode, packed, reference, tmp_path, request):
    """2 ranks x micro-batch (2 for DDP: no accumulation; 1 for FSDP: 2 accumulated) = the same global batch
    of 4 as the reference's 1 rank x 2 x 2: the same rows per step (--unit-rows 1), the same losses and
    weights up to float summation order."""
    if mode == "fsdp":
        out, stdout = request.getfixturevalue("fsdp_reference")
    else:
        out = tmp_path / "out"
        done = torchrun(stage2_args(packed, out))
        assert done.returncode == 0, done.stderr[-3000:]
        stdout = done.stdout
    assert f"on 2 process(es), {'FSDP2' if mode == 'fsdp' else 'DDP'}, cpu fp32" in stdout
    assert losses(out) == pytest.approx(losses(reference), abs=1e-5, rel=0)
    a, b = weights(reference, 6), weights(out, 6)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    record = json.loads((out / "step-6" / "trainer.json").read_text())
    assert [r["data"]["rank"] for r in record["ranks"]] == [0, 1]


def test_a_sharded_checkpoint_of_two_processes_resumes_on_one_and_on_two(packed, reference, fsdp_reference, tmp_path, capsys):
    """FSDP2 on 2 ranks stops after step 3: each rank wrote its own half of every parameter. Beside it, a
    step-4.tmp as a write killed before its commit leaves it (shards and trainer.json complete): never
    taken as latest. Resumed on 1 process (no FSDP: the shards reassembled on load, the data position of
    the 2 readers mapped onto 1) the next losses are the uninterrupted runs' (float summation order
    apart); resumed on 2 processes under FSDP2 they are exactly the uninterrupted 2-process run's."""
    import shutil

    fsdp_out, _ = fsdp_reference
    stopped = tmp_path / "stopped"
    done = torchrun(fsdp_args(packed, stopped, extra=["--stop-at", "3"]))
    assert done.returncode == 0, done.stderr[-3000:]
    shard = "shard-0000{}-model-00001-of-00001.safetensors"
    for part in ("model", "optimizer"):
        assert sorted(p.name for p in (stopped / "step-3" / part).iterdir()) == [shard.format(1), shard.format(2)]
    halves = [checkpoint.read_tensors(stopped / "step-3" / "model" / shard.format(r)) for r in (1, 2)]
    vocab = PRESETS["tiny"].llm.vocab
    assert [h["llm.wte.weight"].shape[0] for h in halves] == [vocab // 2, vocab // 2]  # no rank wrote it whole
    shutil.copytree(stopped / "step-3", stopped / "step-4.tmp")
    assert checkpoint.latest(stopped) == stopped / "step-3"
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(stopped, one)
    shutil.copytree(stopped, two)

    capsys.readouterr()
    assert train.main(stage2_args(packed, one, extra=["--resume"])) == 0
    report = capsys.readouterr().out
    assert "note: removed step-4.tmp, left half-written by a killed run" in report
    assert "note: data: 2 process(es) x 1 reader(s) resumed as 1 x 1: exactly where they stood" in report
    assert "steps 4-6 (3 steps, at step 6 of 6) on 1 process(es), single process" in report
    assert losses(one)[:3] == losses(fsdp_out)[:3]  # kept as the 2 processes logged them
    assert losses(one)[3:] == pytest.approx(losses(fsdp_out)[3:], abs=1e-5, rel=0)
    assert losses(one)[3:] == pytest.approx(losses(reference)[3:], abs=1e-5, rel=0)

    done = torchrun(fsdp_args(packed, two, extra=["--resume"]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "steps 4-6 (3 steps, at step 6 of 6) on 2 process(es), FSDP2" in done.stdout
    assert losses(two) == losses(fsdp_out)  # exactly, step by step
    a, b = weights(fsdp_out, 6), weights(two, 6)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = optimizer_tensors(fsdp_out, 6), optimizer_tensors(two, 6)
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)


def test_sigterm_stops_at_a_step_boundary_with_a_checkpoint(packed, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "model.train", *stage2_args(packed, out, steps=1000)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    step = len(losses(out))
    assert step >= 1 and (out / "latest").read_text() == f"step-{step}\n"
    assert f"stopped by SIGTERM at step {step} of 1000" in stdout


def test_ctrl_c_stops_like_sigterm_without_a_traceback_and_resume_continues(packed, tmp_path):
    """Ctrl-C reaches the whole process group, the DataLoader worker included: the run still stops at a
    step boundary with a complete checkpoint, one message, no traceback, exit 130."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "model.train", *stage2_args(packed, out, steps=1000), "--num-workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]
    step = len(losses(out))
    assert step >= 1 and (out / "latest").read_text() == f"step-{step}\n"
    assert sorted(p.name for p in out.glob("step-*")) == [f"step-{step}"]
    assert f"stopped by SIGINT at step {step} of 1000" in stdout
    assert f"checkpoint: {out / f'step-{step}'} (continue with --resume)" in stdout
    (out / f"step-{step + 1}.tmp").mkdir()  # as a run killed while writing leaves it
    resumed = subprocess.run([*cmd, "--resume", "--stop-at", str(step + 1)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"note: removed step-{step + 1}.tmp, left half-written by a killed run" in resumed.stdout
    assert f"steps {step + 1}-{step + 1} (1 steps, at step {step + 1} of 1000)" in resumed.stdout
    assert len(losses(out)) == step + 1
    assert sorted(p.name for p in out.glob("step-*")) == [f"step-{step}", f"step-{step + 1}"]


def test_keep_last_keeps_the_newest_checkpoints(packed, tmp_path):
    out = tmp_path / "out"
    assert train.main(stage2_args(packed, out, steps=5, extra=["--save-every", "1", "--keep-last", "2"])) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step-")) == ["step-4", "step-5"]
    assert (out / "latest").read_text() == "step-5\n"


def test_init_weights_through_model_weights(packed, tmp_path, capsys):
    """--init-vision (OpenCLIP layout) and --init-llm (HF Qwen folder) go through model/weights.py; stage 3
    keeps the ViT frozen, so the checkpoint holds the OpenCLIP tensors exactly."""
    from safetensors.torch import save_file

    from model.llm import to_hf_qwen_key

    torch.manual_seed(123)
    donor = train.TrainModel(PRESETS["tiny"], 28)
    width = PRESETS["tiny"].vision.width
    clip = {f"visual.{k.removeprefix('trunk.')}": v.clone() for k, v in donor.vision.state_dict().items()}
    clip |= {"visual.class_embedding": torch.zeros(width), "visual.ln_post.weight": torch.ones(width),
             "visual.ln_post.bias": torch.zeros(width), "visual.proj": torch.zeros(width, 32)}  # fmt: skip
    save_file(clip, tmp_path / "clip.safetensors")
    (tmp_path / "qwen").mkdir()
    save_file({to_hf_qwen_key(k): v.clone() for k, v in donor.llm.state_dict().items()}, tmp_path / "qwen" / "model.safetensors")
    out = tmp_path / "out"
    argv = ["--stage", "3", "--data", packed, "--output", str(out), "--steps", "1", "--global-batch", "2", "--micro-batch", "2",
            "--init-vision", str(tmp_path / "clip.safetensors"), "--init-llm", str(tmp_path / "qwen"), *COMMON]  # fmt: skip
    assert train.main(argv) == 0
    report = capsys.readouterr().out
    assert f"note: {tmp_path / 'clip.safetensors'}: " in report and f"note: {tmp_path / 'qwen'}: " in report
    after = weights(out, 1)
    assert all(torch.equal(after[f"vision.{k}"], v) for k, v in donor.vision.state_dict().items())


def test_a_stage_starts_from_the_previous_stages_checkpoint(packed, tmp_path, capsys):
    """--init takes our own run folder (its latest step): stage 3 starts from stage 2's weights, and its
    frozen ViT stays exactly stage 2's."""
    first, second = tmp_path / "s2", tmp_path / "s3"
    common = ["--data", packed, "--steps", "1", "--global-batch", "2", "--micro-batch", "2", *COMMON]
    assert train.main(["--stage", "2", "--output", str(first), *common]) == 0
    assert train.main(["--stage", "3", "--output", str(second), "--init", str(first), *common]) == 0
    assert f"note: {first / 'step-1'}: " in capsys.readouterr().out
    before, after = weights(first, 1), weights(second, 1)
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("vision."))
    assert not all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("llm."))
    assert train.main(["--stage", "3", "--output", str(tmp_path / "x"), "--init", str(tmp_path / "none"), *common]) == 2


# --- configuration and usage ---------------------------------------------------------------------------


def test_toml_config_and_options(tmp_path, packed):
    config = tmp_path / "c.toml"
    config.write_text(
        f'stage = 3\npreset = "tiny"\ndata = "{packed}"\noutput = "{tmp_path / "o"}"\nlr = 3e-4\nglobal_batch = 8\n'
        'trainable = ["llm", "adapter"]\nbetas = [0.9, 0.95]\n[model.llm]\nlayers = 3\n'
    )
    cfg = train.resolve(train.build_parser().parse_args(["--config", str(config), "--lr", "1e-4", "--micro-batch", "2"]), 2)
    assert cfg.stage.lr == 1e-4 and cfg.stage.global_batch == 8 and cfg.stage.betas == (0.9, 0.95)
    assert cfg.stage.trainable == (ADAPTER, LLM) and cfg.stage.min_lr == STAGES[3].min_lr
    assert cfg.model.llm.layers == 3 and cfg.model.llm.hidden == PRESETS["tiny"].llm.hidden
    assert cfg.accumulation == 2 and cfg.world_size == 2 and cfg.files == [str(Path(packed) / "part-0.parquet")]


def test_tiny_shrinks_the_stage_schedule_and_a_long_warm_up_is_warned_about(tmp_path, packed, capsys):
    base = ["--stage", "1", "--preset", "tiny", "--data", packed, "--output", str(tmp_path / "o")]
    cfg = train.resolve(train.build_parser().parse_args(base), 1)
    assert (cfg.stage.global_batch, cfg.stage.steps, cfg.stage.warmup_steps, cfg.unit_rows) == (4, 4, 1, 1)
    assert cfg.stage.lr == STAGES[1].lr and cfg.notes == [] and capsys.readouterr().err == ""
    cfg = train.resolve(train.build_parser().parse_args(base + ["--warmup-steps", "6", "--global-batch", "8"]), 1)
    assert cfg.stage.global_batch == 8
    note = "warm-up (6 steps) is not shorter than the run (4 steps): the learning rate never reaches its peak 0.0002"
    assert cfg.notes == [note] and capsys.readouterr().err == f"warning: {note}\n"
    small = train.resolve(train.build_parser().parse_args(["--stage", "1", "--preset", "small", "--data", packed, "--output", str(tmp_path / "o")]), 1)
    assert small.stage == STAGES[1] and small.unit_rows is None  # other presets keep the paper's


def usage(argv, capsys) -> tuple[int, str]:
    code = train.main(argv)
    return code, capsys.readouterr().err.strip()


def test_usage_errors_are_one_line(tmp_path, packed, capsys):
    base = ["--stage", "2", "--output", str(tmp_path / "o")]
    nope = tmp_path / "nope"
    assert usage([*base, "--data", str(nope), "--preset", "tiny"], capsys) == (2, f"error: --data {nope}: no Parquet files match")
    assert usage([*base, "--data", packed, "--preset", "huge"], capsys) == (2, "error: unknown preset 'huge' (presets: tiny, small, qwen-vl, qwen2-vl-tiny, qwen2-vl-2b, qwen2-vl-7b, qwen2-vl-72b)")
    assert usage([*base, "--data", packed, "--preset", "tiny", "--global-batch", "10", "--micro-batch", "4"], capsys) == (
        2,
        "error: global batch 10 is not a multiple of micro-batch 4 x 1 process(es) = 4",
    )
    assert usage(["--stage", "2", "--data", packed, "--preset", "tiny"], capsys) == (
        2,
        "error: python -m model.train: --output is required (on the command line or in --config)",
    )
    assert usage([*base, "--data", packed, "--preset", "tiny", "--stage", "4"], capsys) == (
        2,
        "error: python -m model.train: argument --stage: invalid choice: 4 (choose from 1, 2, 3)",
    )
    assert usage([*base, "--data", packed, "--preset", "tiny", "--trainable", "vision,head"], capsys) == (
        2,
        "error: --trainable: 'head' is not a part (parts: vision, adapter, llm)",
    )
    assert usage([*base, "--data", packed, "--preset", "tiny", "--stage", "3", "--trainable", "vision,llm"], capsys) == (
        2,
        "error: --vit-layer-decay 0 freezes the ViT, but the stage trains it (trainable includes vision)",
    )
    config = tmp_path / "c.toml"
    config.write_text("learning_rate = 1.0\n")
    assert usage([*base, "--data", packed, "--preset", "tiny", "--config", str(config)], capsys) == (
        2,
        f"error: --config {config}: unknown key 'learning_rate' (keys are the options' names with underscores, and [model.vision|adapter|llm] tables)",
    )
    assert usage([*base, "--data", packed, "--preset", "tiny", "--init-llm", str(nope)], capsys) == (
        2,
        f"error: --init-llm {nope}: no such file or folder",
    )
    # too few shards for the readers: two row groups of 4 rows, 4 workers
    assert usage([*base, "--data", packed, "--preset", "tiny", "--num-workers", "4", "--unit-rows", "4"], capsys) == (
        2,
        "error: 2 data shards (row groups, or --unit-rows slices) for 4 readers (1 process(es) x 4 worker(s)): "
        "pass a smaller --unit-rows or fewer --num-workers",
    )
    curated = write_curated(tmp_path / "curated")
    assert usage([*base, "--data", curated, "--preset", "tiny", "--stage", "3"], capsys) == (
        2,
        f"error: {curated}/part-0.parquet: no column input_ids, loss_mask, doc_ids, position_ids, images: "
        "stage 3 trains on packed/ rows (the output of stage2 or sft)",
    )
    assert usage([*base, "--data", packed, "--preset", "tiny", "--keep-last", "0"], capsys) == (2, "error: --keep-last must be >= 1, not 0")
    assert not (tmp_path / "o").exists()


def test_existing_checkpoint_needs_resume_and_a_matching_config(packed, reference, tmp_path, capsys):
    assert usage(stage2_args(packed, reference), capsys) == (
        2,
        f"error: {reference} already holds checkpoints (latest step-6): pass --resume to continue, or another --output",
    )
    assert usage([*stage2_args(packed, reference), "--resume", "--lr", "2e-3"], capsys) == (
        2,
        f"error: cannot resume from {reference / 'step-6'}: it was trained with another stage.lr 0.001 -> 0.002",
    )
    assert usage([*stage2_args(packed, reference), "--resume", "--seed", "1"], capsys) == (
        2,
        f"error: cannot resume from {reference / 'step-6'}: it was trained with another seed 0 -> 1",
    )


def test_a_checkpoint_of_the_previous_format_does_not_resume(packed, tmp_path, capsys):
    """qwen-vl-train-checkpoint/1 (one full model.safetensors): a one-line error naming the format and what
    to do instead; --init takes its weights (model/weights.py load_own)."""
    from safetensors.torch import save_file

    out = tmp_path / "out"
    (out / "step-2").mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, out / "step-2" / "model.safetensors")
    (out / "step-2" / "trainer.json").write_text(json.dumps({"format": "qwen-vl-train-checkpoint/1", "step": 2}))
    (out / "latest").write_text("step-2\n")
    assert usage([*stage2_args(packed, out), "--resume"], capsys) == (
        2,
        f"error: {out / 'step-2'} is a qwen-vl-train-checkpoint/1 checkpoint (full tensors in model.safetensors), which this "
        f"trainer does not resume: start a new run from its weights with --init {out / 'step-2'}",
    )


def test_data_files_of_folders_files_and_globs(tmp_path):
    for name in ("a/1.parquet", "a/2.parquet", "a/notes.txt", "b/3.parquet"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    a, b = tmp_path / "a", tmp_path / "b"
    assert train.data_files([str(a)]) == [str(a / "1.parquet"), str(a / "2.parquet")]
    assert train.data_files([str(a / "2.parquet"), str(tmp_path / "*" / "*.parquet")]) == [
        str(a / "1.parquet"), str(a / "2.parquet"), str(b / "3.parquet")]  # sorted, each once
    with pytest.raises(train.UsageError, match=r"^--data .*nothing\.parquet: no Parquet files match$"):
        train.data_files([str(a / "nothing.parquet")])
