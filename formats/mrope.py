"""Qwen2-VL's multimodal rotary position ids, M-RoPE (Qwen2-VL paper, arXiv 2409.12191, §2.1; transformers'
`Qwen2VLModel.get_rope_index`): three ids per token, temporal, height and width.

- A text token at position i has (i, i, i).
- An image or video span (its run of `<|image_pad|>` or `<|video_pad|>`, one per merged patch) takes its
  grid in order: the pad for frame pair t, merged row h and column w has (s + t, s + h, s + w), where s
  is one more than the largest id before it (the `<|vision_start|>` token's + 1); t is 0 for an image.
- The text after it resumes at one more than the largest id of the span.
- In a packed row, each document starts again at 0 (its start index is given).
"""

import numpy as np

from formats.dialects import QWEN2_VL
from formats.dynamic_resolution import MERGE

IMAGE_PAD_ID = QWEN2_VL.special_ids()[QWEN2_VL.image_pad]  # 151655
VIDEO_PAD_ID = QWEN2_VL.special_ids()[QWEN2_VL.video_pad]  # 151656

Grid = tuple[int, int, int]  # (t, h, w) in patches, as the processor's image_grid_thw


def _vision_block(grid: Grid, merge: int) -> np.ndarray:
    """The (t, h, w) offsets of a grid's merged patches, frame pair by frame pair, row by row: (3, t*h*w/merge^2)."""
    t, h, w = grid
    if min(grid) < 1 or h % merge or w % merge:
        raise ValueError(f"grid {tuple(grid)}: positive, with height and width multiples of {merge}")
    return np.indices((t, h // merge, w // merge)).reshape(3, -1)


def mrope_positions(ids, image_grids=(), video_grids=(), doc_starts=(0,), merge: int = MERGE) -> np.ndarray:
    """The (3, len(ids)) M-RoPE position ids of a row of Qwen2-VL token ids.

    `image_grids` and `video_grids` are the (t, h, w) grids of the row's images and videos in order; each
    run of image (video) pads must be exactly one grid's t*h*w/merge^2 pads. `doc_starts` are the indices
    where the packed documents start, 0 first.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    starts = list(doc_starts)
    if n and (not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= n):
        raise ValueError(f"doc_starts {starts}: increasing from 0, each below the row's length {n}")
    is_pad = (ids == IMAGE_PAD_ID) | (ids == VIDEO_PAD_ID)
    changes = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    cuts = sorted({0, *starts, *changes[is_pad[changes] | is_pad[changes - 1]].tolist()} - {n}) + [n]
    grids = {IMAGE_PAD_ID: iter(image_grids), VIDEO_PAD_ID: iter(video_grids)}
    positions = np.empty((3, n), dtype=np.int64)
    next_id = 0
    starts_set = set(starts)
    for a, b in zip(cuts, cuts[1:]):
        if a in starts_set:
            next_id = 0
        if not is_pad[a]:
            positions[:, a:b] = np.arange(next_id, next_id + b - a)
            next_id += b - a
            continue
        kind = "image" if ids[a] == IMAGE_PAD_ID else "video"
        grid = next(grids[ids[a]], None)
        if grid is None:
            raise ValueError(f"the {kind} span at {a} has no {kind} grid left")
        block = _vision_block(grid, merge)
        if block.shape[1] != b - a:
            raise ValueError(f"the {kind} span at {a} has {b - a} pads; its grid {tuple(grid)} needs {block.shape[1]}")
        positions[:, a:b] = block + next_id
        next_id += int(block.max()) + 1
    for pad, kind in ((IMAGE_PAD_ID, "image"), (VIDEO_PAD_ID, "video")):
        if next(grids[pad], None) is not None:
            raise ValueError(f"more {kind} grids than {kind} spans")
    return positions
