"""The trainer's run configuration: the command line, the TOML file, the presets, resolved and
validated in one pass into a RunConfig (model/train.py runs it).

The stage preset (model/config.py STAGES) and the model preset (model/config.py, of a family that
model/architectures.py registers: `model_presets`) give every default; a TOML file
(--config) overrides them, and options override the TOML. The TOML takes any option by its name with
underscores at the top level (`lr = 1e-4`, `betas = [0.9, 0.98]`, `trainable = ["adapter", "llm"]`,
`data = "packed/*.parquet"`, ...) and model fields in one table per part of the model config
([model.vision], [model.adapter], [model.llm] for Qwen-VL: `[model.llm]` then `layers = 4`). `--steps`
is the schedule's length (the cosine ends there); `--stop-at K` stops after step K (a checkpoint is
written) without changing the schedule, to continue later with --resume. The resolved config goes to
DIR/config.json and into every checkpoint; `check_resume` compares a checkpoint's with the run's.
Bad usage raises UsageError (one line; the command prints `error: ...` and exits 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob as globlib
import json
import os
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cli.usage import ArgumentParser, UsageError
from formats.files import exists, has_glob, is_dir, list_files
from model.architectures import for_model, model_presets
from model.config import PRESET_DEFAULTS, STAGES, ModelConfig, StageConfig

PROG = "python -m model.train"
STAGE_FIELDS = tuple(f.name for f in dataclasses.fields(StageConfig) if f.name != "stage")
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
    **{name: None for name in ("init_vision", "init_llm", "init_qwen_vl", "init_qwen2_vl", "init")},
}
INITS = ("init", "init_qwen_vl", "init_qwen2_vl", "init_vision", "init_llm")  # the --init-* options
WHOLE_MODEL_INITS = ("init", "init_qwen_vl", "init_qwen2_vl")  # each loads every weight of the model
# what may differ between a checkpoint's config and the run that resumes it
RESUME_MAY_CHANGE = ("steps", "micro_batch", "accumulation", "save_every", "keep_last", "stop_at", "compile", "checkpointing", "fsdp", "resume", "output",
                     "world_size", "num_workers")  # the checkpoint reshards on load (model/train_checkpoint.py, model/data.py reshard_state)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Train Qwen-VL, one stage at a time (see the module docstring).",
                       epilog="REQUIRED: --stage, --data, --preset and --output, on the command line or in --config. "
                              "Options left out take the stage and model presets' values (model/config.py).")
    a = p.add_argument
    a("--stage", type=int, choices=sorted(STAGES), help="REQUIRED: 1, 2 or 3 (model/config.py STAGES, QWEN2_VL_STAGES)")
    a("--data", action="append", metavar="GLOB", help="REQUIRED: Parquet folder, file or glob (repeatable): stage 1 curated/, stages 2 and 3 packed/")
    a("--preset", help=f"REQUIRED: model size: {', '.join(model_presets())}")
    a("--output", metavar="DIR", help="REQUIRED: checkpoints, metrics.jsonl, config.json")
    a("--config", metavar="FILE.toml", help="overrides of the presets (options override it in turn)")
    a("--resume", action="store_true", default=None, help="continue from DIR/latest")
    a("--init-vision", metavar="PATH", help="OpenCLIP checkpoint for the ViT (model/weights.py)")
    a("--init-llm", metavar="PATH", help="HF Qwen checkpoint folder for the LLM")
    a("--init-qwen-vl", metavar="PATH", help="HF Qwen-VL checkpoint folder for the whole model")
    a("--init-qwen2-vl", metavar="PATH", help="HF Qwen2-VL checkpoint folder (the released layout) for the whole model")
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
    a("--trainable", help="comma-separated parts: vision, adapter, llm (Qwen2-VL: vision, llm)")
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
    init_qwen2_vl: str | None
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
    presets = model_presets()
    if preset not in presets:
        raise UsageError(f"unknown preset {preset!r} (presets: {', '.join(presets)})")
    if merged["stage"] not in STAGES:
        raise UsageError(f"stage must be one of {', '.join(map(str, STAGES))}, not {merged['stage']!r}")

    # the model: preset, then [model.<part>] fields
    model = presets[preset]
    arch = for_model(model)
    sections = [f.name for f in dataclasses.fields(model)]
    if not isinstance(model_overrides, dict) or set(model_overrides) - set(sections):
        raise UsageError(f"--config {args.config}: [model] takes only the tables {', '.join(f'[model.{s}]' for s in sections)}")
    for section, values in model_overrides.items():
        sub = getattr(model, section)
        names = {f.name: f.type for f in dataclasses.fields(sub)}
        for key, value in values.items():
            if key not in names:
                raise UsageError(f"--config {args.config}: [model.{section}] has no field {key!r} (fields: {', '.join(names)})")
            values[key] = _number(f"model.{section}.{key}", value, float if names[key] in (float, "float") else int)
        model = dataclasses.replace(model, **{section: dataclasses.replace(sub, **values)})

    # the stage
    stage = arch.stages[merged["stage"]]
    changes = {}
    for name in STAGE_FIELDS:
        if name not in merged:
            continue
        value = merged[name]
        if name == "trainable":
            parts = value.split(",") if isinstance(value, str) else value
            parts = tuple(p.strip() for p in parts if p.strip())
            bad = [p for p in parts if p not in arch.parts]
            if bad or not parts:
                raise UsageError(f"--trainable: {bad[0] if bad else 'nothing'!r} is not a part (parts: {', '.join(arch.parts)})")
            value = tuple(p for p in arch.parts if p in parts)
        elif name == "betas":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise UsageError(f"betas must be two numbers, not {value!r}")
            value = tuple(_number("betas", v, float) for v in value)
        else:
            value = _number(f"--{name.replace('_', '-')}", value, type(getattr(stage, name)))
        changes[name] = value
    stage = dataclasses.replace(stage, **changes)
    _check_stage(stage, model, arch)
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
    inits = [k for k in INITS if run[k]]
    whole = [k for k in WHOLE_MODEL_INITS if run[k]]
    if whole and len(inits) > 1:
        raise UsageError(f"--{whole[0].replace('_', '-')} loads the whole model: not with another --init-* option")
    for k in inits:
        if k not in arch.inits:
            raise UsageError(f"--{k.replace('_', '-')}: not for a {arch.name} model (it takes {', '.join('--' + i.replace('_', '-') for i in arch.inits)})")
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


def _check_stage(s: StageConfig, model: ModelConfig, arch) -> None:
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
    problem = arch.check_stage(s, model)  # the model family's own (Qwen-VL: a frozen ViT, the patch size)
    if problem:
        raise UsageError(problem)
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
        elif key in RESUME_MAY_CHANGE or key in ("config_file", "data", *INITS):
            if key not in ("resume",):
                notes.append(f"{key} {saved.get(key)!r} -> {now.get(key)!r}")
        else:
            wrong.append(f"{key} {saved.get(key)!r} -> {now.get(key)!r}" if key != "model" else "the model config")
    if wrong:
        raise UsageError(f"cannot resume from {where}: it was trained with another {wrong[0]}" + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))
    return notes


