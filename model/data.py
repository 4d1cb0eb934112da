"""Streaming Parquet input for the three training stages: torch IterableDatasets, sharded, seeded and
resumable, that read what the pipelines write (formats/schemas.py) and never import Beam.

    stage 1   CaptionStream(files)          curated/*.parquet (CURATED): each row rendered on the fly as
                                            a caption sample, image at 224 px, sequence 512
    stage 2   PackedStream(files, stage=2)  packed/*.parquet (PACKED) as written, images at 448
    stage 3   PackedStream(files, stage=3)  the sft output's packed/*.parquet, the same way

`stage_stream(stage, files)` picks the class (model/train.py's `data_files` lists the files).

Items. Each item is a dict: input_ids, labels, loss_mask, doc_ids, position_ids (int64, [T] each),
images ([n_img, 3, S, S] float32, n_img >= 0, in the order of the sequence's <img> spans), uid (str),
and two small int64 tensors for the trainer's bookkeeping: `position` (where the stream stands after
this item: see Resume) and `skipped` (rows skipped so far, counted per reason in SKIP_REASONS order).
`collate(items)` stacks a batch: token tensors [B, T], images concatenated [sum n_img, 3, S, S] in batch
order (the model fills each sequence's <imgpad> slots from them in order), uid a list, position and
skipped the last item's.

Labels: the shift happens here. labels[t] = input_ids[t + 1] where token t + 1 is supervised
(loss_mask 1) and in the same document as t (doc_ids equal, not padding); -100 everywhere else,
including the last position. So the model computes cross_entropy(logits[:, t], labels[:, t]) with no
shift of its own; it is exactly the selection of model/llm.py's `QwenLM.loss` (supervised_targets_mask),
which takes input_ids, loss_mask and doc_ids instead: use either, they agree. A document's first token
is never a target (nothing of its own document precedes it).

Stage 1 rendering (the caption format built on the fly, at 224 px and sequence 512): a curated
row becomes Example(CAPTION, text=caption, lang=lang) -> formats.templates.render -> tokenizer
encode_segments: `<img>`, 256 `<imgpad>`, `</img>`, `Generate the caption in English:` (Chinese for
lang "zh"), all with loss mask 0, then ` CAPTION<|endoftext|>` with mask 1. One sample per row, never
packed (the paper trains stage 1 on single pairs at sequence 512): the sample is padded to 512 with
<|endoftext|>, mask 0, doc_ids 0 on the sample and -1 on padding, position_ids 0..n-1 on the sample and
0, 1, ... again on the padding run (the packed files' convention: formats/packing.py). The image's REF in
`<img>REF</img>` is not tokenized, so a constant is used. A row is skipped and counted, never fatal:
- "too_long": the rendered sample is over the stage's sequence (512: a caption of more than about 245
  tokens), skipped rather than truncated, which would cut its <|endoftext|>;
- "invalid": the caption cannot be rendered (a language other than en and zh, which has no template;
  an empty caption; special-token markup in it);
- "bad_image": the image is missing or does not decode.

Stages 2 and 3: a packed row as written; every row must be exactly the stage's seq_len tokens (checked
per row group: a mismatch is a ValueError naming the file, a usage error: pack with that --seq-len). A
row whose <img> count differs from its image count is skipped as "invalid"; a row with any image that
does not decode is skipped as "bad_image".

Images are decoded and preprocessed where items are made (in the DataLoader workers): PIL decode,
convert("RGB"), resize straight to S x S (no crop, no aspect kept) bicubic, /255, CLIP mean and std
(Qwen-VL's visual.py): model/vision.py's `preprocess`, the one transform of the project.

Sharding. The unit is one row group of one file: the files are sorted by path and their non-empty row
groups numbered in order (unit ids). The row-group sizes, columns and dialects come from the folder's
_manifest.json where the pipeline wrote one (formats/parquet_manifest.py), else from each file's
footer; under torch.distributed only rank 0 builds the unit list and broadcasts it
(broadcast_object_list: a pickle of plain lists made on rank 0, over the process group); with `unit_rows`, a row group of more rows is cut into units of
that many consecutive rows (for small outputs: a demo's few files hold one row group each). Epoch e
shuffles the unit ids with (seed, e); reader g of G takes every G-th unit of that order from position
g, where G = world_size x num_workers and g = rank x num_workers + worker. Inside a unit the rows are
read in an order shuffled with (seed, e, unit id). So every (rank, worker) reads a disjoint set of rows
and an epoch reads every row exactly once across them all, and the stream depends only on the seed,
the files, unit_rows, world_size and num_workers. There must be at least G units (a ValueError
otherwise: pass a smaller unit_rows, or use fewer workers). Each reader goes through its epochs
independently: readers' epoch ends do not line up (units hold different row counts), which is harmless
for an endless stream (epochs=None, the default; the trainer counts steps). With a finite `epochs` each
reader stops after its own last epoch. An endless reader whose whole epoch is skipped rows raises
RuntimeError rather than spin.

Resume. A reader's place is (epoch, units_done: how many of its units of that epoch are finished,
rows_done: how many rows of the current unit are read). Every item carries the place right after it,
with the reader's id and the worker count: position = [worker, num_workers, epoch, units_done,
rows_done]. `consumed(batch)` records a batch's position (and skip counts) in the dataset; when the
dataset is iterated in this process (num_workers=0) it records every item itself as it yields it.
`state_dict()` is then exactly where the stream stands: every reader's place, and which worker's batch
comes next; `load_state_dict()` on a new dataset (same files, seed, shuffle, unit_rows, rank, world_size) makes
its iteration yield exactly the items an uninterrupted run would have yielded next.
- With DataLoader workers, call `dataset.consumed(batch)` for every batch the training loop takes (the
  dataset object in this process never sees the workers' progress otherwise). A DataLoader takes its
  batches from its workers in turn (batch i from worker i mod W), so the next batch comes from the
  worker after the last consumed one; on resume a new DataLoader starts with its worker 0, so worker w
  plays reader (w + next) mod W: the turn order, and so the batch order, carries on unchanged.
- The constraint: `load_state_dict` takes a state of the same world_size and num_workers (0 and 1 are
  the same: one reader per rank); a mismatch is a ValueError at load (world_size) or at iteration
  (workers). Another layout goes through `reshard_state(every rank's state, rank, world_size,
  num_workers)` first: exact when the saved readers stood together at the end of a prefix of the epoch
  order (as every rank taking the same number of rows per step with unit_rows 1 gives), else starting
  at the end of the prefix they had all finished, re-reading what some had read past it (counted). The
  batch size may change. With workers the turn order holds while every worker still produces, i.e.
  always for the endless stream; with a finite `epochs`, a state saved after the first worker has run
  out resumes every reader at its own place, but the interleaving of the last batches may differ.
- Prefetched batches that were never consumed are simply read again after a resume; rows skipped are
  counted once (a count travels with the next item, so skips after the last consumed item are counted
  again when reread, never twice).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from formats.example import CAPTION, Example
from formats.files import open_file
from formats.parquet_manifest import layouts
from formats.templates import check, render
from formats.tokenizer import IMG_ID, PAD_ID, QwenTokenizer
from model.config import STAGES, StageConfig
from model.vision import preprocess

IGNORE_INDEX = -100  # labels that are not targets (torch cross_entropy's default ignore_index)
BAD_IMAGE, TOO_LONG, INVALID = "bad_image", "too_long", "invalid"
SKIP_REASONS = (BAD_IMAGE, TOO_LONG, INVALID)  # the order of the `skipped` counts
TOKEN_KEYS = ("input_ids", "labels", "loss_mask", "doc_ids", "position_ids")
IMAGE_REF = "image"  # what stage-1 samples write in <img>REF</img> (the tokenizer drops REF)


# filters/image_rules.py and the curated data decide what a bomb is; PIL's warning below its own hard
# limit (which still raises, and is then a skipped row) is only noise here.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

_TOKENIZERS: dict[str, QwenTokenizer] = {}  # per process, by vocabulary path: loaded once (~0.2 s)


def decode_image(data: bytes | None, size: int) -> torch.Tensor | None:
    """Encoded bytes -> [3, size, size] (model/vision.py's preprocess: RGB, straight bicubic resize, CLIP
    mean and std); None when missing or undecodable (never raises)."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode here, inside the try: a truncated or corrupt image raises now
            return preprocess(image if image.mode == "RGB" else image.convert("RGB"), size)
    except Exception:  # PIL raises OSError, ValueError, SyntaxError, EOFError, DecompressionBombError...
        return None


def next_token_labels(input_ids: torch.Tensor, loss_mask: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
    """[..., T] -> [..., T]: input_ids[t + 1] where t + 1 is supervised and in t's document, else -100."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    target = (loss_mask[..., 1:] != 0) & (doc_ids[..., 1:] == doc_ids[..., :-1]) & (doc_ids[..., 1:] >= 0)
    labels[..., :-1] = torch.where(target, input_ids[..., 1:], IGNORE_INDEX)
    return labels


def collate(items: list[dict]) -> dict:
    """A batch: token tensors stacked [B, T]; images concatenated [sum n_img, 3, S, S] in batch order;
    uid a list; position and skipped the last item's (a DataLoader batch comes from one worker)."""
    if not items:
        raise ValueError("collate: an empty batch")
    batch = {key: torch.stack([item[key] for item in items]) for key in TOKEN_KEYS}
    batch["images"] = torch.cat([item["images"] for item in items])
    batch["uid"] = [item["uid"] for item in items]
    batch["position"] = items[-1]["position"]
    batch["skipped"] = items[-1]["skipped"]
    return batch


def _stage(stage: StageConfig | int) -> StageConfig:
    if isinstance(stage, StageConfig):
        return stage
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)} or a StageConfig, not {stage!r}")
    return STAGES[stage]


def _broadcast_from_rank0(build):
    """build() on rank 0 only, its result (or its ValueError) sent to every rank, when torch.distributed
    runs with more than one rank; build() here otherwise. broadcast_object_list pickles the value: plain
    lists of ints and a message string, made by this function on rank 0, never read from a file."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return build()
    box, failure = [None], None
    if dist.get_rank() == 0:
        try:
            box = [("ok", build())]
        except Exception as e:  # every rank must leave the broadcast: send the failure, re-raise it here
            failure, box = e, [("value" if isinstance(e, ValueError) else "other", str(e))]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if failure is not None:
        raise failure
    if kind != "ok":
        raise (ValueError if kind == "value" else RuntimeError)(value)
    return [tuple(unit) for unit in value]


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ParquetStream(IterableDataset):
    """The sharded, seeded, resumable row stream; subclasses turn a row into an item (`_make`).

    files: Parquet files (sorted here by path). stage: a StageConfig or 1, 2, 3 (image_size, seq_len).
    seed: the shuffle seed. shuffle: False reads units and rows in file order (still sharded).
    rank, world_size: this process's place in data parallelism (default: torch.distributed's, else
    0 and 1). epochs: None = endless (the default), else the number of passes per reader.
    unit_rows: None = a unit is a whole row group (the default); else row groups of more rows are cut
    into units of at most unit_rows consecutive rows (each unit still reads its whole row group, then
    slices it), for small outputs with fewer row groups than readers.
    """

    dialect = "qwen-vl"  # the token dialect of the rows it reads (formats/dialects.py)

    columns: tuple[str, ...] = ()  # the columns a subclass reads
    reads = ""  # what a subclass reads, as its error messages name it

    def __init__(
        self,
        files: list[str],
        stage: StageConfig | int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        epochs: int | None = None,
        unit_rows: int | None = None,
    ):
        super().__init__()
        self.stage = _stage(stage)
        self.image_size, self.seq_len = self.stage.image_size, self.stage.seq_len
        self.files = sorted(files)
        if not self.files:
            raise ValueError("no Parquet files given")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, not {seed}")
        default_rank, default_world = _distributed()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be None (endless) or >= 1, not {epochs}")
        if unit_rows is not None and unit_rows < 1:
            raise ValueError(f"unit_rows must be None or >= 1, not {unit_rows}")
        self.seed, self.shuffle, self.epochs, self.unit_rows = seed, shuffle, epochs, unit_rows
        self.units: list[tuple[int, int, int, int]] = _broadcast_from_rank0(lambda: self._scan(unit_rows))  # (file, row group, start, stop)
        self.rows = sum(stop - start for _, _, start, stop in self.units)
        if not self.units:
            raise ValueError(f"no rows in {len(self.files)} Parquet file(s)")
        if len(self.units) < self.world_size:
            raise ValueError(
                f"{len(self.units)} units (row groups, or unit_rows slices) for {self.world_size} ranks: every rank "
                "needs at least one; pass a smaller unit_rows"
            )
        self._reset()

    def _scan(self, unit_rows: int | None) -> list[tuple[int, int, int, int]]:
        """The unit list (file index, row group, start, stop), by unit id, from the files' manifest entries
        (formats/parquet_manifest.py: the folder's _manifest.json where it lists a file, else its footer);
        ValueError on a missing column or rows of another dialect."""
        units = []
        entries, _ = layouts(self.files)
        for f, (path, entry) in enumerate(zip(self.files, entries)):
            missing = [c for c in self.columns if c not in entry["columns"]]
            if missing:
                raise ValueError(f"{path}: no column {', '.join(missing)}: stage {self.stage.stage} trains on {self.reads}")
            others = sorted(set(entry["dialects"]) - {self.dialect})
            if others:
                raise ValueError(f"{path}: rows in the {', '.join(others)} dialect: the {self.dialect} model's data is "
                                 f"written with --dialect {self.dialect}")
            for g, n in enumerate(entry["row_groups"]):
                step = unit_rows or max(n, 1)
                units += [(f, g, start, min(start + step, n)) for start in range(0, n, step)]
        return units

    # --- state ------------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._num_workers: int | None = None  # fixed by the first recorded item
        self._next_worker = 0
        self._places: dict[int, tuple[int, int, int]] = {}  # reader -> (epoch, units_done, rows_done)
        self._skipped: dict[int, list[int]] = {}  # reader -> counts in SKIP_REASONS order

    def _fingerprint(self) -> dict:
        return {
            "seed": self.seed,
            "shuffle": self.shuffle,
            "rank": self.rank,
            "world_size": self.world_size,
            "unit_rows": self.unit_rows,
            "units": len(self.units),
            "rows": self.rows,
        }

    def state_dict(self) -> dict:
        """Where the stream stands (plain ints and strings: JSON or torch.save)."""
        return {
            **self._fingerprint(),
            "num_workers": self._num_workers,
            "next_worker": self._next_worker,
            "readers": {
                str(w): {
                    "epoch": e,
                    "units_done": u,
                    "rows_done": r,
                    "skipped": dict(zip(SKIP_REASONS, self._skipped.get(w, [0] * len(SKIP_REASONS)))),
                }
                for w, (e, u, r) in sorted(self._places.items())
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (from state_dict of a dataset over the same files, seed, rank, world_size)."""
        mine = self._fingerprint()
        wrong = [f"{k} {state.get(k)!r} (this dataset: {v!r})" for k, v in mine.items() if state.get(k) != v]
        if wrong:
            raise ValueError("cannot resume: the state was saved with " + ", ".join(wrong))
        self._reset()
        self._num_workers, self._next_worker = state["num_workers"], state["next_worker"]
        for w, place in state["readers"].items():
            self._places[int(w)] = (place["epoch"], place["units_done"], place["rows_done"])
            self._skipped[int(w)] = [place["skipped"].get(reason, 0) for reason in SKIP_REASONS]

    def consumed(self, batch: dict) -> None:
        """Record that the training loop has taken `batch` (or one item): call it for every batch when the
        DataLoader has workers (harmless, and redundant, without)."""
        reader, workers, epoch, units_done, rows_done = (int(v) for v in batch["position"])
        self._record(reader, workers, (epoch, units_done, rows_done), [int(v) for v in batch["skipped"]])

    def _record(self, reader: int, workers: int, place: tuple[int, int, int], skipped: list[int]) -> None:
        if self._num_workers is not None and self._num_workers != workers:
            raise ValueError(f"a batch from a reader of {workers} workers, but this stream has {self._num_workers}")
        self._num_workers = workers
        self._places[reader] = place
        self._skipped[reader] = skipped
        self._next_worker = (reader + 1) % workers

    def skipped(self) -> dict[str, int]:
        """Rows skipped so far per reason, over the recorded readers of this rank."""
        return {reason: sum(counts[i] for counts in self._skipped.values()) for i, reason in enumerate(SKIP_REASONS)}

    # --- reading ----------------------------------------------------------------------------------

    @staticmethod
    def _parquet(path: str) -> pq.ParquetFile:
        return pq.ParquetFile(open_file(path, compression=None))

    def epoch_units(self, epoch: int) -> list[int]:
        """Every unit id in epoch `epoch`'s order."""
        if not self.shuffle:
            return list(range(len(self.units)))
        return np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.units)).tolist()

    def row_order(self, epoch: int, unit: int) -> np.ndarray:
        """The order in which unit `unit`'s rows are read in epoch `epoch`."""
        _, _, start, stop = self.units[unit]
        n = stop - start
        return np.random.default_rng([self.seed, 1, epoch, unit]).permutation(n) if self.shuffle else np.arange(n)

    def _read_unit(self, unit: int) -> pa.Table:
        f, group, start, stop = self.units[unit]
        table = self._parquet(self.files[f]).read_row_group(group, columns=list(self.columns))
        if table.num_rows < stop:
            raise ValueError(f"{self.files[f]}: row group {group} has {table.num_rows} rows, not {stop}: the file changed")
        table = table.slice(start, stop - start)
        self._check_unit(table, self.files[f], group)
        return table

    def _check_unit(self, table: pa.Table, path: str, group: int) -> None:
        """A usage check on a whole row group before its rows are used (packed: the sequence length)."""

    def _make(self, table: pa.Table, row: int) -> dict | str:
        """Row `row` of `table` as an item without position (dict), or the reason it is skipped (str)."""
        raise NotImplementedError

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        if self._num_workers is not None and self._num_workers != workers:
            raise ValueError(
                f"the stream's state was recorded with {self._num_workers} reader(s) per rank (DataLoader "
                f"num_workers {self._num_workers if self._num_workers > 1 else '0 or 1'}), this loader has {workers}: "
                "resume with the same num_workers"
            )
        readers = self.world_size * workers
        if len(self.units) < readers:
            raise ValueError(
                f"{len(self.units)} units (row groups, or unit_rows slices) for {readers} readers ({self.world_size} "
                f"ranks x {workers} workers): every reader needs at least one; pass a smaller unit_rows, or use fewer workers"
            )
        reader = (worker + self._next_worker) % workers
        g = self.rank * workers + reader
        in_process = info is None
        epoch, units_done, rows_done = self._places.get(reader, (0, 0, 0))
        skipped = list(self._skipped.get(reader, [0] * len(SKIP_REASONS)))
        while self.epochs is None or epoch < self.epochs:
            mine = self.epoch_units(epoch)[g::readers]
            made_any = units_done > 0 or rows_done > 0  # a resumed epoch may have yielded already
            for u in range(units_done, len(mine)):
                unit = mine[u]
                table, order = self._read_unit(unit), self.row_order(epoch, unit)
                for r in range(rows_done, len(order)):
                    item = self._make(table, int(order[r]))
                    if r + 1 < len(order):
                        place = (epoch, u, r + 1)
                    elif u + 1 < len(mine):
                        place = (epoch, u + 1, 0)
                    else:
                        place = (epoch + 1, 0, 0)
                    if isinstance(item, str):
                        skipped[SKIP_REASONS.index(item)] += 1
                        continue
                    made_any = True
                    item["position"] = torch.tensor([reader, workers, *place], dtype=torch.long)
                    item["skipped"] = torch.tensor(skipped, dtype=torch.long)
                    if in_process:
                        self._record(reader, workers, place, list(skipped))
                    yield item
                rows_done = 0
            if not made_any and self.epochs is None:  # endless: it would spin forever
                counts = ", ".join(f"{n} {reason}" for reason, n in zip(SKIP_REASONS, skipped))
                raise RuntimeError(f"reader {g} of rank {self.rank}: a whole epoch of its rows gave no sample ({counts})")
            epoch, units_done = epoch + 1, 0

    def __getstate__(self) -> dict:  # for DataLoader workers under spawn: no tokenizer in the pickle
        return {k: v for k, v in self.__dict__.items() if k != "_tokenizer"}


class CaptionStream(ParquetStream):
    """Stage 1: curated rows as caption samples, one per row, padded to the stage's seq_len.

    vocabulary: the qwen.tiktoken file (default: the one the dashscope wheel ships), loaded lazily in
    each worker.
    """

    columns = ("uid", "source", "key", "caption", "image", "lang")
    reads = "curated/ rows (the output of stage1)"

    def __init__(self, files: list[str], stage: StageConfig | int = 1, *, vocabulary: str | None = None, **kwargs):
        self.vocabulary = vocabulary
        super().__init__(files, stage, **kwargs)

    @property
    def tokenizer(self) -> QwenTokenizer:
        tokenizer = getattr(self, "_tokenizer", None)
        if tokenizer is None:
            key = os.fspath(self.vocabulary) if self.vocabulary is not None else ""
            if key not in _TOKENIZERS:
                _TOKENIZERS[key] = QwenTokenizer(self.vocabulary)
            tokenizer = self._tokenizer = _TOKENIZERS[key]
        return tokenizer

    def sample(self, caption: str, lang: str, source: str = "", key: str = "") -> tuple[list[int], list[int]] | str:
        """A caption's ids and loss mask (not padded), or why it is skipped (INVALID, TOO_LONG)."""
        example = Example(CAPTION, source=source, key=key, lang=lang, image=IMAGE_REF, text=caption)
        if check(example) is not None:
            return INVALID
        encoded = self.tokenizer.encode_segments(render(example))
        if len(encoded.ids) > self.seq_len:
            return TOO_LONG
        return encoded.ids, encoded.mask

    def _make(self, table: pa.Table, row: int) -> dict | str:
        def value(name: str):
            return table.column(name)[row].as_py()

        made = self.sample(value("caption") or "", value("lang") or "", value("source") or "", value("key") or "")
        if isinstance(made, str):
            return made
        image = decode_image(value("image"), self.image_size)
        if image is None:
            return BAD_IMAGE
        ids, mask = made
        n, pad = len(ids), self.seq_len - len(ids)
        input_ids = torch.tensor(ids + [PAD_ID] * pad, dtype=torch.long)
        loss_mask = torch.tensor(mask + [0] * pad, dtype=torch.long)
        doc_ids = torch.cat([torch.zeros(n, dtype=torch.long), torch.full((pad,), -1, dtype=torch.long)])
        position_ids = torch.cat([torch.arange(n), torch.arange(pad)])
        return _item(input_ids, loss_mask, doc_ids, position_ids, image.unsqueeze(0), value("uid"))


def _item(input_ids, loss_mask, doc_ids, position_ids, images, uid) -> dict:
    """One training item: the token tensors, their next-token labels, the images, the uid."""
    return {
        "input_ids": input_ids,
        "labels": next_token_labels(input_ids, loss_mask, doc_ids),
        "loss_mask": loss_mask,
        "doc_ids": doc_ids,
        "position_ids": position_ids,
        "images": images,
        "uid": uid or "",
    }


class PackedStream(ParquetStream):
    """Stages 2 and 3: packed rows as written (exactly seq_len tokens each), images preprocessed."""

    columns = ("uid", "input_ids", "loss_mask", "doc_ids", "position_ids", "images")
    reads = "packed/ rows (the output of stage2 or sft)"

    def __init__(self, files: list[str], stage: StageConfig | int = 2, **kwargs):
        super().__init__(files, stage, **kwargs)

    def _check_unit(self, table: pa.Table, path: str, group: int) -> None:
        for name in ("input_ids", "loss_mask", "doc_ids", "position_ids"):
            column = table.column(name)
            lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
            wrong = lengths[lengths != self.seq_len]
            if len(wrong):
                raise ValueError(
                    f"{path}: row group {group}: a row's {name} holds {int(wrong[0])} tokens, not the stage's "
                    f"{self.seq_len} (pack with --seq-len {self.seq_len}, or give the stage that seq_len)"
                )

    def _make(self, table: pa.Table, row: int) -> dict | str:
        def tokens(name: str) -> torch.Tensor:
            return torch.from_numpy(table.column(name)[row].values.to_numpy(zero_copy_only=False).astype(np.int64))

        input_ids, loss_mask, doc_ids, position_ids = map(tokens, ("input_ids", "loss_mask", "doc_ids", "position_ids"))
        encoded = table.column("images")[row].as_py() or []
        if int((input_ids == IMG_ID).sum()) != len(encoded):
            return INVALID
        images = []
        for data in encoded:
            image = decode_image(data, self.image_size)
            if image is None:
                return BAD_IMAGE
            images.append(image)
        size = self.image_size
        stacked = torch.stack(images) if images else torch.empty(0, 3, size, size)
        return _item(input_ids, loss_mask, doc_ids, position_ids, stacked, table.column("uid")[row].as_py())


def reshard_state(states: list[dict], rank: int, world_size: int, num_workers: int) -> tuple[dict, int]:
    """The state of rank `rank` of a new layout (world_size ranks x num_workers DataLoader workers) from
    the states every rank of a saved run wrote (`states[r]`: rank r's `state_dict()`), and how many units
    the new readers read again. The same layout: rank `rank`'s own state, unchanged (0).

    Another layout (a different world size or worker count): reader g of G owns positions g, g + G, ...
    of each epoch's unit order (the order depends on the seed and the epoch only, not on G), so a reader's
    place (epoch, units_done, rows_done) says which positions it has finished. The new readers start
    where the saved readers had together finished a prefix of that order: every position before the
    first one some reader has not finished. When all readers stood at that boundary (rows_done 0, none
    ahead: the lockstep of a run whose every rank takes the same number of units per step, e.g. with
    --unit-rows 1) the continuation is exact: the same rows, in the same steps, as the saved layout would
    have read; otherwise the units read past it (by the readers ahead, or partly) are read again, and the
    count says how many. The skip counts of all saved readers go to rank 0's first reader."""
    fields = ("seed", "shuffle", "unit_rows", "units", "rows")
    first = states[0]
    for r, state in enumerate(states):
        wrong = [f"{k} {state.get(k)!r} (rank 0: {first.get(k)!r})" for k in fields if state.get(k) != first.get(k)]
        if wrong or state.get("rank") != r or state.get("world_size") != len(states):
            raise ValueError(f"cannot resume: the saved data states do not belong to one run (rank {r}: {', '.join(wrong) or 'rank or world_size'})")
    new_workers = max(num_workers, 1)
    saved_workers = {max(state["num_workers"] or 1, 1) for state in states}
    if len(saved_workers) != 1:
        raise ValueError(f"cannot resume: the saved ranks used different worker counts {sorted(saved_workers)}")
    (old_workers,) = saved_workers
    if len(states) == world_size and (old_workers == new_workers or all(not s["readers"] for s in states)):
        return states[rank], 0
    n, old = first["units"], len(states) * old_workers
    ends, partial = [], 0  # per saved reader: the linear index (epoch * n + position) of its first unfinished unit
    for r, state in enumerate(states):
        for w in range(old_workers):
            place = state["readers"].get(str(w), {"epoch": 0, "units_done": 0, "rows_done": 0})
            g = r * old_workers + w
            position = g + place["units_done"] * old
            epoch = place["epoch"] + position // n
            ends.append((g, epoch * n + position % n if position < n else epoch * n + g))
            partial += place["rows_done"] > 0
    boundary = min(end for _, end in ends)
    again = sum(1 for g, end in ends for linear in range(boundary, end) if (linear % n) % old == g) + partial
    epoch, position = divmod(boundary, n)
    new = world_size * new_workers
    readers = {}
    for w in range(new_workers):
        g = rank * new_workers + w
        done = len(range(g, position, new))
        place = (epoch, done) if done < len(range(g, n, new)) else (epoch + 1, 0)
        skipped = {reason: 0 for reason in SKIP_REASONS}
        if rank == 0 and w == 0:
            for state in states:
                for reader in state["readers"].values():
                    for reason in SKIP_REASONS:
                        skipped[reason] += reader["skipped"].get(reason, 0)
        readers[str(w)] = {"epoch": place[0], "units_done": place[1], "rows_done": 0, "skipped": skipped}
    state = {**{k: first[k] for k in fields}, "rank": rank, "world_size": world_size,
             "num_workers": new_workers, "next_worker": 0, "readers": readers}
    return state, again


def stage_stream(stage: StageConfig | int, files: list[str], **kwargs) -> ParquetStream:
    """Stage 1's CaptionStream, or stage 2's / 3's PackedStream, over `files`."""
    config = _stage(stage)
    cls = CaptionStream if config.stage == 1 else PackedStream
    return cls(files, config, **kwargs)
