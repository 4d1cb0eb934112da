"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else, written atomically.

Layout of an output folder DIR:

    DIR/step-N/model.safetensors      the whole model's state dict (QwenVL names, full tensors, as trained: fp32)
    DIR/step-N/optimizer.safetensors  the optimizer state, flattened: "<parameter name>:<key>" -> tensor
                                      (AdamW: exp_avg, exp_avg_sq, step), keyed by parameter *name* rather
                                      than by index, so a checkpoint reads the same whatever the group order
    DIR/step-N/trainer.json           everything else: format, step, tokens, lr, elapsed time, the config
                                      used, the optimizer's param_groups (hyperparameters and parameter
                                      names), and per rank the data position (the dataset's state_dict) and
                                      the RNG states (torch CPU and the rank's CUDA device as base64 bytes, Python's and
                                      NumPy's as lists)
    DIR/latest                        one line, "step-N": the newest complete checkpoint

Writing (`write`): the files go into DIR/step-N.tmp/ (a leftover one from a crash is removed first), each
is fsynced, then the folder; DIR/step-N.tmp is renamed to DIR/step-N (atomic on POSIX; an existing
DIR/step-N is moved aside first and removed after); then DIR/latest.tmp is written, fsynced and renamed
over DIR/latest, and DIR is fsynced. A crash at any point leaves DIR/latest naming a complete checkpoint
(or no DIR/latest). Readers go through DIR/latest only (`latest`), never by listing step folders. An
exception inside `write` (a KeyboardInterrupt included) removes its step-N.tmp; what a killed process
left (step-N.tmp, step-N.old, latest.tmp) `remove_partial` removes. `prune` keeps the newest N step
folders up to the one DIR/latest names.

Nothing here is pickled and nothing is unpickled: safetensors holds only tensors and JSON only plain
values. No torch.distributed code lives here: model/train.py gathers full state dicts to rank 0 and calls
`write` there; every rank `read`s.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "qwen-vl-train-checkpoint/1"
MODEL, OPTIMIZER, TRAINER, LATEST = "model.safetensors", "optimizer.safetensors", "trainer.json", "latest"
SEP = ":"  # between a parameter name (which has dots) and an optimizer state key
STEP_NAME = re.compile(r"step-(\d+)")
PARTIAL = re.compile(r"step-\d+\.(tmp|old)|latest\.tmp")


def step_dir(output: str | Path, step: int) -> Path:
    return Path(output) / f"step-{step}"


# --- flattening -------------------------------------------------------------------------------------


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict keyed by parameter names ({"state": {name: {key: value}}, "param_groups":
    [{..., "params": [names]}]}, as torch.distributed.checkpoint.state_dict gives it) -> the tensors
    ("name:key" -> tensor) and the JSON part (param_groups, and any non-tensor state value)."""
    tensors, scalars = {}, {}
    for name, entries in state["state"].items():
        for key, value in entries.items():
            if SEP in key:
                raise ValueError(f"optimizer state key {key!r} contains {SEP!r}")
            if isinstance(value, torch.Tensor):
                tensors[f"{name}{SEP}{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{name}{SEP}{key}"] = value
    groups = [{k: _jsonable(v) for k, v in group.items()} for group in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of `flatten_optimizer`: a name-keyed optimizer state dict."""
    state: dict[str, dict] = {}
    for flat, value in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        name, _, key = flat.rpartition(SEP)
        state.setdefault(name, {})[key] = value
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"not JSON-serialisable in an optimizer param group: {value!r}")


# --- RNG ----------------------------------------------------------------------------------------------


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict:
    """This process's RNG states as JSON values: torch CPU, CUDA (this process's current device, when CUDA
    is in use), Python, NumPy."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": _b64(torch.get_rng_state()),
        "cuda": _b64(torch.cuda.get_rng_state()) if torch.cuda.is_initialized() else None,
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(_unb64(state["cuda"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --- atomic writing -------------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write(
    output: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    trainer: dict,
) -> Path:
    """Write checkpoint `step` into `output` atomically (see the module docstring) and point `latest` at it.

    model_state: full tensors by name; optimizer_state: name-keyed (see `flatten_optimizer`); trainer: JSON
    values (step, config, per-rank data and RNG states...). Returns DIR/step-N.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    final = step_dir(output, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        weights = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
        save_file(weights, tmp / MODEL, metadata={"format": FORMAT, "step": str(step)})
        opt_tensors, opt_meta = flatten_optimizer(optimizer_state)
        save_file(opt_tensors, tmp / OPTIMIZER, metadata={"format": FORMAT, "step": str(step)})
        record = {"format": FORMAT, **trainer, "step": step, "optimizer": opt_meta}
        _write_text(tmp / TRAINER, json.dumps(record, indent=1, sort_keys=True) + "\n")
        for name in (MODEL, OPTIMIZER):
            _fsync_path(tmp / name)
        _fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():  # the same step saved again (a resumed run re-saving): swap, then remove the old
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_path(output)
    latest_tmp = output / (LATEST + ".tmp")
    _write_text(latest_tmp, final.name + "\n")
    os.replace(latest_tmp, output / LATEST)
    _fsync_path(output)
    if old is not None:
        shutil.rmtree(old)
    return final


def remove_partial(output: str | Path) -> list[str]:
    """Remove what a killed `write` left in `output` (step-N.tmp, step-N.old, latest.tmp); their names, sorted.
    Never a complete checkpoint: those are only ever step-N."""
    removed = []
    for path in sorted(Path(output).iterdir()) if Path(output).is_dir() else []:
        if PARTIAL.fullmatch(path.name):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    return removed


def prune(output: str | Path, keep: int) -> list[str]:
    """Keep the `keep` newest step-N folders up to the one DIR/latest names (newer ones, left by a run that
    was resumed from an earlier step, are replaced as the run reaches them); remove the older ones. Returns
    the removed folders' names, oldest first."""
    current = latest(output)
    if current is None:
        return []
    newest = int(STEP_NAME.fullmatch(current.name)[1])
    steps = sorted(int(m[1]) for p in Path(output).iterdir() if (m := STEP_NAME.fullmatch(p.name)) and p.is_dir())
    old = [n for n in steps if n <= newest][:-keep]
    for n in old:
        shutil.rmtree(step_dir(output, n))
    return [f"step-{n}" for n in old]


def latest(output: str | Path) -> Path | None:
    """The checkpoint DIR/latest names, or None when there is none."""
    pointer = Path(output) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    path = Path(output) / name
    if not name.startswith("step-") or not (path / TRAINER).is_file():
        raise ValueError(f"{pointer} names {name!r}, which is not a complete checkpoint")
    return path


def read_trainer(path: str | Path) -> dict:
    record = json.loads((Path(path) / TRAINER).read_text(encoding="utf-8"))
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint (format {record.get('format')!r})")
    return record


def read_tensors(file: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    with safe_open(str(file), framework="pt", device=device) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(model state, name-keyed optimizer state, trainer record) of checkpoint folder `path`."""
    path = Path(path)
    record = read_trainer(path)
    model_state = read_tensors(path / MODEL)
    optimizer_state = unflatten_optimizer(read_tensors(path / OPTIMIZER), record["optimizer"])
    return model_state, optimizer_state, record
