"""Train Qwen-VL, one stage at a time, on the Parquet the pipelines write (model/data.py reads it).

    python -m model.train --stage {1,2,3} --data GLOB --preset {tiny,small,qwen-vl} --output DIR
        [--steps N] [--resume] [--init PATH] [--init-vision PATH] [--init-llm PATH] [--init-qwen-vl PATH]
        [--micro-batch B] [--global-batch G] [--lr LR] [--min-lr LR] [--warmup-steps N]
        [--image-size PX] [--seq-len T] [--vit-layer-decay D] [--betas B1 B2] [--eps E]
        [--weight-decay W] [--grad-clip C] [--trainable vision,adapter,llm]
        [--config FILE.toml] [--compile] [--checkpointing] [--fsdp] [--save-every N] [--keep-last N]
        [--stop-at STEP] [--seed S] [--num-workers W] [--unit-rows R]
    torchrun --nproc_per_node 8 -m model.train ...      (DDP; add --fsdp for FSDP2)

Configuration. The stage preset (model/config.py STAGES) and the model preset (PRESETS) give every
default; a TOML file (--config) overrides them, and options override the TOML. The TOML takes any option
by its name with underscores at the top level (`lr = 1e-4`, `betas = [0.9, 0.98]`, `trainable =
["adapter", "llm"]`, `data = "packed/*.parquet"`, ...) and model fields in [model.vision],
[model.adapter], [model.llm] tables (`[model.llm]` then `layers = 4`). `--steps` is the schedule's length
(the cosine ends there); `--stop-at K` stops after step K (a checkpoint is written) without changing the
schedule, to continue later with --resume. The resolved config goes to DIR/config.json and into every
checkpoint.

Data. --data is a folder of *.parquet, a file, or a glob (repeatable): stage 1 reads curated/, stages 2
and 3 packed/ (model/data.py `stage_stream`), endless, sharded over ranks x DataLoader workers, seeded by
--seed. --unit-rows cuts row groups into smaller shards (small data sets: every reader needs one).

Batches. global batch G = micro-batch B x accumulation A x world size W; G must be a multiple of B x W.
The loss of a step is the mean over every supervised target of the global batch (token-weighted, the
same as one forward over all G sequences): each step first counts its targets on every rank (one small
all-reduce, N), then each micro-batch back-propagates its *summed* loss times W / N. DDP and FSDP
average gradients over the W ranks, so the gradient is exactly d(sum of all losses / N). With
--unit-rows 1 and the same G, 1 process and W processes see the same rows per step and compute the
same step (up to float summation order): tests/test_train.py checks it.

Parallelism. One process by default. Under torchrun: DDP (default; NCCL on GPU, gloo on CPU; no_sync
on all but the last micro-batch) or FSDP2 (--fsdp; torch.distributed.fsdp.fully_shard on each ViT
block, each LLM block, then the root: ZeRO-3-style sharding of parameters, gradients and AdamW state;
gradient sync only on the last micro-batch). Every rank runs the same collectives in the same order:
a micro-batch without images still runs the ViT and adapter on one blank image, its output times 0
added to the loss (so DDP sees every trainable parameter used, FSDP all-gathers the same units on all
ranks, and AdamW updates the same parameters whatever a rank's batch held).

Precision. bf16 autocast on GPU (parameters, gradients and AdamW state fp32; under FSDP also bf16
all-gathers with fp32 gradient reduction: MixedPrecisionPolicy), TF32 matmuls for what stays fp32;
fp32 on CPU. --compile compiles each transformer block (module.compile(), names unchanged);
--checkpointing recomputes each block in backward.

Checkpoints (model/checkpoint.py): DIR/step-N/ with model.safetensors, optimizer.safetensors and
trainer.json (step, tokens, config, param groups, per-rank data position and RNG states), written
atomically every --save-every steps and at the end; DIR/latest names the newest. Full state dicts
gathered to rank 0 (torch.distributed.checkpoint.state_dict, full_state_dict + cpu_offload) and
written there: DIR must be on a filesystem every rank sees. --keep-last N removes all but the newest N
step folders after each save. SIGTERM (preemption) and SIGINT (Ctrl-C, which reaches the DataLoader
workers too: they ignore it) stop at the next step boundary on every rank (the flag rides on the step's
all-reduce), write a checkpoint and exit 128 + the signal's number (143, 130); a SIGINT before training
starts exits 130 with one line. A run that starts removes what a killed one left half-written.

Resume (--resume): from DIR/latest: weights into the model before wrapping, optimizer state after
(set_optimizer_state_dict, sharded by FSDP), each rank's data position (dataset.load_state_dict) and
RNG states, the step, token count and elapsed time; DIR/metrics.jsonl is cut back to that step. Then
training continues exactly as an uninterrupted run would (same per-step losses and weights, in fp32):
the data stream is deterministic, the LR is a function of the step. It needs the same model, stage
fields (except --steps), seed, data files, world size and --num-workers; --micro-batch (so the
accumulation) and DDP / FSDP may change (full state dicts either way).
Without --resume, an output folder that already holds a checkpoint is an error (no silent overwrite);
with --resume and no checkpoint, training starts from scratch.

Output (rank 0): a tqdm bar (loss, tokens/s, lr); DIR/metrics.jsonl, one JSON line per step (step,
loss, lr, tokens (cumulative), step_tokens, targets, images, tokens_per_s, grad_norm, step_time,
elapsed); TensorBoard scalars in DIR/tensorboard when the tensorboard package is installed; a short
report at the end. Bad usage: one line `error: ...` on stderr, exit status 2, before any training.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob as globlib
import json
import math
import os
import signal
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from cli.usage import ArgumentParser, UsageError
from formats.files import exists, has_glob, is_dir, list_files
from model import checkpoint
from model.config import ADAPTER, LLM, PRESET_DEFAULTS, PRESETS, STAGES, VISION, ModelConfig, StageConfig
from model.llm import supervised_targets
from model.optim import lr_at, make_optimizer, set_lr
from model.qwen_vl import QwenVL

PROG = "python -m model.train"
PARTS = (VISION, ADAPTER, LLM)
STAGE_FIELDS = tuple(f.name for f in dataclasses.fields(StageConfig) if f.name != "stage")
MODEL_SECTIONS = ("vision", "adapter", "llm")
RUN_DEFAULTS = {
    "micro_batch": 1,
    "save_every": 500,
    "keep_last": None,
    "seed": 0,
    "num_workers": 2,
    "unit_rows": None,
    "stop_at": None,
    "compile": False,
    "checkpointing": False,
    "fsdp": False,
    "resume": False,
    "init_vision": None,
    "init_llm": None,
    "init_qwen_vl": None,
    "init": None,
}
# what may differ between a checkpoint's config and the run that resumes it
RESUME_MAY_CHANGE = ("steps", "micro_batch", "accumulation", "save_every", "keep_last", "stop_at", "compile", "checkpointing", "fsdp", "resume", "output")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Train Qwen-VL, one stage at a time (see the module docstring).",
                       epilog="REQUIRED: --stage, --data, --preset and --output, on the command line or in --config. "
                              "Options left out take the stage and model presets' values (model/config.py).")
    a = p.add_argument
    a("--stage", type=int, choices=sorted(STAGES), help="REQUIRED: 1, 2 or 3 (model/config.py STAGES)")
    a("--data", action="append", metavar="GLOB", help="REQUIRED: Parquet folder, file or glob (repeatable): stage 1 curated/, stages 2 and 3 packed/")
    a("--preset", help=f"REQUIRED: model size: {', '.join(PRESETS)}")
    a("--output", metavar="DIR", help="REQUIRED: checkpoints, metrics.jsonl, config.json")
    a("--config", metavar="FILE.toml", help="overrides of the presets (options override it in turn)")
    a("--resume", action="store_true", default=None, help="continue from DIR/latest")
    a("--init-vision", metavar="PATH", help="OpenCLIP checkpoint for the ViT (model/weights.py)")
    a("--init-llm", metavar="PATH", help="HF Qwen checkpoint folder for the LLM")
    a("--init-qwen-vl", metavar="PATH", help="HF Qwen-VL checkpoint folder for the whole model")
    a("--init", metavar="PATH", help="our own checkpoint for the whole model (a run folder or step-N): the previous stage's")
    a("--micro-batch", type=int, metavar="B", help="sequences per forward per process (default 1)")
    a("--global-batch", type=int, metavar="G", help="sequences per optimizer step, all processes")
    a("--steps", type=int, help="optimizer steps (the LR schedule's length)")
    a("--stop-at", type=int, metavar="STEP", help="stop after this step (checkpoint written), schedule unchanged")
    a("--lr", type=float, help="peak learning rate")
    a("--min-lr", type=float, help="learning rate at the end of the cosine schedule")
    a("--warmup-steps", type=int, help="linear warm-up steps before the cosine")
    a("--image-size", type=int, metavar="PX", help="ViT input side (224 in stage 1, 448 after)")
    a("--seq-len", type=int, metavar="T", help="tokens per sequence (stage 1 pads each pair to it; packed rows must have it)")
    a("--vit-layer-decay", type=float, metavar="D", help="0 = frozen ViT")
    a("--betas", type=float, nargs=2, metavar=("B1", "B2"), help="AdamW betas")
    a("--eps", type=float, help="AdamW epsilon")
    a("--weight-decay", type=float, help="AdamW weight decay")
    a("--grad-clip", type=float, help="max gradient norm (0: no clipping)")
    a("--trainable", help="comma-separated parts: vision, adapter, llm")
    a("--compile", action="store_true", default=None, help="torch.compile each transformer block")
    a("--checkpointing", action="store_true", default=None, help="activation checkpointing per block")
    a("--fsdp", action="store_true", default=None, help="FSDP2 instead of DDP under torchrun")
    a("--save-every", type=int, metavar="N", help="checkpoint every N steps (default 500) and at the end")
    a("--keep-last", type=int, metavar="N", help="keep only the newest N checkpoints (default: all)")
    a("--seed", type=int, help="model init and data order (default 0)")
    a("--num-workers", type=int, metavar="W", help="DataLoader workers per process (default 2)")
    a("--unit-rows", type=int, metavar="R", help="shard row groups into units of R rows (small data)")
    return p


# --- configuration ----------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    preset: str
    model: ModelConfig
    stage: StageConfig
    data: list[str]
    files: list[str]
    output: str
    world_size: int
    accumulation: int
    micro_batch: int
    save_every: int
    keep_last: int | None
    seed: int
    num_workers: int
    unit_rows: int | None
    stop_at: int | None
    compile: bool
    checkpointing: bool
    fsdp: bool
    resume: bool
    init_vision: str | None
    init_llm: str | None
    init_qwen_vl: str | None
    init: str | None
    config_file: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("notes", "model", "stage")}
        out["model"] = asdict(self.model)
        out["stage"] = asdict(self.stage)
        return json.loads(json.dumps(out))  # tuples -> lists


def read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--config {path}: {e}") from None


def data_files(specs: list[str]) -> list[str]:
    """Parquet files of each --data spec (a folder, a file, or a glob), sorted, duplicates dropped."""
    files: set[str] = set()
    for spec in specs:
        if has_glob(spec):
            if "://" in spec:
                folder, _, pattern = spec.rpartition("/")
                found = [f for f in list_files(folder, pattern) if f.endswith(".parquet")]
            else:
                found = []
                for match in globlib.glob(spec, recursive=True):
                    found += list_files(match, "*.parquet") if os.path.isdir(match) else [match] if match.endswith(".parquet") else []
        elif is_dir(spec):
            found = list_files(spec, "*.parquet")
        else:
            found = [spec] if exists(spec) else []
        if not found:
            raise UsageError(f"--data {spec}: no Parquet files match")
        files.update(found)
    return sorted(files)


def _number(name: str, value, kind):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise UsageError(f"{name} must be {'a number' if kind is float else 'an integer' if kind is int else kind.__name__}, not {value!r}")
    return value


def resolve(args: argparse.Namespace, world_size: int) -> RunConfig:
    """Presets <- TOML <- options, validated (UsageError on anything that cannot run)."""
    cli = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    toml = read_toml(args.config) if args.config else {}
    model_overrides = toml.pop("model", {})
    known = set(vars(args)) - {"config"}
    unknown = sorted(set(toml) - known)
    if unknown:
        raise UsageError(f"--config {args.config}: unknown key {unknown[0]!r} (keys are the options' names with underscores, and [model.vision|adapter|llm] tables)")
    if isinstance(toml.get("data"), str):
        toml["data"] = [toml["data"]]
    merged = {**PRESET_DEFAULTS.get(cli.get("preset", toml.get("preset")), {}), **toml, **cli}

    for name in ("stage", "data", "preset", "output"):
        if merged.get(name) is None:
            raise UsageError(f"{PROG}: --{name} is required (on the command line or in --config)")
    preset = merged["preset"]
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r} (presets: {', '.join(PRESETS)})")
    if merged["stage"] not in STAGES:
        raise UsageError(f"stage must be one of {', '.join(map(str, STAGES))}, not {merged['stage']!r}")

    # the model: preset, then [model.<part>] fields
    model = PRESETS[preset]
    if not isinstance(model_overrides, dict) or set(model_overrides) - set(MODEL_SECTIONS):
        raise UsageError(f"--config {args.config}: [model] takes only the tables {', '.join(f'[model.{s}]' for s in MODEL_SECTIONS)}")
    for section, values in model_overrides.items():
        sub = getattr(model, section)
        names = {f.name: f.type for f in dataclasses.fields(sub)}
        for key, value in values.items():
            if key not in names:
                raise UsageError(f"--config {args.config}: [model.{section}] has no field {key!r} (fields: {', '.join(names)})")
            values[key] = _number(f"model.{section}.{key}", value, float if names[key] in (float, "float") else int)
        model = dataclasses.replace(model, **{section: dataclasses.replace(sub, **values)})

    # the stage
    stage = STAGES[merged["stage"]]
    changes = {}
    for name in STAGE_FIELDS:
        if name not in merged:
            continue
        value = merged[name]
        if name == "trainable":
            parts = value.split(",") if isinstance(value, str) else value
            parts = tuple(p.strip() for p in parts if p.strip())
            bad = [p for p in parts if p not in PARTS]
            if bad or not parts:
                raise UsageError(f"--trainable: {bad[0] if bad else 'nothing'!r} is not a part (parts: {', '.join(PARTS)})")
            value = tuple(p for p in PARTS if p in parts)
        elif name == "betas":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise UsageError(f"betas must be two numbers, not {value!r}")
            value = tuple(_number("betas", v, float) for v in value)
        else:
            value = _number(f"--{name.replace('_', '-')}", value, type(getattr(stage, name)))
        changes[name] = value
    stage = dataclasses.replace(stage, **changes)
    _check_stage(stage, model)
    notes = []
    if stage.warmup_steps >= stage.steps:
        notes.append(f"warm-up ({stage.warmup_steps} steps) is not shorter than the run ({stage.steps} steps): "
                     f"the learning rate never reaches its peak {stage.lr:g}")
        print(f"warning: {notes[-1]}", file=sys.stderr)

    run = {k: merged.get(k, default) for k, default in RUN_DEFAULTS.items()}
    for name in ("micro_batch", "save_every", "keep_last", "num_workers", "seed", "unit_rows", "stop_at"):
        if run[name] is not None:
            run[name] = _number(f"--{name.replace('_', '-')}", run[name], int)
    for name, low in (("micro_batch", 1), ("save_every", 1), ("keep_last", 1), ("num_workers", 0), ("seed", 0), ("unit_rows", 1), ("stop_at", 1)):
        if run[name] is not None and run[name] < low:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, not {run[name]}")
    per_step = run["micro_batch"] * world_size
    if stage.global_batch % per_step:
        raise UsageError(
            f"global batch {stage.global_batch} is not a multiple of micro-batch {run['micro_batch']} x "
            f"{world_size} process(es) = {per_step}"
        )
    inits = [k for k in ("init_vision", "init_llm", "init_qwen_vl", "init") if run[k]]
    whole = [k for k in ("init_qwen_vl", "init") if run[k]]
    if whole and len(inits) > 1:
        raise UsageError(f"--{whole[0].replace('_', '-')} loads the whole model: not with another --init-* option")
    for k in inits:
        if not os.path.exists(run[k]):
            raise UsageError(f"--{k.replace('_', '-')} {run[k]}: no such file or folder")
    if run["fsdp"] and world_size == 1:
        run["fsdp"] = False  # nothing to shard: one process trains the plain model

    specs = merged["data"]
    if isinstance(specs, str) or not all(isinstance(s, str) for s in specs):
        raise UsageError(f"data must be a path or a list of paths, not {specs!r}")
    return RunConfig(
        preset=preset,
        model=model,
        stage=stage,
        data=list(specs),
        files=data_files(specs),
        output=str(merged["output"]),
        world_size=world_size,
        accumulation=stage.global_batch // per_step,
        config_file=args.config,
        notes=notes,
        **run,
    )


def _check_stage(s: StageConfig, model: ModelConfig) -> None:
    if s.steps < 1:
        raise UsageError(f"--steps must be >= 1, not {s.steps}")
    if s.global_batch < 1:
        raise UsageError(f"--global-batch must be >= 1, not {s.global_batch}")
    if s.warmup_steps < 0:
        raise UsageError(f"--warmup-steps must be >= 0, not {s.warmup_steps}")
    if not 0 < s.lr or not 0 <= s.min_lr <= s.lr:
        raise UsageError(f"learning rates must satisfy 0 <= min_lr <= lr and lr > 0, not lr {s.lr}, min_lr {s.min_lr}")
    if not 0 <= s.vit_layer_decay <= 1:
        raise UsageError(f"--vit-layer-decay must be in [0, 1], not {s.vit_layer_decay}")
    if VISION in s.trainable and s.vit_layer_decay == 0:
        raise UsageError("--vit-layer-decay 0 freezes the ViT, but the stage trains it (trainable includes vision)")
    if s.image_size % model.vision.patch:
        raise UsageError(f"--image-size {s.image_size} is not a multiple of the patch size {model.vision.patch}")
    if not all(0 <= b < 1 for b in s.betas) or s.eps <= 0 or s.weight_decay < 0 or s.grad_clip < 0:
        raise UsageError(f"bad AdamW settings: betas {s.betas}, eps {s.eps}, weight_decay {s.weight_decay}, grad_clip {s.grad_clip}")
    if s.seq_len < 2:
        raise UsageError(f"--seq-len must be >= 2, not {s.seq_len}")


def check_resume(saved: dict, cfg: RunConfig, where: Path) -> list[str]:
    """UsageError if the checkpoint's config cannot continue as `cfg`; notes on what changed that may."""
    now = cfg.to_json()
    notes, wrong = [], []
    for key in sorted(set(saved) | set(now)):
        if key in ("notes",) or saved.get(key) == now.get(key):
            continue
        if key == "stage":
            for k in sorted(set(saved["stage"]) | set(now["stage"])):
                a, b = saved["stage"].get(k), now["stage"].get(k)
                if a != b:
                    (notes if k in RESUME_MAY_CHANGE else wrong).append(f"stage.{k} {a!r} -> {b!r}")
        elif key in RESUME_MAY_CHANGE or key in ("config_file", "data", "init_vision", "init_llm", "init_qwen_vl", "init"):
            if key not in ("resume",):
                notes.append(f"{key} {saved.get(key)!r} -> {now.get(key)!r}")
        else:
            wrong.append(f"{key} {saved.get(key)!r} -> {now.get(key)!r}" if key != "model" else "the model config")
    if wrong:
        raise UsageError(f"cannot resume from {where}: it was trained with another {wrong[0]}" + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))
    return notes


# --- the model as trained ---------------------------------------------------------------------------------


class TrainModel(QwenVL):
    """QwenVL whose forward returns the *summed* loss of a micro-batch, and which runs the image path even
    when the micro-batch has no image (one blank image, its features times 0 added to the loss): so every
    rank uses every trainable parameter and runs the same FSDP collectives in the same order (the blank
    image goes first, where a real batch's images would: before the LLM blocks)."""

    def __init__(self, cfg: ModelConfig, image_size: int):
        super().__init__(cfg)
        self.image_size = image_size

    def forward(self, input_ids, position_ids, doc_ids, loss_mask, images=None):
        if images is None or images.shape[0] == 0:
            blank = torch.zeros(1, 3, self.image_size, self.image_size, device=input_ids.device)
            unused = self.image_features(blank).float().sum() * 0.0
            return super().forward(input_ids, position_ids, doc_ids, loss_mask, None, reduction="sum") + unused
        return super().forward(input_ids, position_ids, doc_ids, loss_mask, images, reduction="sum")


def init_model(cfg: RunConfig) -> TrainModel:
    """The model as a fresh run starts it: seeded init, the --init-* weights, the stage's parts trainable."""
    torch.manual_seed(cfg.seed)
    model = TrainModel(cfg.model, cfg.stage.image_size)
    model.train_only(cfg.stage.trainable)
    return model


def load_init_weights(model: TrainModel, cfg: RunConfig) -> list[str]:
    """--init / --init-vision / --init-llm / --init-qwen-vl through model/weights.py; the load reports."""
    wanted = [(k, getattr(cfg, k)) for k in ("init", "init_qwen_vl", "init_vision", "init_llm") if getattr(cfg, k)]
    if not wanted:
        return []
    from model import weights

    loaders = {"init": "load_own", "init_qwen_vl": "load_qwen_vl", "init_vision": "load_openclip_vision", "init_llm": "load_hf_qwen_llm"}
    reports = []
    for key, path in wanted:
        loader = getattr(weights, loaders[key], None)
        if loader is None:
            raise UsageError(f"--{key.replace('_', '-')}: model/weights.py has no {loaders[key]}")
        try:
            reports.append(str(loader(model, path)))
        except (FileNotFoundError, ValueError) as e:  # weights.CheckpointMismatch is a ValueError
            raise UsageError(f"--{key.replace('_', '-')}: {e}") from None
    model.train_only(cfg.stage.trainable)  # loaders may replace tensors; requires_grad as the stage says
    return reports


# --- distributed ------------------------------------------------------------------------------------------


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


def wrap(model: TrainModel, cfg: RunConfig, d: Dist) -> torch.nn.Module:
    """Compile / checkpointing on the blocks, then DDP or FSDP2 under torchrun (the model itself otherwise)."""
    model.set_checkpointing(cfg.checkpointing)
    blocks = list(model.vision.trunk.transformer.resblocks) + list(model.llm.h)
    if cfg.compile:
        for block in blocks:
            block.compile()
    if not d.on:
        return model
    if cfg.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kwargs = {}
        if d.device.type == "cuda":
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        return model
    import inspect

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


# --- checkpoints ------------------------------------------------------------------------------------------


def save_checkpoint(cfg: RunConfig, d: Dist, wrapped, optimizer, step: int, progress: dict, data_state: dict) -> Path:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(wrapped, optimizer, options=options)
    mine = {"data": data_state, "rng": checkpoint.rng_state()}
    ranks = [None] * d.world if d.main else None
    if d.on:
        dist.gather_object(mine, ranks, dst=0)
    else:
        ranks = [mine]
    path = checkpoint.step_dir(cfg.output, step)
    if d.main:
        trainer = {**progress, "lr": lr_at(step, cfg.stage), "config": cfg.to_json(), "ranks": ranks}
        path = checkpoint.write(cfg.output, step, model_state, optim_state, trainer)
        if cfg.keep_last is not None:
            checkpoint.prune(cfg.output, cfg.keep_last)
    if d.on:
        dist.barrier()
    return path


def load_optimizer(wrapped, optimizer, optim_state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(wrapped, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
    for group in optimizer.param_groups:  # the loader hands param-group tuples back as lists
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])


# --- metrics ----------------------------------------------------------------------------------------------


class Metrics:
    """DIR/metrics.jsonl (one line per step, flushed) and TensorBoard when installed; rank 0 only."""

    def __init__(self, output: str, resume_step: int | None, enabled: bool):
        self.enabled = enabled
        self.file = self.tb = None
        if not enabled:
            return
        path = Path(output) / "metrics.jsonl"
        if resume_step is not None and path.exists():  # drop what the interrupted run logged after its checkpoint
            kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= resume_step]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
        elif path.exists():
            path.unlink()
        self.file = open(path, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tb = SummaryWriter(str(Path(output) / "tensorboard"))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key in ("loss", "lr", "tokens_per_s", "grad_norm"):
                self.tb.add_scalar(key, record[key], record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


# --- training ---------------------------------------------------------------------------------------------


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Stop:
    """SIGTERM or SIGINT -> stop at the next step boundary (all ranks agree through the step's all-reduce);
    `signal` is the first one received. Rank 0 says so on stderr at once."""

    def __init__(self, main: bool):
        self.main = main
        self.signal: signal.Signals | None = None
        self.previous = {}

    def __enter__(self):
        try:
            self.previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        except ValueError:  # not the main thread
            self.previous = {}
        return self

    def _handle(self, signum, frame):
        if self.signal is None and self.main:
            print(f"\n{signal.Signals(signum).name}: stopping at the next step boundary, then writing a checkpoint", file=sys.stderr)
        self.signal = self.signal or signal.Signals(signum)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def ignore_sigint(worker_id: int) -> None:
    """DataLoader worker init: Ctrl-C reaches the whole process group, and the trainer, not its workers,
    decides when to stop (a worker killed by it would fail the next batch)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


BATCH_KEYS = ("input_ids", "position_ids", "doc_ids", "loss_mask", "images")


def step_counts(micro: list[dict], d: "Dist", received: signal.Signals | None = None) -> tuple[float, float, signal.Signals | None]:
    """(supervised targets, images, stop signal) of a step's micro-batches, summed over all ranks: one
    all-reduce, before any forward (the loss divisor must be known before the first backward). Each rank
    votes with the stop signal it received; the result is the same on every rank: SIGTERM if any rank got
    it, else SIGINT if any did, else None."""
    targets = sum(supervised_targets(b["loss_mask"], b["doc_ids"]) for b in micro)
    images = sum(int(b["images"].shape[0]) for b in micro)
    n_targets, n_images, *votes = all_reduce([targets, images, *(float(received == s) for s in STOP_SIGNALS)], d)
    return n_targets, n_images, next((s for s, v in zip(STOP_SIGNALS, votes) if v), None)


def run_step(wrapped, optimizer, trainable, micro: list[dict], n_targets: float, lr: float, cfg: RunConfig, d: "Dist", autocast) -> tuple[float, float]:
    """One optimizer step over this rank's micro-batches -> (the global batch's mean loss, the gradient norm).

    Each micro-batch's summed loss is back-propagated times world / n_targets (DDP / FSDP average over
    the ranks, so the gradient is that of the global token-weighted mean); gradients sync only on the
    last micro-batch; then clipping, AdamW, and one all-reduce of the loss sums."""
    set_lr(optimizer, lr)
    scale = d.world / max(n_targets, 1.0)
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
    for i, b in enumerate(micro):
        last = i == len(micro) - 1
        if cfg.fsdp and d.on:
            wrapped.set_requires_gradient_sync(last)
        sync = wrapped.no_sync() if d.on and not cfg.fsdp and not last else contextlib.nullcontext()
        tensors = [b[k].to(d.device, non_blocking=True) for k in BATCH_KEYS]
        with sync:
            with autocast:
                micro_loss = wrapped(*tensors)
            (micro_loss * scale).backward()
        loss_sum += micro_loss.detach().double()
    norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.stage.grad_clip if cfg.stage.grad_clip > 0 else math.inf)
    if hasattr(norm, "full_tensor"):  # FSDP: a replicated DTensor
        norm = norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    (total,) = all_reduce([loss_sum.item()], d)
    return total / max(n_targets, 1.0), float(norm)


def train(cfg: RunConfig) -> dict:
    """Run the configured training; returns the report's figures (rank 0's view)."""
    from torch.utils.data import DataLoader

    from model.data import collate, stage_stream

    output = Path(cfg.output)
    resume_from = None
    if output.exists():
        try:
            resume_from = checkpoint.latest(output)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if resume_from is not None and not cfg.resume:
        raise UsageError(f"{output} already holds checkpoints (latest {resume_from.name}): pass --resume to continue, or another --output")
    record = None
    if resume_from is not None:
        try:
            record = checkpoint.read_trainer(resume_from)
        except ValueError as e:
            raise UsageError(str(e)) from None
        cfg.notes += [f"changed since {resume_from.name}: {n}" for n in check_resume(record["config"], cfg, resume_from)]
        if len(record["ranks"]) != cfg.world_size:
            raise UsageError(f"cannot resume from {resume_from}: saved by {len(record['ranks'])} process(es), this run has {cfg.world_size}")
    elif cfg.resume:
        cfg.notes.append(f"--resume: no checkpoint in {output}, starting from scratch")

    d = setup_distributed()
    try:
        dataset = stage_stream(cfg.stage, cfg.files, seed=cfg.seed, rank=d.rank, world_size=d.world, unit_rows=cfg.unit_rows)
        readers = d.world * max(cfg.num_workers, 1)
        if len(dataset.units) < readers:
            raise ValueError(
                f"{len(dataset.units)} data shards (row groups, or --unit-rows slices) for {readers} readers "
                f"({d.world} process(es) x {max(cfg.num_workers, 1)} worker(s)): pass a smaller --unit-rows or fewer --num-workers"
            )
        if record is not None:
            dataset.load_state_dict(record["ranks"][d.rank]["data"])
    except ValueError as e:  # wrong columns, too few shards, a data state that does not fit
        raise UsageError(str(e)) from None

    model = init_model(cfg)
    start_step, progress = 0, {"tokens": 0, "elapsed": 0.0}
    if record is None:
        cfg.notes += load_init_weights(model, cfg)
        optim_state = None
    else:
        model_state, optim_state, _ = checkpoint.read(resume_from)
        model.load_state_dict(model_state, strict=True)
        start_step = record["step"]
        progress = {"tokens": record["tokens"], "elapsed": record["elapsed"]}
        if any(getattr(cfg, k) for k in ("init_vision", "init_llm", "init_qwen_vl", "init")):
            cfg.notes.append(f"--init-* ignored: the weights come from {resume_from}")
    model.to(d.device)
    wrapped = wrap(model, cfg, d)
    cuda = d.device.type == "cuda"
    set_precision(d.device)
    optimizer = make_optimizer(model, cfg.stage, fused=True if cuda and not cfg.fsdp else None)
    if optim_state is not None:
        load_optimizer(wrapped, optimizer, optim_state)
        checkpoint.set_rng_state(record["ranks"][d.rank]["rng"])
    trainable = [p for p in model.parameters() if p.requires_grad]

    if d.main:
        output.mkdir(parents=True, exist_ok=True)
        cfg.notes += [f"removed {name}, left half-written by a killed run" for name in checkpoint.remove_partial(output)]
        (output / "config.json").write_text(json.dumps(cfg.to_json(), indent=1) + "\n")
    metrics = Metrics(cfg.output, start_step if record is not None else None, d.main)
    loader = DataLoader(
        dataset,
        batch_size=cfg.micro_batch,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        pin_memory=cuda,
        prefetch_factor=4 if cfg.num_workers else None,
        worker_init_fn=ignore_sigint,
    )
    batches = iter(loader)
    data_state = dataset.state_dict()
    end = cfg.stage.steps if cfg.stop_at is None else min(cfg.stage.steps, cfg.stop_at)
    autocast = autocast_for(d.device)
    tokens_per_sequence = cfg.stage.seq_len
    from tqdm import tqdm

    bar = tqdm(total=cfg.stage.steps, initial=start_step, disable=not d.main, desc=f"stage {cfg.stage.stage}", dynamic_ncols=True)
    step, loss, first_step, last_saved, stopped, run_start = start_step, float("nan"), start_step + 1, None, None, time.perf_counter()
    model.train()
    with _Stop(d.main) as stop:
        while step < end:
            t0 = time.perf_counter()
            micro = [next(batches) for _ in range(cfg.accumulation)]
            n_targets, n_images, stopped = step_counts(micro, d, stop.signal)
            if stopped:
                break
            step += 1
            lr = lr_at(step, cfg.stage)
            loss, grad_norm = run_step(wrapped, optimizer, trainable, micro, n_targets, lr, cfg, d, autocast)
            for b in micro:
                dataset.consumed(b)
            data_state = dataset.state_dict()
            dt = time.perf_counter() - t0
            step_tokens = cfg.stage.global_batch * tokens_per_sequence
            progress["tokens"] += step_tokens
            progress["elapsed"] += dt
            metrics.log(
                {
                    "step": step,
                    "loss": loss,
                    "lr": lr,
                    "tokens": progress["tokens"],
                    "step_tokens": step_tokens,
                    "targets": int(n_targets),
                    "images": int(n_images),
                    "tokens_per_s": step_tokens / dt,
                    "grad_norm": grad_norm,
                    "step_time": dt,
                    "elapsed": progress["elapsed"],
                }
            )
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{step_tokens / dt:,.0f}", lr=f"{lr:.2e}", refresh=False)
            bar.update(1)
            if step % cfg.save_every == 0 or step == end:
                last_saved = save_checkpoint(cfg, d, wrapped, optimizer, step, progress, data_state)
        if stopped and step > start_step and (last_saved is None or last_saved.name != f"step-{step}"):
            last_saved = save_checkpoint(cfg, d, wrapped, optimizer, step, progress, data_state)
    bar.close()
    metrics.close()
    wall = time.perf_counter() - run_start
    if last_saved is None and resume_from is not None:
        last_saved = resume_from
    if d.on:
        dist.destroy_process_group()
    return {
        "stage": cfg.stage.stage,
        "preset": cfg.preset,
        "first_step": first_step,
        "step": step,
        "steps": cfg.stage.steps,
        "trained": step - start_step,
        "tokens": progress["tokens"],
        "run_tokens": (step - start_step) * cfg.stage.global_batch * tokens_per_sequence,
        "wall": wall,
        "loss": loss,
        "checkpoint": str(last_saved) if last_saved is not None else None,
        "stopped": stopped.name if stopped else None,
        "world": d.world,
        "mode": ("FSDP2" if cfg.fsdp else "DDP") if d.on else "single process",
        "device": f"{d.device.type} {'bf16 autocast' if cuda else 'fp32'}",
        "main": d.main,
        "notes": cfg.notes,
    }


def format_report(r: dict) -> str:
    lines = [f"note: {n}" for n in r["notes"]]
    if r["trained"] == 0 and not r["stopped"]:
        lines.append(f"nothing to train: already at step {r['step']} of {r['steps']} ({r['checkpoint']})")
        return "\n".join(lines)
    if r["trained"] == 0:
        lines.append(f"stopped by {r['stopped']} before a step; checkpoint: {r['checkpoint']} (continue with --resume)")
        return "\n".join(lines)
    rate = r["run_tokens"] / r["wall"] if r["wall"] > 0 else 0.0
    how = f"stopped by {r['stopped']} at" if r["stopped"] else "at"
    lines += [
        f"stage {r['stage']}, preset {r['preset']}: steps {r['first_step']}-{r['step']} ({r['trained']} steps, {how} step {r['step']} "
        f"of {r['steps']}) on {r['world']} process(es), {r['mode']}, {r['device']}",
        f"tokens {r['run_tokens']:,} this run ({r['tokens']:,} in all) in {r['wall']:.1f} s: {rate:,.0f} tokens/s; final loss {r['loss']:.4f}",
        f"checkpoint: {r['checkpoint']}" + ("" if r["step"] >= r["steps"] else " (continue with --resume)"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        cfg = resolve(args, world_from_env())
        report = train(cfg)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        return 2
    except KeyboardInterrupt:  # SIGINT before the training loop handles it: nothing of this run to keep
        print("stopped by SIGINT before training started", file=sys.stderr)
        return 128 + signal.SIGINT
    if report["main"]:
        print(format_report(report))
    return 128 + signal.Signals[report["stopped"]] if report["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
