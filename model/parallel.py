"""Processes, devices and parallelism for the trainer, applied from outside the model, in one place
(`parallelize`), as torchtitan's parallelize.py does: activation checkpointing and torch.compile on the
blocks the model's plug-in names (model/architectures.py), then FSDP2 or DDP under torchrun.

One process by default. Under torchrun: DDP (default; NCCL on GPU, gloo on CPU; no_sync on all but the
last micro-batch, in model/train.py) or FSDP2 (--fsdp; torch.distributed.fsdp.fully_shard on each block,
then the root: ZeRO-3-style sharding of parameters, gradients and AdamW state; bf16 all-gathers with
fp32 gradient reduction on GPU: MixedPrecisionPolicy).

A model built on the meta device (a resume: model/train_checkpoint.py) is sharded first and then
materialised (`to_empty`: each rank allocates only its own shards under FSDP2), and the `load` callback
fills it from the checkpoint's shards: after sharding under FSDP2, before wrapping under DDP (which
broadcasts rank 0's weights at construction) or in one process.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed() -> Dist:
    world = world_from_env()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        if cuda:
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return Dist(rank, world, local, device)


def barrier(d: Dist) -> None:
    if d.on:
        dist.barrier()


def materialize(model: nn.Module, device: torch.device) -> None:
    """Allocate a meta-built model's tensors (uninitialised: a checkpoint load fills them). Every buffer
    must be persistent, or the load would leave it garbage."""
    transient = [f"{name}.{b}" if name else b for name, m in model.named_modules() for b in m._non_persistent_buffers_set]
    if transient:
        raise ValueError(f"cannot build this model on the meta device: non-persistent buffers {', '.join(transient)}")
    model.to_empty(device=device)


def parallelize(model: nn.Module, arch, compile: bool, checkpointing: bool, fsdp: bool, d: Dist,
                load: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """The model as the loop runs it: checkpointing and compile on arch.blocks(model), then FSDP2
    (`fsdp`) or DDP when there are several processes, else the model itself. A model on the meta device
    is materialised after FSDP2's sharding (or at once otherwise) and filled by `load(model)`."""
    arch.set_checkpointing(model, checkpointing)
    blocks = arch.blocks(model)
    if compile:
        for block in blocks:
            block.compile()
    on_meta = any(p.is_meta for p in model.parameters())
    if not on_meta:
        model.to(d.device)
    if d.on and fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kwargs = {}
        if d.device.type == "cuda":
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        if on_meta:
            materialize(model, d.device)
        if load is not None:
            load(model)
        return model
    if on_meta:
        materialize(model, d.device)
    if load is not None:
        load(model)
    if not d.on:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # the one buffer (the adapter's sin-cos table) is fixed: no buffer sync in forward
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False}
    return DistributedDataParallel(
        model,
        device_ids=[d.device.index] if d.device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        **no_sync,
    )


def autocast_for(device: torch.device):
    """bf16 autocast on GPU; nothing (fp32) on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def set_precision(device: torch.device) -> None:
    """TF32 matmuls and convolutions on GPU for what runs in fp32 outside autocast."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def all_reduce(values: list[float], d: Dist) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    if d.on:
        dist.all_reduce(t)
    return t.tolist()
