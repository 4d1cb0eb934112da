"""Training checkpoints without pickle: sharded safetensors for tensors (torch.distributed.checkpoint,
DCP), JSON for everything else, committed atomically.

Layout of an output folder DIR:

    DIR/step-N/model/shard-0000R-model-00001-of-00001.safetensors
                                      the model's state dict (QwenVL names, as trained: fp32), one file per
                                      rank that holds tensors to write: under FSDP2 each rank writes its own
                                      shard of every parameter (dim-0 slices), under DDP or one process the
                                      full tensors, each written once (DCP spreads the replicated ones over
                                      the ranks); every file's safetensors header records where each of its
                                      slices sits in the full tensor (metadata "DCP_SHARDING_INFO":
                                      {name: {"saved_offsets": [...]}})
    DIR/step-N/optimizer/shard-....safetensors
                                      the optimizer state the same way, flattened: "<parameter name>:<key>"
                                      -> tensor (AdamW: exp_avg, exp_avg_sq, step), keyed by parameter
                                      *name*, so it reads the same whatever the group order or the sharding
    DIR/step-N/trainer.json           everything else: format, step, tokens, lr, elapsed time, the config
                                      used, the optimizer's param_groups (hyperparameters and parameter
                                      names), and per rank the data position (the dataset's state_dict)
                                      and the RNG states (torch CPU and the rank's CUDA device as base64
                                      bytes, Python's and NumPy's as lists)
    DIR/latest                        one line, "step-N": the newest complete checkpoint

The tensors are written with DCP's HuggingFaceStorageWriter (save_distributed=True, no consolidation)
and read with its HuggingFaceStorageReader, which rebuilds DCP's metadata from the safetensors headers:
no `.metadata` file (DCP's own, pickled) is written or read, so nothing here is pickled and nothing is
unpickled. Loading goes through DCP's planner: it reads, for every tensor of the target state dict,
the overlapping slices of the saved files, so a checkpoint written by W ranks loads into any other
sharding (FSDP2 on W' ranks, DDP, one process): resharding on load. `read_full` assembles full tensors
from the files without torch.distributed (--init, tests, tools).

Writing (one call per rank, in this order; model/train_checkpoint.py does it):
  `begin` (rank 0): remove a leftover DIR/step-N.tmp, create it; barrier;
  `write_tensors` (every rank, collective): DIR/step-N.tmp/model/ and .../optimizer/, each file fsynced;
  `write_trainer` (rank 0): trainer.json, fsynced; barrier;
  `commit` (rank 0): fsync the folder, rename DIR/step-N.tmp to DIR/step-N (atomic on POSIX; an
  existing DIR/step-N is moved aside first and removed after), then DIR/latest.tmp written, fsynced and
  renamed over DIR/latest, DIR fsynced.
`write` does all four in one process. A crash at any point leaves DIR/latest naming a complete
checkpoint (or no DIR/latest): a step-N.tmp is never taken as latest, since readers go through
DIR/latest only (`latest`), never by listing step folders. An exception inside `write` (a
KeyboardInterrupt included) removes its step-N.tmp; what a killed process left (step-N.tmp, step-N.old,
latest.tmp) `remove_partial` removes. `prune` keeps the newest N step folders up to the one DIR/latest
names. DIR must be on a filesystem every rank sees.

The previous format (FORMAT_V1, "qwen-vl-train-checkpoint/1": step-N/model.safetensors and
optimizer.safetensors, full tensors written by rank 0) is still read by `read_full` (so --init takes
it), but not resumed: `read_trainer` says so in one line.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

FORMAT = "qwen-vl-train-checkpoint/2"
FORMAT_V1 = "qwen-vl-train-checkpoint/1"
MODEL, OPTIMIZER, TRAINER, LATEST = "model", "optimizer", "trainer.json", "latest"
MODEL_V1 = "model.safetensors"  # FORMAT_V1's one file of full tensors
SEP = ":"  # between a parameter name (which has dots) and an optimizer state key
SHARDING_KEY = "DCP_SHARDING_INFO"  # torch.distributed.checkpoint._hf_utils.CUSTOM_METADATA_KEY
STEP_NAME = re.compile(r"step-(\d+)")
PARTIAL = re.compile(r"step-\d+\.(tmp|old)|latest\.tmp")


def step_dir(output: str | Path, step: int) -> Path:
    return Path(output) / f"step-{step}"


def tmp_dir(output: str | Path, step: int) -> Path:
    return Path(output) / f"step-{step}.tmp"


# --- flattening -------------------------------------------------------------------------------------


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict keyed by parameter names ({"state": {name: {key: value}}, "param_groups":
    [{..., "params": [names]}]}, as torch.distributed.checkpoint.state_dict gives it) -> the tensors
    ("name:key" -> tensor, the very objects: DTensors stay DTensors, and loading into them loads into
    the optimizer) and the JSON part (param_groups, and any non-tensor state value)."""
    tensors, scalars = {}, {}
    for name, entries in state["state"].items():
        for key, value in entries.items():
            if SEP in key:
                raise ValueError(f"optimizer state key {key!r} contains {SEP!r}")
            if isinstance(value, torch.Tensor):
                tensors[f"{name}{SEP}{key}"] = value
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


def begin(output: str | Path, step: int) -> Path:
    """Rank 0, first: an empty DIR/step-N.tmp (a leftover one from a crash removed). Returns it."""
    tmp = tmp_dir(output, step)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


@contextlib.contextmanager
def _one_process_quiet():
    """DCP warns on every call without a process group that it assumes one process: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled, )?unavailable or uninitialized")
        yield


def write_tensors(folder: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Every rank (a collective under torch.distributed): `tensors` (plain tensors or DTensors, by name)
    into `folder` as DCP's sharded safetensors, each rank writing what it holds (replicated tensors once)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    with _one_process_quiet():
        dcp.save(dict(tensors), storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))


def load_tensors(folder: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Every rank (a collective under torch.distributed): fill `tensors` (plain tensors or DTensors, any
    sharding) in place from `folder`; every name must be there (a KeyError-like RuntimeError otherwise)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    state = dict(tensors)
    with _one_process_quiet():
        dcp.load(state, storage_reader=HuggingFaceStorageReader(str(folder)))
    for name, value in state.items():  # DCP loads in place; a tensor it had to replace is copied back
        if value is not tensors[name]:
            tensors[name].copy_(value)


def write_trainer(tmp: str | Path, step: int, trainer: dict, optimizer_meta: dict) -> None:
    """Rank 0: DIR/step-N.tmp/trainer.json (the JSON part of the optimizer state inside)."""
    record = {"format": FORMAT, **trainer, "step": step, "optimizer": optimizer_meta}
    _write_text(Path(tmp) / TRAINER, json.dumps(record, indent=1, sort_keys=True) + "\n")


def commit(output: str | Path, step: int) -> Path:
    """Rank 0, last (after every rank's `write_tensors` and a barrier): DIR/step-N.tmp -> DIR/step-N,
    then DIR/latest. Returns DIR/step-N."""
    output = Path(output)
    final, tmp = step_dir(output, step), tmp_dir(output, step)
    for sub in (tmp / MODEL, tmp / OPTIMIZER, tmp):
        if sub.is_dir():
            _fsync_path(sub)
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


def write(
    output: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    trainer: dict,
) -> Path:
    """One process: checkpoint `step` into `output` atomically (see the module docstring) and point
    `latest` at it. model_state: tensors by name; optimizer_state: name-keyed (see `flatten_optimizer`);
    trainer: JSON values (step, config, per-rank data and RNG states...). Returns DIR/step-N."""
    tmp = begin(output, step)
    try:
        write_tensors(tmp / MODEL, model_state)
        opt_tensors, opt_meta = flatten_optimizer(optimizer_state)
        write_tensors(tmp / OPTIMIZER, opt_tensors)
        write_trainer(tmp, step, trainer, opt_meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit(output, step)


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


# --- reading ------------------------------------------------------------------------------------------


def latest(output: str | Path) -> Path | None:
    """The checkpoint DIR/latest names, or None when there is none."""
    pointer = Path(output) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    path = Path(output) / name
    if not STEP_NAME.fullmatch(name) or not (path / TRAINER).is_file():
        raise ValueError(f"{pointer} names {name!r}, which is not a complete checkpoint")
    return path


def read_trainer(path: str | Path) -> dict:
    """trainer.json of a checkpoint this trainer can resume (FORMAT); a one-line ValueError otherwise."""
    record = json.loads((Path(path) / TRAINER).read_text(encoding="utf-8"))
    if record.get("format") == FORMAT_V1:
        raise ValueError(f"{path} is a {FORMAT_V1} checkpoint (full tensors in model.safetensors), which this trainer "
                         f"does not resume: start a new run from its weights with --init {path}")
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint (format {record.get('format')!r})")
    return record


def read_tensors(file: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file, as stored."""
    with safe_open(str(file), framework="pt", device=device) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def read_full(folder: str | Path) -> dict[str, torch.Tensor]:
    """Full tensors by name, assembled from a DCP safetensors folder (step-N/model or step-N/optimizer),
    in this process, without torch.distributed; a FORMAT_V1 step-N/model.safetensors is read as it is."""
    folder = Path(folder)
    if folder.name == MODEL and not folder.is_dir() and (folder.parent / MODEL_V1).is_file():
        return read_tensors(folder.parent / MODEL_V1)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no safetensors files")
    pieces: dict[str, list[tuple[list[int], torch.Tensor]]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get(SHARDING_KEY, "{}"))
            for key in f.keys():
                tensor = f.get_tensor(key)
                offsets = info.get(key, {}).get("saved_offsets", [0] * tensor.ndim)
                pieces.setdefault(key, []).append((list(offsets), tensor))
    full = {}
    for key, parts in pieces.items():
        first = parts[0][1]
        size = [max(o[d] + t.shape[d] for o, t in parts) for d in range(first.ndim)]
        out = torch.empty(size, dtype=first.dtype)
        covered = 0
        for offsets, tensor in parts:
            out[tuple(slice(o, o + n) for o, n in zip(offsets, tensor.shape))] = tensor
            covered += tensor.numel()
        if covered != out.numel():
            raise ValueError(f"{folder}: {key}: the saved slices cover {covered} of {out.numel()} elements")
        full[key] = out
    return full


def read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(model state, name-keyed optimizer state, trainer record) of checkpoint folder `path`, full
    tensors, in this process (tests and tools; the trainer loads shards with `load_tensors`)."""
    path = Path(path)
    record = read_trainer(path)
    model_state = read_full(path / MODEL)
    optimizer_state = unflatten_optimizer(read_full(path / OPTIMIZER), record["optimizer"])
    return model_state, optimizer_state, record
