"""model/checkpoint.py: an exact round trip of model, optimizer and RNG states, DCP's sharded safetensors +
JSON only (no pickle anywhere, no DCP .metadata file), and the atomic write protocol (step-N.tmp ->
step-N, then `latest`)."""

import json
import random
import struct

import numpy as np
import pytest
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from model import checkpoint
from model.config import PRESETS, STAGES
from model.optim import make_optimizer
from model.architectures import TrainModel
from model.train_checkpoint import set_optimizer as load_optimizer


def trained_model(seed: int = 0):
    """The tiny model and its AdamW after one step on a random text batch (stage 3: ViT frozen)."""
    torch.manual_seed(seed)
    model = TrainModel(PRESETS["tiny"], 28)
    model.train_only(STAGES[3].trainable)
    optimizer = make_optimizer(model, STAGES[3])
    ids = torch.randint(100, 300, (2, 40))
    loss = model(ids, torch.arange(40).expand(2, 40), torch.zeros_like(ids), torch.ones_like(ids), torch.empty(0, 3, 28, 28))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return model, optimizer


def test_round_trip_is_exact(tmp_path):
    model, optimizer = trained_model()
    model_state, optim_state = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    trainer = {"tokens": 80, "elapsed": 1.5, "config": {"seed": 0}, "ranks": [{"data": {"rank": 0}, "rng": checkpoint.rng_state()}]}
    path = checkpoint.write(tmp_path, 7, model_state, optim_state, trainer)
    assert path == tmp_path / "step-7" and checkpoint.latest(tmp_path) == path

    m2, o2, record = checkpoint.read(path)
    assert m2.keys() == model_state.keys() and all(torch.equal(m2[k], model_state[k]) for k in m2)
    assert record["step"] == 7 and record["tokens"] == 80 and record["ranks"][0]["data"] == {"rank": 0}

    # into a fresh model + optimizer: every tensor of the optimizer state equal, groups' hyperparameters too
    fresh, fresh_opt = trained_model(seed=1)
    fresh.load_state_dict(m2, strict=True)
    load_optimizer(fresh, fresh_opt, o2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    by_name = dict(model.named_parameters())
    fresh_by_name = dict(fresh.named_parameters())
    for name, p in by_name.items():
        if p.requires_grad:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(optimizer.state[p][key], fresh_opt.state[fresh_by_name[name]][key]), (name, key)
    for g, h in zip(optimizer.param_groups, fresh_opt.param_groups):
        assert {k: v for k, v in g.items() if k != "params"} == {k: v for k, v in h.items() if k != "params"}


def test_only_safetensors_and_json(tmp_path):
    model, optimizer = trained_model()
    model_state, optim_state = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    path = checkpoint.write(tmp_path, 1, model_state, optim_state, {"ranks": []})
    shard = "shard-00001-model-00001-of-00001.safetensors"  # DCP's HuggingFaceStorageWriter, one process
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*")) == ["model", f"model/{shard}", "optimizer", f"optimizer/{shard}", "trainer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-1"]
    for name in ("model", "optimizer"):
        raw = (path / name / shard).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 header length, JSON header, raw tensor bytes
        header = json.loads(raw[8 : 8 + n])
        offsets = json.loads(header["__metadata__"]["DCP_SHARDING_INFO"])  # where each slice sits: whole tensors here
        assert set(offsets) == set(header) - {"__metadata__"} and all(set(v["saved_offsets"]) <= {0} for v in offsets.values())
        assert not raw.startswith(b"\x80") and not raw.startswith(b"PK")  # neither a pickle nor a torch.save zip
    assert json.loads((path / "trainer.json").read_text())["format"] == checkpoint.FORMAT == "qwen-vl-train-checkpoint/2"
    flat = checkpoint.read_tensors(path / "optimizer" / shard)
    assert "llm.wte.weight:exp_avg" in flat and "llm.wte.weight:step" in flat
    assert not any(k.startswith("vision.") for k in flat)  # frozen in stage 3: no state


def test_rng_states_round_trip():
    state = checkpoint.rng_state()
    json.dumps(state)
    expected = (torch.rand(3), random.random(), np.random.rand())
    checkpoint.set_rng_state(json.loads(json.dumps(state)))
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def test_atomic_protocol(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    optim = {"state": {"w": {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2, 3)}}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.98), "params": ["w"]}]}
    assert checkpoint.latest(tmp_path) is None
    # a crash mid-write leaves step-N.tmp and no pointer: not a checkpoint, and the next write replaces it
    (tmp_path / "step-2.tmp").mkdir()
    (tmp_path / "step-2.tmp" / "model").mkdir()
    (tmp_path / "step-2.tmp" / "model" / "shard-00001-model-00001-of-00001.safetensors").write_bytes(b"partial")
    (tmp_path / "step-2.tmp" / "trainer.json").write_text("{}")
    assert checkpoint.latest(tmp_path) is None
    checkpoint.write(tmp_path, 2, tensors, optim, {})
    assert not (tmp_path / "step-2.tmp").exists() and checkpoint.latest(tmp_path).name == "step-2"
    checkpoint.write(tmp_path, 4, {"w": tensors["w"] * 2}, optim, {})
    assert (tmp_path / "latest").read_text() == "step-4\n" and (tmp_path / "step-2").is_dir()
    # the same step again (a resumed run re-saving): replaced whole, no leftovers
    checkpoint.write(tmp_path, 4, {"w": tensors["w"] * 3}, optim, {})
    model, opt, _ = checkpoint.read(checkpoint.latest(tmp_path))
    assert torch.equal(model["w"], tensors["w"] * 3) and opt["param_groups"][0]["betas"] == (0.9, 0.98)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-2", "step-4"]
    (tmp_path / "latest").write_text("step-9\n")
    with pytest.raises(ValueError, match="names 'step-9', which is not a complete checkpoint"):
        checkpoint.latest(tmp_path)


def small_state():
    optim = {"state": {"w": {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 0.1, "params": ["w"]}]}
    return {"w": torch.zeros(2)}, optim


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    model, optim = small_state()
    checkpoint.write(tmp_path, 1, model, optim, {})

    def interrupted(folder, tensors):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "write_tensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.write(tmp_path, 2, model, optim, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-1"]


def test_remove_partial_removes_what_a_killed_write_left(tmp_path):
    model, optim = small_state()
    checkpoint.write(tmp_path, 1, model, optim, {})
    for name in ("step-2.tmp", "step-1.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer.json").write_text("{}")
    (tmp_path / "latest.tmp").write_text("step-2\n")
    (tmp_path / "metrics.jsonl").write_text("")
    assert checkpoint.remove_partial(tmp_path) == ["latest.tmp", "step-1.old", "step-2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "metrics.jsonl", "step-1"]
    assert checkpoint.remove_partial(tmp_path / "absent") == []


def test_prune_keeps_the_newest_up_to_latest(tmp_path):
    model, optim = small_state()
    for step in (2, 4, 6, 8, 10):
        checkpoint.write(tmp_path, step, model, optim, {})
    (tmp_path / "latest").write_text("step-8\n")  # step-10: a newer folder of a run resumed from step 8
    assert checkpoint.prune(tmp_path, 2) == ["step-2", "step-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-10", "step-6", "step-8"]
    assert checkpoint.prune(tmp_path, 5) == []


def test_sharded_slices_assemble_and_the_old_format_is_named(tmp_path):
    """read_full puts dim-0 slices (as FSDP2 ranks write them) back together; a checkpoint of the previous
    format (one full model.safetensors) is read for --init but does not resume: a one-line error naming it."""
    from safetensors.torch import save_file

    w = torch.arange(12.0).reshape(4, 3)
    (tmp_path / "model").mkdir()
    for rank, rows in enumerate((slice(0, 2), slice(2, 4))):
        info = json.dumps({"w": {"saved_offsets": [rows.start, 0]}, "b": {"saved_offsets": [0]}})
        tensors = {"w": w[rows].clone()} | ({"b": torch.ones(2)} if rank == 0 else {})
        save_file(tensors, tmp_path / "model" / f"shard-0000{rank + 1}-model-00001-of-00001.safetensors", metadata={"DCP_SHARDING_INFO": info})
    full = checkpoint.read_full(tmp_path / "model")
    assert torch.equal(full["w"], w) and torch.equal(full["b"], torch.ones(2))

    old = tmp_path / "step-5"
    old.mkdir()
    save_file({"w": w}, old / "model.safetensors")
    (old / "trainer.json").write_text(json.dumps({"format": "qwen-vl-train-checkpoint/1", "step": 5}))
    assert torch.equal(checkpoint.read_full(old / "model")["w"], w)
    with pytest.raises(ValueError) as e:
        checkpoint.read_trainer(old)
    assert str(e.value) == (f"{old} is a qwen-vl-train-checkpoint/1 checkpoint (full tensors in model.safetensors), which this "
                            f"trainer does not resume: start a new run from its weights with --init {old}")
