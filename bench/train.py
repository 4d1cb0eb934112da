"""Training throughput and MFU: the trainer's own step (model/train.py `run_step`) on stage-2 packed data,
and the same model on ready tensors in the same run, so the ratio shows what the input pipeline costs.

    python bench/train.py [--preset small] [--data PACKED_DIR] [--micro-batch 2] [--steps 10] [--warmup 3]
                          [--num-workers 8] [--checkpointing] [--compile] [--image-size 448] [--seq-len 2048]
                          [--peak-tflops 989]
    python bench/train.py --preset tiny --steps 3        # CPU: checks that it runs (figures meaningless)

Without --data it writes a stage-2-like packed set first (formats/packing.py, PACKED schema): 90% image
samples (an image as 258 tokens, a short prompt, a supervised answer of 10-200 tokens), 10% pure text
(300-1500 tokens, all supervised), packed to --seq-len, images 640x480 JPEGs (~60-100 KB) decoded and
resized to --image-size by the DataLoader workers as in training. One process, no accumulation:
global batch = micro-batch; bf16 autocast on GPU, fp32 on CPU; the stage's parts trainable (stage 2: all).

Runs, in one process on one model: (1) "data": batches from model/data.py's PackedStream through a
DataLoader (--num-workers), host-to-device copies included; (2) "ready": the first data batch kept on
the device and fed again every step (same shapes, images and targets: the same FLOPs per step). Each
measures --steps steps after --warmup steps (allocator, cuDNN autotuning, torch.compile).

FLOPs (useful model FLOPs; activation-checkpointing recompute and the blank image of an image-less
micro-batch are not counted). Forward, per unit:
    ViT, per image of P = (S/p)^2 patches:  2*P*3p^2*W + L_v*(2*P*(4W^2 + 2*W*M) + 4*P^2*W)
    adapter, per image (Q queries, LLM width H):  2*P*W*H + 4*P*H^2 + 4*Q*P*H + 4*Q*H^2
    LLM, per sequence of T tokens:  T*2*L*(4H^2 + 3*H*I) + L*4*T^2*H
        (6 x params x tokens in training; attention counted over the full T x T, as PaLM and nanoGPT
        do, which is also what the masked SDPA kernel computes)
    output head: 2*H*V per supervised target (logits exist only there: model/llm.py `loss`)
Training multiplies a part's forward by 3 when it is trained (forward + input and weight gradients), 2
when it is frozen but gradients flow through it to a trained part below (stage 1's LLM), 1 when nothing
below it trains (stage 3's ViT). MFU = FLOPs / time / peak; peak: H100 SXM bf16 dense 989 TFLOP/s
(--peak-tflops for another device). On CPU it is printed against the same peak and means nothing.
"""

import argparse
import io
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from formats.packing import Sample, pack  # noqa: E402
from formats.schemas import PACKED  # noqa: E402
from formats.tokenizer import IMG_END_ID, IMG_ID, IMGPAD_ID, PAD_ID  # noqa: E402
from model import parallel, train  # noqa: E402
from model.architectures import for_model  # noqa: E402
from model.config import ADAPTER, LLM, STAGES, VISION, ModelConfig, StageConfig  # noqa: E402
from model.data import collate, stage_stream  # noqa: E402
from model.optim import make_optimizer  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0
IMAGE_IDS = [IMG_ID] + [IMGPAD_ID] * 256 + [IMG_END_ID]


# --- FLOPs ------------------------------------------------------------------------------------------------


def vit_flops(m: ModelConfig, size: int) -> float:
    """Forward FLOPs of the ViT on one image of size x size pixels."""
    v = m.vision
    p = (size // v.patch) ** 2
    embed = 2 * p * 3 * v.patch**2 * v.width
    block = 2 * p * (4 * v.width**2 + 2 * v.width * v.mlp) + 4 * p * p * v.width
    return embed + v.layers * block


def adapter_flops(m: ModelConfig, size: int) -> float:
    """Forward FLOPs of the adapter on one image (its patch tokens -> Q queries of width H)."""
    p = (size // m.vision.patch) ** 2
    q, h, w = m.adapter.queries, m.llm.hidden, m.vision.width
    return 2 * p * w * h + 4 * p * h * h + 4 * q * p * h + 4 * q * h * h


def llm_flops(m: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs of the LLM's blocks on one sequence (the head is counted per target)."""
    c = m.llm
    return seq_len * 2 * c.layers * (4 * c.hidden**2 + 3 * c.hidden * c.intermediate) + c.layers * 4 * seq_len**2 * c.hidden


def head_flops(m: ModelConfig) -> float:
    return 2 * m.llm.hidden * m.llm.vocab


def multipliers(trainable: tuple[str, ...]) -> dict[str, int]:
    """Training FLOPs / forward FLOPs per part: 3 trained, 2 frozen with gradients through it, 1 otherwise."""
    below = {LLM: (ADAPTER, VISION), ADAPTER: (VISION,), VISION: ()}
    return {part: 3 if part in trainable else 2 if any(b in trainable for b in below[part]) else 1 for part in (VISION, ADAPTER, LLM)}


def step_flops(m: ModelConfig, stage: StageConfig, sequences: int, images: int, targets: int) -> float:
    """Training FLOPs of one step of `sequences` sequences holding `images` images and `targets` targets."""
    k = multipliers(stage.trainable)
    return (
        k[VISION] * images * vit_flops(m, stage.image_size)
        + k[ADAPTER] * images * adapter_flops(m, stage.image_size)
        + k[LLM] * (sequences * llm_flops(m, stage.seq_len) + targets * head_flops(m))
    )


# --- data -------------------------------------------------------------------------------------------------


def jpeg(rng: np.random.Generator, width: int = 640, height: int = 480) -> bytes:
    """A photo-like JPEG: smooth colour fields plus grain (decodes like a real ~60-100 KB photo)."""
    low = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def write_packed_data(folder: Path, rows: int, seq_len: int, seed: int = 0) -> int:
    """A stage-2-like packed Parquet file of about `rows` rows; returns the images it holds."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    pool = [jpeg(nrng) for _ in range(24)]
    samples, sequences = [], []
    while len(sequences) < rows:
        samples.clear()
        for i in range(64):
            if rng.random() < 0.9:
                prompt = [rng.randrange(300, 20_000) for _ in range(rng.randrange(5, 20))]
                answer = [rng.randrange(300, 20_000) for _ in range(rng.randrange(10, 200))] + [PAD_ID]
                ids = IMAGE_IDS + prompt + answer
                samples.append(Sample(f"s{len(sequences)}-{i}", ids, [0] * (258 + len(prompt)) + [1] * len(answer), [rng.choice(pool)]))
            else:
                n = min(rng.randrange(300, 1500), seq_len)
                samples.append(Sample(f"t{len(sequences)}-{i}", [rng.randrange(300, 20_000) for _ in range(n)], [1] * n))
        packed, _ = pack(samples, seq_len=seq_len)
        sequences += packed
    sequences = sequences[:rows]
    table = [
        {
            "uid": "+".join(s.uids), "task": "mix", "input_ids": s.ids.tolist(), "loss_mask": s.mask.tolist(),
            "doc_ids": s.doc.tolist(), "position_ids": s.pos.tolist(), "images": s.images, "sample_uids": s.uids,
        }  # fmt: skip
        for s in sequences
    ]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(table, schema=PACKED), folder / "part-0.parquet", row_group_size=16)
    return sum(len(s.images) for s in sequences)


# --- the runs ---------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name, batches, steps, warmup, ctx) -> dict:
    """`warmup` + `steps` trainer steps on the batches `batches()` yields; figures of the measured steps."""
    cfg, d, wrapped, optimizer, trainable, autocast = ctx
    totals = {"tokens": 0, "images": 0, "targets": 0, "flops": 0.0, "time": 0.0, "loss": float("nan")}
    for i in range(warmup + steps):
        sync(d.device)
        t0 = time.perf_counter()
        micro = [next(batches)]
        n_targets, n_images, _ = train.step_counts(micro, d)
        loss, _ = train.run_step(wrapped, optimizer, trainable, micro, n_targets, cfg.stage.lr, cfg, d, autocast)
        sync(d.device)
        dt = time.perf_counter() - t0
        if i >= warmup:
            sequences = micro[0]["input_ids"].shape[0]
            totals["tokens"] += micro[0]["input_ids"].numel()
            totals["images"] += int(n_images)
            totals["targets"] += int(n_targets)
            totals["flops"] += step_flops(cfg.model, cfg.stage, sequences, int(n_images), int(n_targets))
            totals["time"] += dt
            totals["loss"] = loss
        print(f"  {name} step {i + 1}/{warmup + steps}{' (warm-up)' if i < warmup else ''}: {dt:.3f} s, loss {loss:.4f}", flush=True)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--stage", type=int, default=2, choices=(2, 3))
    parser.add_argument("--data", help="a packed/ folder (default: write a stage-2-like one to a temp folder)")
    parser.add_argument("--rows", type=int, default=64, help="rows to write when --data is not given")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> None:
    seq_len = args.seq_len or STAGES[args.stage].seq_len
    data, unit_rows = args.data, None
    if data is None:
        t0 = time.perf_counter()
        data, unit_rows = str(workdir / "packed"), 1
        n_images = write_packed_data(Path(data), args.rows, seq_len)
        print(f"wrote {args.rows} packed rows of {seq_len} tokens ({n_images} images) to {data} in {time.perf_counter() - t0:.1f} s")
    argv = ["--stage", str(args.stage), "--data", data, "--preset", args.preset, "--output", str(workdir / "out"),
            "--micro-batch", str(args.micro_batch), "--global-batch", str(args.micro_batch), "--num-workers", str(args.num_workers),
            "--seq-len", str(seq_len)]  # fmt: skip
    argv += ["--image-size", str(args.image_size)] if args.image_size else []
    argv += ["--unit-rows", str(unit_rows)] if unit_rows else []
    argv += ["--checkpointing"] * args.checkpointing + ["--compile"] * args.compile
    cfg = train.resolve(train.build_parser().parse_args(argv), 1)

    d = parallel.setup_distributed()
    model = train.init_model(cfg)
    wrapped = parallel.parallelize(model, for_model(cfg.model), cfg.compile, cfg.checkpointing, cfg.fsdp, d)
    parallel.set_precision(d.device)
    optimizer = make_optimizer(model, cfg.stage, fused=True if d.device.type == "cuda" else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    ctx = (cfg, d, wrapped, optimizer, trainable, parallel.autocast_for(d.device))
    params = {part: sum(p.numel() for p in module.parameters()) for part, module in model.parts().items()}
    name = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(
        f"device: {name}; torch {torch.__version__}; preset {args.preset}: "
        + ", ".join(f"{part} {n / 1e6:,.1f}M" for part, n in params.items())
        + f"; stage {cfg.stage.stage} (trains {', '.join(cfg.stage.trainable)}), images {cfg.stage.image_size} px, "
        f"sequences {cfg.stage.seq_len}, micro-batch {cfg.micro_batch}, {'bf16 autocast' if d.device.type == 'cuda' else 'fp32'}"
        f"{', checkpointing' if cfg.checkpointing else ''}{', compiled blocks' if cfg.compile else ''}; {cfg.num_workers} loader workers"
    )

    dataset = stage_stream(cfg.stage, cfg.files, seed=0, rank=0, world_size=1, unit_rows=cfg.unit_rows)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.micro_batch, collate_fn=collate, num_workers=cfg.num_workers,
        pin_memory=d.device.type == "cuda", prefetch_factor=4 if cfg.num_workers else None,
    )  # fmt: skip
    kept = {}

    def from_data():
        for batch in loader:
            if not kept:
                kept.update({k: batch[k].to(d.device) for k in for_model(cfg.model).batch_keys})
            yield batch

    def ready():  # the first data batch, already on the device, every step
        while True:
            yield kept

    runs = {"data": measure("data", from_data(), args.steps, args.warmup, ctx)}
    runs["ready"] = measure("ready", ready(), args.steps, args.warmup, ctx)

    k = multipliers(cfg.stage.trainable)
    print(f"\nforward FLOPs: ViT {vit_flops(cfg.model, cfg.stage.image_size) / 1e9:,.1f} G/image (training x{k[VISION]}), "
          f"adapter {adapter_flops(cfg.model, cfg.stage.image_size) / 1e9:,.2f} G/image (x{k[ADAPTER]}), "
          f"LLM {llm_flops(cfg.model, cfg.stage.seq_len) / 1e9:,.1f} G/sequence + head {head_flops(cfg.model) / 1e6:,.0f} M/target (x{k[LLM]}); "
          f"peak {args.peak_tflops:,.0f} TFLOP/s")  # fmt: skip
    for run, t in runs.items():
        tflops = t["flops"] / t["time"] / 1e12
        print(
            f"{run:>5}: {t['tokens'] / t['time']:,.0f} tokens/s, {t['images'] / t['time']:,.1f} images/s, "
            f"{t['time'] / args.steps:.3f} s/step, {tflops:,.2f} TFLOP/s, MFU {100 * tflops / args.peak_tflops:.2f}%"
            f" ({t['images']} images, {t['targets']} targets in {args.steps} steps)"
        )
    rate = {run: (t["tokens"] / t["time"], t["flops"] / t["time"]) for run, t in runs.items()}
    print(
        f"ratio data / ready: tokens/s {rate['data'][0] / rate['ready'][0]:.3f}, FLOP/s {rate['data'][1] / rate['ready'][1]:.3f} "
        "(the data run's steps hold other images and targets than the one ready batch: FLOP/s compares like with like)"
    )
    if d.device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(d.device) / 2**30:.1f} GiB")
    else:
        print("(CPU: MFU against the H100 peak, meaningless here; this run only checks that the bench works)")


if __name__ == "__main__":
    main()
