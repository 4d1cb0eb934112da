"""Stages 2 and 3 of Qwen2-VL: packed rows of the qwen2-vl dialect (pipelines/stage2.py --dialect qwen2-vl)
as training items, and their batches.

A row holds exactly seq_len tokens, each image's bytes with its stored resized size (`image_sizes`) and
grid, each video's sampled frames (already resized) with its grid, and the M-RoPE position ids
(formats/mrope.py). An item is the row's tokens, its [3, T] position ids, and the flattened patches of
its images and of its videos (model/qwen2_vision.py), with their grids. A row is skipped, counted, when
an image or frame does not decode (`bad_image`), or when its grids, pads or position ids disagree
(`invalid`: a patch grid other than the stored one, pad counts other than the grids' tokens).

A batch (`collate`): tokens stacked [B, T], position ids [3, B, T], every image's patches concatenated in
batch order with their grids (row 0's images first: the order the model fills `<|image_pad|>` slots in),
likewise the videos.
"""

import numpy as np
import pyarrow as pa
import torch

from formats.dynamic_resolution import image_tokens
from formats.mrope import IMAGE_PAD_ID, VIDEO_PAD_ID
from model.config import Qwen2VisionConfig, StageConfig
from model.data import BAD_IMAGE, INVALID, TOKEN_KEYS, PackedStream, _item
from model.qwen2_vision import image_patches, video_patches

QWEN2_VL_COLUMNS = ("image_sizes", "image_grid_thw", "videos", "video_grid_thw", "mrope_position_ids")


class Qwen2VLPackedStream(PackedStream):
    """Packed qwen2-vl rows as items; `vision` sets the patching (patch size, merge, frames per patch)."""

    columns = PackedStream.columns + QWEN2_VL_COLUMNS
    dialect = "qwen2-vl"

    def __init__(self, files: list[str], stage: StageConfig | int, vision: Qwen2VisionConfig, **kwargs):
        super().__init__(files, stage, **kwargs)
        self.vision = vision

    def _make(self, table: pa.Table, row: int) -> dict | str:
        def column(name: str):
            return table.column(name)[row].as_py() or []

        def tokens(name: str) -> torch.Tensor:
            return torch.from_numpy(table.column(name)[row].values.to_numpy(zero_copy_only=False).astype(np.int64))

        input_ids, loss_mask, doc_ids = map(tokens, ("input_ids", "loss_mask", "doc_ids"))
        mrope = torch.tensor(column("mrope_position_ids"), dtype=torch.long)
        if tuple(mrope.shape) != (3, len(input_ids)):
            return INVALID
        try:
            images = [image_patches(data, tuple(size), self.vision) for data, size in zip(column("images"), column("image_sizes"))]
            videos = [video_patches(frames, self.vision) for frames in column("videos")]
        except Exception:  # PIL on bytes that are not an image; frames of different sizes
            return BAD_IMAGE
        for found, stored, pad in ((images, column("image_grid_thw"), IMAGE_PAD_ID), (videos, column("video_grid_thw"), VIDEO_PAD_ID)):
            grids = [grid for _, grid in found]
            pads = sum(image_tokens(grid, self.vision.spatial_merge_size) for grid in grids)
            if grids != [tuple(g) for g in stored] or int((input_ids == pad).sum()) != pads:
                return INVALID
        item = _item(input_ids, loss_mask, doc_ids, mrope, self._joined(images), table.column("uid")[row].as_py())
        item.update(image_grids=[g for _, g in images], videos=self._joined(videos), video_grids=[g for _, g in videos])
        return item

    def _joined(self, found: list[tuple[torch.Tensor, tuple]]) -> torch.Tensor:
        """The patches of several images (videos) one after another: [N, C*T*p*p]."""
        return torch.cat([patches for patches, _ in found]) if found else torch.empty(0, self.vision.patch_values)


def collate(items: list[dict]) -> dict:
    """A batch: tokens stacked [B, T], position ids [3, B, T], images and videos concatenated in batch
    order with their grids; uid a list; position and skipped the last item's."""
    if not items:
        raise ValueError("collate: an empty batch")
    batch = {key: torch.stack([item[key] for item in items]) for key in TOKEN_KEYS if key != "position_ids"}
    batch["position_ids"] = torch.stack([item["position_ids"] for item in items], dim=1)
    for kind, grids in (("images", "image_grids"), ("videos", "video_grids")):
        batch[kind] = torch.cat([item[kind] for item in items])
        batch[grids] = [grid for item in items for grid in item[grids]]
    batch["uid"] = [item["uid"] for item in items]
    batch["position"] = items[-1]["position"]
    batch["skipped"] = items[-1]["skipped"]
    return batch
