"""CLIP score on Beam: rows (uid, caption, image bytes) -> (uid, scores), with Beam's RunInference.

How the work is split: `PreprocessClip`, a plain DoFn on the CPU workers, decodes each image once with
PIL, applies open_clip's eval transform and tokenizes the caption (filters/clip_score.py); RunInference
then batches those tensors (BatchElements, fixed size `batch_size`) and `ClipModelHandler` runs both
encoders and the cosine on the model's device. An image that does not decode travels on as None and
comes out as (uid, None), in the same output: no second branch to flatten.

The heads of filters/score_heads.py (`heads`: {"nsfw": PATH, "aesthetic": PATH}) run in the same
inference call on the image embeddings the CLIP score computed: one image forward per image for every
score. The watermark detector of filters/watermark.py (`watermark`: PATH) takes pixels, not embeddings:
PreprocessClip makes its 256x256 input from the same decoded image as CLIP's (one decode per image), and
the same inference call runs it. A row's scores are a dict: {"clip_score": s, "nsfw_score": n,
"aesthetic_score": a, "watermark_score": w}, with the models that ran. The watermark detector needs the
CPU decode: with `decode_on_device` it is refused (ValueError), as the device path decodes in the
inference step and makes CLIP's input only.

With `embeddings=True` the dict also carries the image embedding under EMBEDDING, as float16 bytes
(filters/semantic_dedup.py), for semantic dedup (pipelines/semantic_dedup.py). It is what makes the
output heavy: 768 x 2 = 1,536 bytes a pair for ViT-L/14 against ~30 for the scores, ~4 TB for 2.5B
candidates wherever the output is shuffled or materialised. It is not a score: `without_embedding`
takes it out before the scores reach rows, thresholds or histograms.

The score is the cosine similarity of the L2-normalised embeddings, in [-1, 1] (not x100, not x
logit_scale): LAION's 0.28 for ViT-B-32 is on this scale.

Batch size: 64 on CPU (the default); on a GPU 256 to 512 (a guess until bench/clip_score.py runs on one).
`torch_threads` sets torch's intra-op threads in each worker process (torch.set_num_threads, process-wide):
with one Beam process per core, 1 avoids oversubscription. Measured on the 2-core machine with the other
core busy: the preprocessing took 5 ms per image with 1 thread and 30 ms with torch's default of 2.
`decode_on_device=True` moves the JPEG decode into the inference step, on the model's device (nvJPEG on
CUDA), for GPU workers whose CPUs cannot keep up; it is exercised on CPU by the tests, never on a GPU here.
"""

from dataclasses import dataclass

import apache_beam as beam
import torch
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.utils import shared

from filters.clip_score import ClipScorer, load_preprocessor, load_scorer
from filters.score_heads import Head, load_head
from filters.semantic_dedup import EMBEDDING, encode_embeddings
from filters.watermark import WatermarkDetector, load_watermark
from filters.watermark import preprocess as watermark_preprocess

NAMESPACE = "clip"
DEFAULT_BATCH_SIZE = 64  # CPU; use 256-512 on a GPU

# One example: (preprocessed image [3, H, W], or the encoded bytes with decode_on_device, or None for an
# image that did not decode; tokens [L]; the watermark detector's input [3, 256, 256], or None without it)
Example = tuple[torch.Tensor | bytes | None, torch.Tensor, torch.Tensor | None]
Scores = dict[str, float | bytes]  # "clip_score", a "{head}_score" per head, "watermark_score" with the detector (floats); EMBEDDING (bytes) when asked
WATERMARK_ON_DEVICE = "the watermark detector takes the image decoded on the CPU, not on the device"


def without_embedding(key, scores: Scores | None) -> tuple:
    """A (key, scores) pair with the scores' EMBEDDING entry left out: the scores alone."""
    return key, scores and {name: value for name, value in scores.items() if name != EMBEDDING}


@dataclass
class Model:
    """What a worker loads once: the CLIP scorer, the heads on its embeddings and the watermark detector
    (a class, not a tuple: Beam's shared handle keeps a weak reference to it)."""

    scorer: ClipScorer
    heads: dict[str, Head]
    watermark: WatermarkDetector | None


class ClipModelHandler(ModelHandler[Example, Scores | None, Model]):
    """RunInference's handler for filters.clip_score, filters.score_heads and filters.watermark:
    load_model -> load_scorer, load_head and load_watermark, a batch -> its scores.

    One model per worker process, shared by its threads and bundles: RunInference's DoFn
    (_RunInferenceDoFn in apache_beam/ml/inference/base.py, Beam 2.77) creates one `shared.Shared()`
    handle when the transform is built, and its setup() calls `self._shared_model_handle.acquire(load,
    tag=...)`; every copy of the DoFn unpickled in a process holds that handle's key, so the process
    loads once and the rest get the cached model. `large_model=True` or `model_copies` would instead
    serve one copy per machine through multi_process_shared (a proxy: tensors would be pickled across)."""

    def __init__(self, model: str, pretrained: str | None = None, device: str | None = None, precision: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, decode_on_device: bool = False, torch_threads: int | None = None,
                 heads: dict[str, str] | None = None, watermark: str | None = None, embeddings: bool = False):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        if watermark and decode_on_device:
            raise ValueError(WATERMARK_ON_DEVICE)
        self.model, self.pretrained, self.device, self.precision = model, pretrained, device, precision
        self.decode_on_device, self.torch_threads, self.heads, self.watermark = decode_on_device, torch_threads, heads or {}, watermark
        self.embeddings = embeddings

    def load_model(self) -> Model:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        scorer = load_scorer(self.model, self.pretrained, self.device, self.precision)
        heads = {name: load_head(name, path, scorer.embed_width).to(scorer.device) for name, path in self.heads.items()}
        return Model(scorer, heads, load_watermark(self.watermark).to(scorer.device) if self.watermark else None)

    def run_inference(self, batch, model: Model, inference_args=None) -> list[Scores | None]:
        scorer, heads = model.scorer, model.heads
        images, tokens, marks = zip(*batch)
        if self.decode_on_device:
            images = scorer.preprocess_on_device(list(images))
        ok = [i for i, image in enumerate(images) if image is not None]
        scores: list[Scores | None] = [None] * len(batch)
        if ok:
            sims, embeddings = scorer.score_and_embed(torch.stack([images[i] for i in ok]), torch.stack([tokens[i] for i in ok]))
            columns = {"clip_score": sims} | {f"{name}_score": head(embeddings) for name, head in heads.items()}
            if model.watermark:
                columns["watermark_score"] = model.watermark(torch.stack([marks[i] for i in ok]))
            found = {name: values.cpu().tolist() for name, values in columns.items()}
            if self.embeddings:
                found[EMBEDDING] = encode_embeddings(embeddings.cpu().numpy())
            for j, i in enumerate(ok):
                scores[i] = {name: values[j] for name, values in found.items()}
        Metrics.counter(NAMESPACE, "image_undecodable").inc(len(batch) - len(ok))
        return scores

    def get_num_bytes(self, batch) -> int:
        """Tensor and image bytes of the batch (the default pickles the whole batch to measure it)."""
        size = 0
        for image, tokens, marks in batch:
            size += tokens.nbytes + (image.nbytes if isinstance(image, torch.Tensor) else len(image or b""))
            size += 0 if marks is None else marks.nbytes
        return size

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


class PreprocessClip(beam.DoFn):
    """Row -> (key, (image tensor or None, tokens, watermark input or None)): each image decoded once, on
    the CPU, into CLIP's input and, with `watermark`, the watermark detector's. The transform and
    tokenizer (no weights) are built once per worker process, in setup."""

    def __init__(self, model: str, pretrained: str | None, decode_on_device: bool = False, key: str | tuple[str, ...] = "uid",
                 torch_threads: int | None = None, watermark: bool = False):
        self.model, self.pretrained, self.decode_on_device, self.key = model, pretrained, decode_on_device, key
        self.torch_threads, self.watermark = torch_threads, watermark
        self._shared = shared.Shared()

    def setup(self):
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        self.pre = self._shared.acquire(lambda: load_preprocessor(self.model, self.pretrained), tag=f"{self.model}|{self.pretrained}")

    def process(self, row: dict):
        tokens = self.pre.tokenize([row["caption"]])[0]
        image, marks = row["image"], None
        if not self.decode_on_device:
            decoded = self.pre.decode(row["image"])
            image = None if decoded is None else self.pre.transform(decoded)
            marks = watermark_preprocess(decoded) if self.watermark and decoded is not None else None
        key = row[self.key] if isinstance(self.key, str) else tuple(row[field] for field in self.key)
        yield key, (image, tokens, marks)


class ScoreClip(beam.PTransform):
    """PCollection of rows with uid, caption and image (bytes) -> PCollection of (uid, scores): a dict
    with "clip_score" (in [-1, 1]), a "{name}_score" per head of `heads` ({name: weights path}) and
    "watermark_score" with `watermark` (a weights path), or None for an image that could not be
    decoded; with `embeddings`, the image embedding too (EMBEDDING). `key` names the field(s) the scores
    are keyed by: a tuple of names, e.g. ("uid", "source"), gives a tuple key."""

    def __init__(self, model: str, pretrained: str | None = None, device: str | None = None, precision: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, decode_on_device: bool = False, key: str | tuple[str, ...] = "uid",
                 torch_threads: int | None = None, heads: dict[str, str] | None = None, watermark: str | None = None,
                 embeddings: bool = False):
        super().__init__()
        self.model, self.pretrained, self.decode_on_device, self.key = model, pretrained, decode_on_device, key
        self.torch_threads, self.watermark = torch_threads, bool(watermark)
        self.handler = ClipModelHandler(model, pretrained, device, precision, batch_size, decode_on_device, torch_threads, heads, watermark, embeddings)

    def expand(self, rows):
        return (
            rows
            | "ClipPreprocess" >> beam.ParDo(PreprocessClip(self.model, self.pretrained, self.decode_on_device, self.key, self.torch_threads, self.watermark))
            | "ClipInference" >> RunInference(KeyedModelHandler(self.handler))
        )
