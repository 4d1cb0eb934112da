"""Training throughput and MFU: the trainer's own step (model/train.py `run_step`) on stage-2 packed data,
and the same model on ready tensors in the same run, so the ratio shows what the input pipeline costs.
Either family, through the trainer's plug-in (model/architectures.py `for_model`): Qwen-VL (--preset
tiny, small, qwen-vl) and Qwen2-VL (--preset qwen2-vl-tiny, qwen2-vl-2b, qwen2-vl-7b, qwen2-vl-72b).

    python bench/train.py [--preset small] [--data PACKED_DIR] [--micro-batch 2] [--steps 10] [--warmup 3]
                          [--num-workers 8] [--checkpointing] [--compile] [--image-size 448] [--seq-len 2048]
                          [--peak-tflops 989]
    python bench/train.py --preset tiny --steps 3            # CPU: checks that it runs (figures meaningless)
    python bench/train.py --preset qwen2-vl-tiny --steps 3   # likewise

Without --data it writes a stage-2-like packed set of the preset's family first (formats/packing.py,
PACKED schema): 90% image samples (an image span, a short prompt, a supervised answer of 10-200
tokens), 10% pure text (300-1500 tokens, all supervised), packed to --seq-len, images photo-like JPEGs
decoded and resized by the DataLoader workers as in training. Qwen-VL: 640x480 JPEGs (~60-100 KB), an
image as 258 tokens, resized to --image-size. Qwen2-VL (--image-size does not apply): JPEGs of 640x480,
480x640, 448x336, 800x600 and 1024x768, each resized to its smart_resize size
(formats/dynamic_resolution.py) and spanning <|vision_start|>, one <|image_pad|> per 2x2 patches (192
to 999), <|vision_end|>; each row with its image_sizes, image_grid_thw and M-RoPE position ids
(formats/mrope.py, from 0 in each document). A sample longer than --seq-len is left out (at 2048 none
is). One process, no accumulation: global batch = micro-batch; bf16 autocast on GPU, fp32 on CPU; the
stage's parts trainable (stage 2: all).

Runs, in one process on one model: (1) "data": batches from the family's stream and collate (the
plug-in's) through a DataLoader (--num-workers), host-to-device copies included; (2) "ready": the first
data batch kept on the device and fed again every step (same shapes, images and targets: the same
FLOPs per step). Each measures --steps steps after --warmup steps (allocator, cuDNN autotuning,
torch.compile).

FLOPs (useful model FLOPs, from each batch's own shapes and image grids; activation-checkpointing
recompute and the blank image of an image-less micro-batch are not counted). Forward, per unit:
    ViT, per image of P patches of K values (width W, MLP hidden M, L_v blocks), attention within
    groups of G_i patches:  2*P*K*W + L_v*(2*P*(4W^2 + 2*W*M) + 4*W*sum(G_i^2))
        Qwen-VL: P = (S/p)^2 at S = --image-size, K = 3p^2, one group (4*P^2*W).
        Qwen2-VL: P = t*h*w of the image's grid, K = C*T*p^2 (3*2*14^2), M = mlp_ratio*W, a group per
        frame pair (an image: one, 4*P^2*W)
    Qwen-VL adapter, per image (Q queries, LLM width H):  2*P*W*H + 4*P*H^2 + 4*Q*P*H + 4*Q*H^2
    Qwen2-VL merger, per image (P/4 tokens of 4W values):  2*(P/4)*(4W)*(4W) + 2*(P/4)*(4W)*H
    LLM, per sequence of T tokens (L blocks, MLP hidden I, keys and values KV = kv_heads*head_dim wide:
    H in Qwen-VL, grouped-query attention in Qwen2-VL):  T*2*L*(2H^2 + 2*H*KV + 3*H*I) + L*4*T^2*H
        (q and o projections, k and v, the SwiGLU MLP: 6 x params x tokens in training; attention
        counted over the full T x T, as PaLM and nanoGPT do, which is also what the masked SDPA kernel
        computes)
    output head: 2*H*V per supervised target (logits exist only there: model/llm.py `loss`)
Training multiplies a part's forward by 3 when it is trained (forward + input and weight gradients), 2
when it is frozen but gradients flow through it to a trained part below (stage 1's LLM), 1 when nothing
below it trains (stage 3's ViT). The parts, bottom up: Qwen-VL's vision, adapter, llm; Qwen2-VL's
vision (the merger included), llm. MFU = FLOPs / time / peak; peak: H100 SXM bf16 dense 989 TFLOP/s
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from formats.dialects import QWEN2_VL  # noqa: E402
from formats.dynamic_resolution import image_grid, image_tokens, smart_resize  # noqa: E402
from formats.mrope import IMAGE_PAD_ID, mrope_positions  # noqa: E402
from formats.packing import Packed, Sample, document_starts, pack  # noqa: E402
from formats.schemas import PACKED  # noqa: E402
from formats.tokenizer import IMG_END_ID, IMG_ID, IMGPAD_ID, PAD_ID  # noqa: E402
from model import parallel, train  # noqa: E402
from model.architectures import for_model, model_presets  # noqa: E402
from model.config import ADAPTER, LLM, VISION, ModelConfig, Qwen2VLConfig, StageConfig  # noqa: E402
from model.optim import make_optimizer  # noqa: E402
from model.qwen2_vision import segment_lengths  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0
IMAGE_IDS = [IMG_ID] + [IMGPAD_ID] * 256 + [IMG_END_ID]
VISION_START, VISION_END = (QWEN2_VL.special_ids()[token] for token in (QWEN2_VL.image, QWEN2_VL.image_end))  # 151652, 151653
QWEN2_VL_SIZES = ((640, 480), (480, 640), (448, 336), (800, 600), (1024, 768))  # (width, height) of its JPEGs


# --- FLOPs ------------------------------------------------------------------------------------------------


def vit_flops(width: int, mlp: int, layers: int, values: int, groups: list[int]) -> float:
    """Forward FLOPs of a ViT on one image: sum(groups) patches of `values` values each, attending within
    each group."""
    p = sum(groups)
    block = 2 * p * (4 * width**2 + 2 * width * mlp) + 4 * width * sum(g * g for g in groups)
    return 2 * p * values * width + layers * block


def adapter_flops(m: ModelConfig, size: int) -> float:
    """Forward FLOPs of the Qwen-VL adapter on one image (its patch tokens -> Q queries of width H)."""
    p = (size // m.vision.patch) ** 2
    q, h, w = m.adapter.queries, m.llm.hidden, m.vision.width
    return 2 * p * w * h + 4 * p * h * h + 4 * q * p * h + 4 * q * h * h


def merger_flops(m: Qwen2VLConfig, patches: int) -> float:
    """Forward FLOPs of the Qwen2-VL merger on one image's patches (merge^2 of them -> one LLM token)."""
    k = m.vision.spatial_merge_size**2
    tokens, width = patches // k, k * m.vision.embed_dim
    return 2 * tokens * width * width + 2 * tokens * width * m.llm.hidden


def llm_flops(m: ModelConfig | Qwen2VLConfig, seq_len: int) -> float:
    """Forward FLOPs of the LLM's blocks on one sequence (the head is counted per target); keys and values
    kv_heads * head_dim wide (Qwen-VL has no grouping: its hidden size)."""
    c = m.llm
    h, kv = c.hidden, c.hidden // c.heads * getattr(c, "kv_heads", c.heads)
    return seq_len * 2 * c.layers * (2 * h * h + 2 * h * kv + 3 * h * c.intermediate) + c.layers * 4 * seq_len**2 * h


def head_flops(m: ModelConfig | Qwen2VLConfig) -> float:
    return 2 * m.llm.hidden * m.llm.vocab


def forward_flops(m: ModelConfig | Qwen2VLConfig, stage: StageConfig, batch: dict, targets: float) -> dict[str, float]:
    """Forward FLOPs per part of one batch holding `targets` supervised targets."""
    sequences, seq_len = batch["input_ids"].shape
    llm = sequences * llm_flops(m, seq_len) + targets * head_flops(m)
    v = m.vision
    if isinstance(m, Qwen2VLConfig):
        values, mlp = v.patch_values, int(v.embed_dim * v.mlp_ratio)
        groups = [segment_lengths([grid]) for grid in [*batch["image_grids"], *batch["video_grids"]]]
        vision = sum(vit_flops(v.embed_dim, mlp, v.depth, values, g) + merger_flops(m, sum(g)) for g in groups)
        return {VISION: vision, LLM: llm}
    images, size = batch["images"].shape[0], stage.image_size
    vit = vit_flops(v.width, v.mlp, v.layers, 3 * v.patch**2, [(size // v.patch) ** 2])
    return {VISION: images * vit, ADAPTER: images * adapter_flops(m, size), LLM: llm}


def multipliers(parts: tuple[str, ...], trainable: tuple[str, ...]) -> dict[str, int]:
    """Training FLOPs / forward FLOPs per part (`parts` bottom up): 3 trained, 2 frozen with gradients
    through it (a part below it trained), 1 otherwise."""
    return {part: 3 if part in trainable else 2 if any(b in trainable for b in parts[:i]) else 1 for i, part in enumerate(parts)}


def step_flops(m: ModelConfig | Qwen2VLConfig, stage: StageConfig, batch: dict, targets: float) -> float:
    """Training FLOPs of one step on one batch holding `targets` supervised targets."""
    k = multipliers(for_model(m).parts, stage.trainable)
    return sum(k[part] * flops for part, flops in forward_flops(m, stage, batch, targets).items())


# --- data -------------------------------------------------------------------------------------------------


def jpeg(rng: np.random.Generator, width: int = 640, height: int = 480) -> bytes:
    """A photo-like JPEG: smooth colour fields plus grain (decodes like a real ~60-100 KB photo)."""
    low = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass(frozen=True)
class SizedImage:
    """A Qwen2-VL image: its JPEG, the (height, width) smart_resize gives it, and its patch grid."""

    data: bytes
    size: tuple[int, int]
    grid: tuple[int, int, int]


def sized_image(rng: np.random.Generator, width: int, height: int) -> SizedImage:
    size = smart_resize(height, width)
    return SizedImage(jpeg(rng, width, height), size, image_grid(*size))


def row(s: Packed, images: list[bytes]) -> dict:
    """The columns of a packed sequence that both families write."""
    return {
        "uid": "+".join(s.uids), "task": "mix", "input_ids": s.ids.tolist(), "loss_mask": s.mask.tolist(),
        "doc_ids": s.doc.tolist(), "position_ids": s.pos.tolist(), "images": images, "sample_uids": s.uids,
    }  # fmt: skip


def qwen2_vl_row(s: Packed) -> dict:
    grids = [list(image.grid) for image in s.images]
    starts = document_starts(s.doc)  # each document (and the padding) from 0
    return {
        **row(s, [image.data for image in s.images]), "dialect": "qwen2-vl",
        "image_sizes": [list(image.size) for image in s.images], "image_grid_thw": grids, "videos": [], "video_grid_thw": [],
        "mrope_position_ids": mrope_positions(s.ids, grids, (), starts).tolist(),
    }  # fmt: skip


@dataclass(frozen=True)
class Writer:
    """How a family's packed rows are written (`write_packed_data`)."""

    pool: Callable[[np.random.Generator], list]  # the images the samples draw from
    span: Callable[[object], list[int]]  # an image's ids in its sample
    image_id: int  # the id that opens an image span (pack's image_id)
    row: Callable[[Packed], dict]  # a packed sequence's row


WRITERS = {
    "qwen-vl": Writer(lambda rng: [jpeg(rng) for _ in range(24)], lambda image: IMAGE_IDS, IMG_ID, lambda s: row(s, s.images)),
    "qwen2-vl": Writer(
        lambda rng: [sized_image(rng, w, h) for w, h in QWEN2_VL_SIZES for _ in range(5)],
        lambda image: [VISION_START] + [IMAGE_PAD_ID] * image_tokens(image.grid) + [VISION_END],
        VISION_START,
        qwen2_vl_row,
    ),
}


def write_packed_data(folder: Path, rows: int, seq_len: int, family: str, seed: int = 0) -> int:
    """A stage-2-like packed Parquet file of about `rows` rows of `family` (a WRITERS key); returns the
    images it holds."""
    writer = WRITERS[family]
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    pool = writer.pool(nrng)
    samples, sequences = [], []
    while len(sequences) < rows:
        samples.clear()
        for i in range(64):
            if rng.random() < 0.9:
                prompt = [rng.randrange(300, 20_000) for _ in range(rng.randrange(5, 20))]
                answer = [rng.randrange(300, 20_000) for _ in range(rng.randrange(10, 200))] + [PAD_ID]
                image = rng.choice(pool)
                head = writer.span(image) + prompt
                samples.append(Sample(f"s{len(sequences)}-{i}", head + answer, [0] * len(head) + [1] * len(answer), [image]))
            else:
                n = min(rng.randrange(300, 1500), seq_len)
                samples.append(Sample(f"t{len(sequences)}-{i}", [rng.randrange(300, 20_000) for _ in range(n)], [1] * n))
        packed, _ = pack(samples, seq_len=seq_len, image_id=writer.image_id)
        sequences += packed
    sequences = sequences[:rows]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([writer.row(s) for s in sequences], schema=PACKED), folder / "part-0.parquet", row_group_size=16)
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
        n_targets, n_images, _ = train.step_counts(micro, d, count_images=for_model(cfg.model).count_images)
        loss, _ = train.run_step(wrapped, optimizer, trainable, micro, n_targets, cfg.stage.lr, cfg, d, autocast)
        sync(d.device)
        dt = time.perf_counter() - t0
        if i >= warmup:
            totals["tokens"] += micro[0]["input_ids"].numel()
            totals["images"] += int(n_images)
            totals["targets"] += int(n_targets)
            totals["flops"] += step_flops(cfg.model, cfg.stage, micro[0], n_targets)
            totals["time"] += dt
            totals["loss"] = loss
        print(f"  {name} step {i + 1}/{warmup + steps}{' (warm-up)' if i < warmup else ''}: {dt:.3f} s, loss {loss:.4f}", flush=True)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=model_presets())
    parser.add_argument("--stage", type=int, default=2, choices=(2, 3))
    parser.add_argument("--data", help="a packed/ folder (default: write a stage-2-like one to a temp folder)")
    parser.add_argument("--rows", type=int, default=64, help="rows to write when --data is not given")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--image-size", type=int, help="Qwen-VL only (Qwen2-VL images keep their smart_resize sizes)")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    args = parser.parse_args()
    if args.image_size and isinstance(model_presets()[args.preset], Qwen2VLConfig):
        parser.error("--image-size is Qwen-VL's: Qwen2-VL images keep their smart_resize sizes")

    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> None:
    arch = for_model(model_presets()[args.preset])
    seq_len = args.seq_len or arch.stages[args.stage].seq_len
    data, unit_rows = args.data, None
    if data is None:
        t0 = time.perf_counter()
        data, unit_rows = str(workdir / "packed"), 1
        n_images = write_packed_data(Path(data), args.rows, seq_len, arch.name)
        print(f"wrote {args.rows} packed {arch.name} rows of {seq_len} tokens ({n_images} images) to {data} in {time.perf_counter() - t0:.1f} s")
    argv = ["--stage", str(args.stage), "--data", data, "--preset", args.preset, "--output", str(workdir / "out"),
            "--micro-batch", str(args.micro_batch), "--global-batch", str(args.micro_batch), "--num-workers", str(args.num_workers),
            "--seq-len", str(seq_len)]  # fmt: skip
    argv += ["--image-size", str(args.image_size)] if args.image_size else []
    argv += ["--unit-rows", str(unit_rows)] if unit_rows else []
    argv += ["--checkpointing"] * args.checkpointing + ["--compile"] * args.compile
    cfg = train.resolve(train.build_parser().parse_args(argv), 1)

    d = parallel.setup_distributed()
    model = train.init_model(cfg)
    wrapped = parallel.parallelize(model, arch, cfg.compile, cfg.checkpointing, cfg.fsdp, d)
    parallel.set_precision(d.device)
    optimizer = make_optimizer(model, cfg.stage, fused=True if d.device.type == "cuda" else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    ctx = (cfg, d, wrapped, optimizer, trainable, parallel.autocast_for(d.device))
    params = {part: sum(p.numel() for p in module.parameters()) for part, module in model.parts().items()}
    name = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    sizes = f"images {cfg.stage.image_size} px" if cfg.stage.image_size else "images at their smart_resize sizes"
    print(
        f"device: {name}; torch {torch.__version__}; preset {args.preset}: "
        + ", ".join(f"{part} {n / 1e6:,.1f}M" for part, n in params.items())
        + f"; stage {cfg.stage.stage} (trains {', '.join(cfg.stage.trainable)}), {sizes}, "
        f"sequences {cfg.stage.seq_len}, micro-batch {cfg.micro_batch}, {'bf16 autocast' if d.device.type == 'cuda' else 'fp32'}"
        f"{', checkpointing' if cfg.checkpointing else ''}{', compiled blocks' if cfg.compile else ''}; {cfg.num_workers} loader workers"
    )

    dataset = arch.stream(cfg.model, cfg.stage, cfg.files, seed=0, rank=0, world_size=1, unit_rows=cfg.unit_rows)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.micro_batch, collate_fn=arch.collate, num_workers=cfg.num_workers,
        pin_memory=d.device.type == "cuda", prefetch_factor=4 if cfg.num_workers else None,
    )  # fmt: skip
    kept = {}

    def from_data():
        for batch in loader:
            if not kept:  # tensors to the device; image grids (lists) as they are
                kept.update({k: batch[k].to(d.device) if isinstance(batch[k], torch.Tensor) else batch[k] for k in arch.batch_keys})
            yield batch

    def ready():  # the first data batch, already on the device, every step
        while True:
            yield kept

    runs = {"data": measure("data", from_data(), args.steps, args.warmup, ctx)}
    runs["ready"] = measure("ready", ready(), args.steps, args.warmup, ctx)

    k = multipliers(arch.parts, cfg.stage.trainable)
    targets, images, _ = train.step_counts([kept], d, count_images=arch.count_images)
    forward = forward_flops(cfg.model, cfg.stage, kept, targets)
    print(f"\nforward FLOPs of the ready batch ({kept['input_ids'].shape[0]} sequences, {int(images)} images, {int(targets)} targets): "
          + ", ".join(f"{part} {flops / 1e9:,.2f} G (training x{k[part]})" for part, flops in forward.items())
          + f"; peak {args.peak_tflops:,.0f} TFLOP/s")  # fmt: skip
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
