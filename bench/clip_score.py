"""CLIP score throughput: the bare image encoder against the whole CLIP stage from JPEG bytes.

    python bench/clip_score.py [--models ViT-B-32,ViT-L-14] [--images 10000] [--batch 256] [--workers N]
                               [--decode pil,device] [--beam-workers K] [--compile]

For speed only: each model is open_clip's architecture with random weights, written once to a local-dir
folder marked random (filters.clip_score.save_random_model) and loaded by load_scorer like a user's model:
bf16 on CUDA, fp32 on CPU. The inputs are web-like JPEGs made in memory (300-900 px a side, smooth colour
fields, shapes and grain, ~100-200 KB; 256 distinct ones, cycled), with captions of 5 to 25 words.

Printed per model, in images/s:
(a) the baseline: the bare image encoder on ready tensors already on the device, batch --batch;
(b) the stage, from JPEG bytes to scores: decode + open_clip preprocessing + tokenize + both encoders +
    cosine, through the same ClipScorer methods pipelines/score_clip.py calls, with a torch DataLoader pool of
    --workers processes (one torch thread each) doing the CPU part and the main process running the model
    ("pil": the workers decode with PIL, as PreprocessClip does; "device": the workers only tokenize and
    the JPEGs are decoded in the main process on the model's device, as ScoreClip(decode_on_device=True)
    does), timed from the first batch on (steady state), with its ratio to (a);
(d) (b) "pil" again with the NSFW and aesthetic heads (filters/score_heads.py, released widths, random
    weights) applied to each batch's image embeddings and the watermark detector (filters/watermark.py,
    the released EfficientNet-B3, random weights) on each image's 256x256 input made from the same
    decode in the workers, as ScoreClip does when they are named: their cost beside CLIP alone, with
    the heads' and the detector's own time measured in the loop (the heads' target: under 5% more
    time on CPU);
(c) ScoreClip itself in a Beam pipeline (FnApiRunner; --beam-workers > 1 for multi_processing, each
    process with its own model), reading the JPEGs from files, wall clock including pipeline start and
    model load; 0 skips it.
Targets: (b) at least 90% of (a); ViT-L-14 at least 2,500 img/s on an H100 (clip-retrieval reports
312 img/s per A100 for ViT-L/14).
"""

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from filters.score_heads import LAYOUTS, load_head, save_random_head  # noqa: E402
from filters.watermark import WatermarkDetector, load_watermark, save_random_watermark  # noqa: E402
from filters.watermark import preprocess as watermark_preprocess  # noqa: E402
from filters.clip_score import ClipPreprocessor, ClipScorer, load_preprocessor, load_scorer, save_random_model  # noqa: E402

DISTINCT = 256
WORDS = "a the red blue dog cat house street photo of on in with beautiful old new small large woman man child tree car city night sea mountain".split()


def web_jpeg(seed: int) -> bytes:
    """A JPEG like a web photo in size and entropy: smooth colour fields, shapes, grain."""
    rng = np.random.default_rng(seed)
    w, h = (int(x) for x in rng.integers(300, 901, 2))
    field = rng.integers(0, 256, (int(rng.integers(3, 12)), int(rng.integers(3, 12)), 3), dtype=np.uint8)
    image = Image.fromarray(field).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(5, 40))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x, y, x + int(rng.integers(10, w // 2)), y + int(rng.integers(10, h // 2))]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    grain = rng.normal(0, float(rng.uniform(8, 20)), (h, w, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=int(rng.integers(80, 93)))
    return buffer.getvalue()


def caption(seed: int) -> str:
    rng = np.random.default_rng(seed + 1_000_000)
    return " ".join(rng.choice(WORDS, int(rng.integers(5, 26))))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_image_encoder(scorer: ClipScorer, batch: int, images: int) -> float:
    """(a) img/s of encode_image alone on ready tensors on the device."""
    pixels = torch.randn(batch, 3, *scorer.model.visual.image_size, device=scorer.device).to(scorer.input_dtype)
    steps = max(3, images // batch)
    with torch.inference_mode():
        for _ in range(3):
            scorer.model.encode_image(pixels)
        sync(scorer.device)
        started = time.perf_counter()
        for _ in range(steps):
            scorer.model.encode_image(pixels)
        sync(scorer.device)
    return steps * batch / (time.perf_counter() - started)


class Pairs(torch.utils.data.Dataset):
    """Pair i: (preprocessed image or the JPEG bytes, tokens, the watermark detector's input or None), made
    in a DataLoader worker; with `watermark`, both inputs come from one PIL decode, as in PreprocessClip."""

    def __init__(self, model: str, jpegs: list[bytes], captions: list[str], count: int, decode: str, watermark: bool = False):
        self.model, self.jpegs, self.captions, self.count, self.decode = model, jpegs, captions, count, decode
        self.watermark = watermark
        self.pre: ClipPreprocessor | None = None

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        if self.pre is None:  # once per worker process
            self.pre = load_preprocessor(self.model, None)
        data = self.jpegs[i % len(self.jpegs)]
        tokens = self.pre.tokenize([self.captions[i % len(self.captions)]])[0]
        if self.decode != "pil":
            return data, tokens, None
        image = self.pre.decode(data)
        return self.pre.transform(image), tokens, watermark_preprocess(image) if self.watermark else None


def collate(items):
    images, tokens, marks = zip(*items)
    if isinstance(images[0], torch.Tensor):
        images = torch.stack(images)
    return images, torch.stack(tokens), None if marks[0] is None else torch.stack(marks)


def stage_pool(scorer: ClipScorer, model: str, jpegs, captions, args, decode: str, heads=(),
               watermark: WatermarkDetector | None = None) -> tuple[float, int, float, float]:
    """(b) steady-state img/s of the stage from JPEG bytes, the scores' count (a check), and the shares of
    the stage's time spent in `heads` and in `watermark`: with them (d), each batch's image embeddings
    also go through the heads and its watermark inputs through the detector, as ScoreClip does with
    --nsfw-model etc."""
    loader = torch.utils.data.DataLoader(
        Pairs(model, jpegs, captions, args.images, decode, watermark is not None), batch_size=args.batch, num_workers=args.workers,
        collate_fn=collate, pin_memory=scorer.device.startswith("cuda"), prefetch_factor=4 if args.workers else None,
    )
    scored, started, first, in_heads, in_watermark = 0, None, 0, 0.0, 0.0
    for images, tokens, marks in loader:
        if decode == "device":
            images = torch.stack(scorer.preprocess_on_device(list(images)))
        scores, embeddings = scorer.score_and_embed(images, tokens)
        sync(scorer.device)
        t0 = time.perf_counter()
        for head in heads:
            head(embeddings.cpu())
        t1 = time.perf_counter()
        if watermark is not None:
            watermark(marks).cpu()  # .cpu() waits for the device
        t2 = time.perf_counter()
        if started is not None:
            in_heads, in_watermark = in_heads + t1 - t0, in_watermark + t2 - t1
        scored += len(scores.cpu().tolist())  # .tolist() waits for the device: the batch is done
        if started is None:
            started, first = time.perf_counter(), scored
    seconds = time.perf_counter() - started
    if seconds <= 0:
        return float("nan"), scored, 0.0, 0.0
    return (scored - first) / seconds, scored, in_heads / seconds, in_watermark / seconds


def stage_beam(model: str, jpegs, captions, args) -> tuple[float, float]:
    """(c) img/s and seconds of ScoreClip in a Beam pipeline, wall clock, from JPEG files."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.score_clip import ScoreClip

    folder = Path(tempfile.mkdtemp(prefix="clip-bench-jpegs-"))
    for i, data in enumerate(jpegs):
        (folder / f"{i}.jpg").write_bytes(data)
    count, distinct = args.images, len(jpegs)

    def row(i: int) -> dict:
        return {"uid": str(i), "caption": captions[i % len(captions)], "image": (folder / f"{i % distinct}.jpg").read_bytes()}

    options = ["--runner=FnApiRunner"]
    if args.beam_workers > 1:
        options += ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.beam_workers}"]
    started = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(options)) as p:
        indices = p | beam.Create(range(count))
        if args.beam_workers > 1:
            indices = indices | beam.Reshuffle()
        threads = 1 if args.beam_workers > 1 else None  # one torch thread per process when there are several
        scores = indices | beam.Map(row) | ScoreClip(model, batch_size=args.batch, torch_threads=threads)
        assert_that(scores | beam.combiners.Count.Globally(), equal_to([count]))
    seconds = time.perf_counter() - started
    return count / seconds, seconds


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ViT-B-32,ViT-L-14", help="open_clip architectures, comma-separated")
    parser.add_argument("--images", type=int, default=10_000 if cuda else 64)
    parser.add_argument("--batch", type=int, default=256 if cuda else 32)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="DataLoader processes for (b)")
    parser.add_argument("--decode", default="pil,device", help="(b) variants: pil, device")
    parser.add_argument("--beam-workers", type=int, default=1, help="(c) FnApiRunner processes; 0 skips (c)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both towers for (a) and (b)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "clip-bench-models"))
    args = parser.parse_args()

    started = time.perf_counter()
    jpegs = [web_jpeg(i) for i in range(min(DISTINCT, args.images))]
    captions = [caption(i) for i in range(DISTINCT)]
    sizes = sorted(len(j) for j in jpegs)
    print(
        f"{args.images:,} JPEGs ({len(jpegs)} distinct, median {statistics.median(sizes) / 1000:.0f} KB, "
        f"{sizes[0] / 1000:.0f}-{sizes[-1] / 1000:.0f} KB; made in {time.perf_counter() - started:.1f} s); "
        f"{torch.cuda.get_device_name() if cuda else 'CPU'}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    for name in args.models.split(","):
        folder = Path(args.workdir) / name
        model = f"local-dir:{folder}" if (folder / "open_clip_model.safetensors").exists() else save_random_model(folder, architecture=name)
        scorer = load_scorer(model, None)
        if args.compile:
            scorer.model.visual = torch.compile(scorer.model.visual)
            scorer.model.transformer = torch.compile(scorer.model.transformer)
            for size in {args.batch, args.images % args.batch or args.batch}:  # every shape (b) will see
                scorer.score(torch.zeros(size, 3, *scorer.model.visual.image_size), scorer.tokenize(["x"] * size))
        d = scorer.describe()
        print(f"\n{name} (random weights, {d['device']}, {d['precision']}, batch {args.batch}{', compiled' if args.compile else ''})")
        bare = bare_image_encoder(scorer, args.batch, args.images)
        print(f"  (a) bare image encoder, ready tensors on the device: {bare:,.0f} img/s (baseline)")
        for decode in args.decode.split(","):
            rate, scored, _, _ = stage_pool(scorer, model, jpegs, captions, args, decode)
            assert scored == args.images, (scored, args.images)
            where = "PIL in the workers" if decode == "pil" else f"JPEGs decoded on {d['device']}"
            print(f"  (b) stage from JPEG bytes, DataLoader workers: {args.workers}, {where}: {rate:,.0f} img/s, {rate / bare:.2f} of (a)")
            if decode == "pil":
                folder = Path(args.workdir) / "heads" / name
                heads = [load_head(h, save_random_head(h, folder / f"{h}.safetensors", scorer.embed_width), scorer.embed_width) for h in LAYOUTS]
                watermark = load_watermark(save_random_watermark(folder / "watermark.safetensors")).to(scorer.device)
                with_all, _, heads_share, watermark_share = stage_pool(scorer, model, jpegs, captions, args, decode, heads, watermark)
                print(f"  (d) the same with the NSFW and aesthetic heads on its embeddings and the watermark detector on the same decode: "
                      f"{with_all:,.0f} img/s, {with_all / rate:.3f} of (b); own time: heads {100 * heads_share:.2f}%, "
                      f"watermark detector {100 * watermark_share:.1f}% of the stage's")
        if args.beam_workers:
            rate, seconds = stage_beam(model, jpegs, captions, args)
            print(
                f"  (c) ScoreClip in Beam, FnApiRunner, processes: {args.beam_workers}, PIL decode: {rate:,.0f} img/s "
                f"({seconds:.1f} s wall clock with start-up and model load{', not compiled' if args.compile else ''}), {rate / bare:.2f} of (a)"
            )


if __name__ == "__main__":
    main()
