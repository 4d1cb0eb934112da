"""Train a vision-language model, one stage at a time, on the Parquet the pipelines write: the loop.

    python -m model.train --stage {1,2,3} --data GLOB --preset {tiny,small,qwen-vl} --output DIR
        [--steps N] [--resume] [--init PATH] [--init-vision PATH] [--init-llm PATH] [--init-qwen-vl PATH]
        [--micro-batch B] [--global-batch G] [--lr LR] [--min-lr LR] [--warmup-steps N]
        [--image-size PX] [--seq-len T] [--vit-layer-decay D] [--betas B1 B2] [--eps E]
        [--weight-decay W] [--grad-clip C] [--trainable vision,adapter,llm]
        [--config FILE.toml] [--compile] [--checkpointing] [--fsdp] [--save-every N] [--keep-last N]
        [--stop-at STEP] [--seed S] [--num-workers W] [--unit-rows R]
    torchrun --nproc_per_node 8 -m model.train ...      (DDP; add --fsdp for FSDP2)

The trainer, by responsibility (torchtitan's split):
    model/train_config.py      the command line, the TOML file and the presets -> a validated RunConfig
    model/architectures.py     the model plug-in of each family (Qwen-VL today): how to build the model
                               as trained, its blocks, its --init-* loaders, its data stream and collate
    model/parallel.py          processes and devices; compile, activation checkpointing, FSDP2 / DDP,
                               applied in one place
    model/train_checkpoint.py  saving and resuming a run (model/checkpoint.py: the on-disk format)
    model/train.py             this file: the loop, metrics, signals, the report, main

Data. --data is a folder of *.parquet, a file, or a glob (repeatable): stage 1 reads curated/, stages 2
and 3 packed/ (the plug-in's stream: model/data.py `stage_stream` for Qwen-VL), endless, sharded over
ranks x DataLoader workers, seeded by --seed. --unit-rows cuts row groups into smaller shards (small
data sets: every reader needs one). Rank 0 alone lists the row groups (from packed/_manifest.json where
the pipeline wrote one, else from the footers) and broadcasts the list.

Batches. global batch G = micro-batch B x accumulation A x world size W; G must be a multiple of B x W.
The loss of a step is the mean over every supervised target of the global batch (token-weighted, the
same as one forward over all G sequences): each step first counts its targets on every rank (one small
all-reduce, N), then each micro-batch back-propagates its *summed* loss times W / N. DDP and FSDP
average gradients over the W ranks, so the gradient is exactly d(sum of all losses / N). With
--unit-rows 1 and the same G, 1 process and W processes see the same rows per step and compute the
same step (up to float summation order): tests/test_train.py checks it. Every rank runs the same
collectives in the same order (the plug-in's model runs its whole graph whatever the batch holds).

Precision. bf16 autocast on GPU (parameters, gradients and AdamW state fp32; under FSDP also bf16
all-gathers with fp32 gradient reduction), TF32 matmuls for what stays fp32; fp32 on CPU. --compile
compiles each block (module.compile(), names unchanged); --checkpointing recomputes each block in
backward (model/parallel.py).

Checkpoints (model/checkpoint.py, model/train_checkpoint.py): DIR/step-N/ with model/ and optimizer/
(sharded safetensors written by torch.distributed.checkpoint: each rank writes its own shards, nothing
is gathered) and trainer.json (step, tokens, config, param groups, per-rank data position and RNG
states), written into DIR/step-N.tmp and renamed by rank 0 after a barrier, every --save-every steps
and at the end; DIR/latest names the newest complete one. DIR must be on a filesystem every rank sees.
--keep-last N removes all but the newest N step folders after each save. SIGTERM (preemption) and
SIGINT (Ctrl-C, which reaches the DataLoader workers too: they ignore it) stop at the next step
boundary on every rank (the flag rides on the step's all-reduce), write a checkpoint and exit 128 + the
signal's number (143, 130); a SIGINT before training starts exits 130 with one line. A run that starts
removes what a killed one left half-written.

Resume (--resume): from DIR/latest. The model is built on the meta device, sharded (FSDP2) and
materialised, then filled from the checkpoint's shards (each rank reads only the slices it holds), the
optimizer state likewise; each rank's data position (dataset.load_state_dict) and RNG states, the
step, token count and elapsed time are restored; DIR/metrics.jsonl is cut back to that step. Then
training continues exactly as an uninterrupted run would (same per-step losses and weights, in fp32):
the data stream is deterministic, the LR is a function of the step. It needs the same model, stage
fields (except --steps), seed and data files; --micro-batch (so the accumulation), DDP / FSDP, the
number of processes and --num-workers may change (the tensors reshard on load; the data position
is exact when every reader stood at the same place, as with --unit-rows 1, and otherwise re-reads the
few units some readers had started: a note says how many). A checkpoint of the previous format
(qwen-vl-train-checkpoint/1, one full model.safetensors) does not resume (a one-line error); --init
takes its weights. Without --resume, an output folder that already holds a checkpoint is an error (no
silent overwrite); with --resume and no checkpoint, training starts from scratch. A fresh run builds
the seeded model in full on every rank (the seed gives every rank the same weights), then shards it.

Output (rank 0): a tqdm bar (loss, tokens/s, lr); DIR/metrics.jsonl, one JSON line per step (step,
loss, lr, tokens (cumulative), step_tokens, targets, images, tokens_per_s, grad_norm, step_time,
elapsed); TensorBoard scalars in DIR/tensorboard when the tensorboard package is installed; a short
report at the end. Bad usage: one line `error: ...` on stderr, exit status 2, before any training.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from cli.usage import UsageError
from model import checkpoint, train_checkpoint
from model.architectures import TrainModel, for_model  # noqa: F401  (TrainModel: the Qwen-VL model as trained)
from model.llm import supervised_targets
from model.optim import lr_at, make_optimizer, set_lr
from model.parallel import Dist, all_reduce, autocast_for, parallelize, set_precision, setup_distributed, world_from_env
from model.train_checkpoint import set_optimizer as load_optimizer  # noqa: F401  (a full optimizer state dict in)
from model.train_config import INITS, PROG, RunConfig, build_parser, check_resume, data_files, resolve  # noqa: F401


# --- the model --------------------------------------------------------------------------------------------


def init_model(cfg: RunConfig) -> torch.nn.Module:
    """The model as a fresh run starts it: seeded init, the stage's parts trainable."""
    torch.manual_seed(cfg.seed)
    return for_model(cfg.model).build(cfg.model, cfg.stage)


def load_init_weights(model: torch.nn.Module, cfg: RunConfig) -> list[str]:
    """The --init-* weights through the plug-in's loaders; the loads' reports."""
    arch = for_model(cfg.model)
    wanted = [(k, getattr(cfg, k)) for k in INITS if getattr(cfg, k)]
    reports = []
    for key, path in wanted:
        try:
            reports.append(str(arch.inits[key](model, path)))
        except (FileNotFoundError, ValueError) as e:  # weights.CheckpointMismatch is a ValueError
            raise UsageError(f"--{key.replace('_', '-')}: {e}") from None
    if wanted:
        model.train_only(cfg.stage.trainable)  # loaders may replace tensors; requires_grad as the stage says
    return reports


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


def step_counts(micro: list[dict], d: Dist, received: signal.Signals | None = None, count_images=None) -> tuple[float, float, signal.Signals | None]:
    """(supervised targets, images, stop signal) of a step's micro-batches, summed over all ranks: one
    all-reduce, before any forward (the loss divisor must be known before the first backward). Each rank
    votes with the stop signal it received; the result is the same on every rank: SIGTERM if any rank got
    it, else SIGINT if any did, else None."""
    count_images = count_images or (lambda b: int(b["images"].shape[0]))
    targets = sum(supervised_targets(b["loss_mask"], b["doc_ids"]) for b in micro)
    images = sum(count_images(b) for b in micro)
    n_targets, n_images, *votes = all_reduce([targets, images, *(float(received == s) for s in STOP_SIGNALS)], d)
    return n_targets, n_images, next((s for s, v in zip(STOP_SIGNALS, votes) if v), None)


def run_step(wrapped, optimizer, trainable, micro: list[dict], n_targets: float, lr: float, cfg: RunConfig, d: Dist, autocast) -> tuple[float, float]:
    """One optimizer step over this rank's micro-batches -> (the global batch's mean loss, the gradient norm).

    Each micro-batch's summed loss is back-propagated times world / n_targets (DDP / FSDP average over
    the ranks, so the gradient is that of the global token-weighted mean); gradients sync only on the
    last micro-batch; then clipping, AdamW, and one all-reduce of the loss sums."""
    batch_keys = for_model(cfg.model).batch_keys
    set_lr(optimizer, lr)
    scale = d.world / max(n_targets, 1.0)
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
    for i, b in enumerate(micro):
        last = i == len(micro) - 1
        if cfg.fsdp and d.on:
            wrapped.set_requires_gradient_sync(last)
        sync = wrapped.no_sync() if d.on and not cfg.fsdp and not last else contextlib.nullcontext()
        tensors = [b[k].to(d.device, non_blocking=True) if isinstance(b[k], torch.Tensor) else b[k] for k in batch_keys]
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

    arch = for_model(cfg.model)
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
    elif cfg.resume:
        cfg.notes.append(f"--resume: no checkpoint in {output}, starting from scratch")

    d = setup_distributed()
    try:
        dataset = arch.stream(cfg.model, cfg.stage, cfg.files, seed=cfg.seed, rank=d.rank, world_size=d.world, unit_rows=cfg.unit_rows)
        readers = d.world * max(cfg.num_workers, 1)
        if len(dataset.units) < readers:
            raise ValueError(
                f"{len(dataset.units)} data shards (row groups, or --unit-rows slices) for {readers} readers "
                f"({d.world} process(es) x {max(cfg.num_workers, 1)} worker(s)): pass a smaller --unit-rows or fewer --num-workers"
            )
        if record is not None:
            data_state, rng, note = train_checkpoint.resume_data(record, d, cfg.num_workers)
            dataset.load_state_dict(data_state)
            cfg.notes += [note] if note else []
    except ValueError as e:  # wrong columns, too few shards, a data state that does not fit
        raise UsageError(str(e)) from None

    start_step, progress = 0, {"tokens": 0, "elapsed": 0.0}
    if record is None:  # a fresh run: the seeded model, in full, then the --init-* weights
        model = init_model(cfg)
        cfg.notes += load_init_weights(model, cfg)
        wrapped = parallelize(model, arch, cfg.compile, cfg.checkpointing, cfg.fsdp, d)
    else:  # a resume: the model on the meta device, sharded, materialised, filled from the checkpoint's shards
        with torch.device("meta"):
            model = arch.build(cfg.model, cfg.stage)
        wrapped = parallelize(model, arch, cfg.compile, cfg.checkpointing, cfg.fsdp, d, load=lambda m: train_checkpoint.load_model(m, resume_from))
        start_step = record["step"]
        progress = {"tokens": record["tokens"], "elapsed": record["elapsed"]}
        if any(getattr(cfg, k) for k in INITS):
            cfg.notes.append(f"--init-* ignored: the weights come from {resume_from}")
    cuda = d.device.type == "cuda"
    set_precision(d.device)
    optimizer = make_optimizer(model, cfg.stage, fused=True if cuda and not cfg.fsdp else None)
    if record is not None:
        train_checkpoint.load_optimizer(wrapped, optimizer, resume_from, record)
        checkpoint.set_rng_state(rng)
    trainable = [p for p in model.parameters() if p.requires_grad]

    if d.main:
        output.mkdir(parents=True, exist_ok=True)
        cfg.notes += [f"removed {name}, left half-written by a killed run" for name in checkpoint.remove_partial(output)]
        (output / "config.json").write_text(json.dumps(cfg.to_json(), indent=1) + "\n")
    metrics = Metrics(cfg.output, start_step if record is not None else None, d.main)
    loader = DataLoader(
        dataset,
        batch_size=cfg.micro_batch,
        collate_fn=arch.collate,
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
            n_targets, n_images, stopped = step_counts(micro, d, stop.signal, arch.count_images)
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
                last_saved = train_checkpoint.save(cfg, d, wrapped, optimizer, step, progress, data_state)
        if stopped and step > start_step and (last_saved is None or last_saved.name != f"step-{step}"):
            last_saved = train_checkpoint.save(cfg, d, wrapped, optimizer, step, progress, data_state)
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
