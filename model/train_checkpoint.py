"""A training run's checkpoints: what the loop saves and how a run resumes, over model/checkpoint.py's
format (sharded safetensors through torch.distributed.checkpoint, JSON for the rest, atomic commit).

Saving (`save`, every rank): the model's and the optimizer's *sharded* state dicts
(torch.distributed.checkpoint.state_dict.get_state_dict with the default options: DTensor shards under
FSDP2, the full tensors under DDP or in one process; nothing is gathered to rank 0); each rank's data
position and RNG states gathered to rank 0 as JSON values (gather_object: pickle of plain dicts made
here, over the process group, never written); then checkpoint.begin (rank 0), barrier, write_tensors
(every rank writes its own shards), write_trainer (rank 0), barrier, commit (rank 0: step-N.tmp ->
step-N, then DIR/latest), prune (--keep-last), barrier.

Resuming (`load_model` as model/parallel.py's load callback, then `load_optimizer`, `resume_data`): the
model is built on the meta device (model/train.py), sharded by FSDP2 and materialised with to_empty, so
each rank allocates only its own shards, and DCP reads into them just the slices of the saved files
they overlap (under DDP or in one process each rank holds, and reads, the whole model, as it trains
it); the optimizer's state is created in place (get_optimizer_state_dict: one zero-gradient step at lr
0, which changes no weight), filled the same way, and its param groups come from trainer.json. No rank
ever holds the full model or optimizer state unless its parallelism does. The checkpoint may come from
another number of ranks, from DDP or from FSDP2: the tensors reshard on load, the data position through
model/data.py's `reshard_state`, and each rank takes the RNG states of the saved rank of its number
(modulo the saved count).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from model import checkpoint
from model.data import reshard_state
from model.optim import lr_at
from model.parallel import Dist, barrier


def save(cfg, d: Dist, wrapped, optimizer, step: int, progress: dict, data_state: dict) -> Path:
    """Checkpoint `step` (every rank calls it); returns DIR/step-N."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(wrapped, optimizer)
    opt_tensors, opt_meta = checkpoint.flatten_optimizer(optim_state)
    mine = {"data": data_state, "rng": checkpoint.rng_state()}
    ranks = [None] * d.world if d.main else None
    if d.on:
        dist.gather_object(mine, ranks, dst=0)
    else:
        ranks = [mine]
    tmp = checkpoint.tmp_dir(cfg.output, step)
    if d.main:
        checkpoint.begin(cfg.output, step)
    barrier(d)
    try:
        checkpoint.write_tensors(tmp / checkpoint.MODEL, model_state)
        checkpoint.write_tensors(tmp / checkpoint.OPTIMIZER, opt_tensors)
        if d.main:
            trainer = {**progress, "lr": lr_at(step, cfg.stage), "config": cfg.to_json(), "ranks": ranks}
            checkpoint.write_trainer(tmp, step, trainer, opt_meta)
    except BaseException:
        if d.main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier(d)
    if d.main:
        checkpoint.commit(cfg.output, step)
        if cfg.keep_last is not None:
            checkpoint.prune(cfg.output, cfg.keep_last)
    barrier(d)
    return checkpoint.step_dir(cfg.output, step)


def load_model(model: torch.nn.Module, path: Path) -> None:
    """Fill `model` (materialised, sharded by FSDP2 or not, not yet wrapped by DDP) from step-N/model/."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = get_model_state_dict(model)
    checkpoint.load_tensors(Path(path) / checkpoint.MODEL, state)
    set_model_state_dict(model, state)


def load_optimizer(wrapped, optimizer, path: Path, record: dict) -> None:
    """Fill `optimizer` (over the wrapped model's parameters) from step-N/optimizer/ and trainer.json."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    tensors, _ = checkpoint.flatten_optimizer(get_optimizer_state_dict(wrapped, optimizer))
    checkpoint.load_tensors(Path(path) / checkpoint.OPTIMIZER, tensors)
    set_optimizer(wrapped, optimizer, checkpoint.unflatten_optimizer(tensors, record["optimizer"]), full=False)


def set_optimizer(wrapped, optimizer, optim_state: dict, full: bool = True) -> None:
    """A name-keyed optimizer state dict (full tensors, or this rank's shards) into `optimizer`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(wrapped, optimizer, optim_state, options=StateDictOptions(full_state_dict=full))
    for group in optimizer.param_groups:  # the loader hands param-group tuples back as lists
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])


def resume_data(record: dict, d: Dist, num_workers: int) -> tuple[dict, dict, str | None]:
    """(this rank's data state, its RNG states, a note when the layout changed) from a trainer record."""
    saved = record["ranks"]
    state, again = reshard_state([r["data"] for r in saved], d.rank, d.world, num_workers)
    note = None
    old_workers = max(saved[0]["data"]["num_workers"] or 1, 1)
    if (len(saved), old_workers) != (d.world, max(num_workers, 1)) and any(r["data"]["readers"] for r in saved):
        how = "exactly where they stood" if again == 0 else f"{again} unit(s) read again"
        note = (f"data: {len(saved)} process(es) x {old_workers} reader(s) resumed as {d.world} x {max(num_workers, 1)}: "
                f"{how}")
    return state, saved[d.rank % len(saved)]["rng"], note
