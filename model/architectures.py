"""The trainer's model plug-ins: one entry per model family, everything the training loop
(model/train.py) and the parallelism (model/parallel.py) need to know about a model, so that adding a
family adds an entry here and touches neither.

An entry (`Architecture`) says:

    name          the family ("qwen-vl"); ARCHITECTURES is keyed by it
    config_type   its model config class (model/config.py): `for_model(cfg.model)` finds the entry
    parts         the parts a stage may train or freeze (--trainable)
    stages        its stage presets, by number (model/config.py STAGES, QWEN2_VL_STAGES)
    build(model_cfg, stage) -> nn.Module
                  the model as trained: forward(*the batch's values in batch_keys order) -> the micro-batch's
                  *summed* loss over its supervised targets; the stage's parts trainable, the others
                  frozen; every rank runs the same collectives whatever its batch holds (Qwen-VL: the
                  vision path always runs). It must build on the meta device (resume builds it there,
                  shards it, then loads the checkpoint's shards) and keep all its buffers persistent
                  (in the state dict: a meta-built model gets them from the checkpoint).
    blocks(model) -> list[nn.Module]
                  the repeated blocks: compiled (--compile), recomputed in backward (--checkpointing,
                  via set_checkpointing) and each made an FSDP2 unit (--fsdp), in model/parallel.py
    set_checkpointing(model, on)
    inits         {option name: loader(model, path) -> report}: the --init-* options this family takes
                  (model/weights.py); any other given is a usage error
    stream(model_cfg, stage, files, **kwargs) -> ParquetStream
                  the data stream of a stage's rows (model/data.py): seed, rank, world_size, unit_rows
                  in kwargs; its items carry batch_keys
    collate(items) -> batch dict
    batch_keys    the batch's values the model's forward takes, in order (tensors go to the device,
                  anything else, such as a list of image grids, as it is)
    check_stage(stage, model_cfg) -> str | None
                  a usage problem of this stage with this model (one line), or None
    count_images(batch) -> int
                  the images of a batch, for the metrics

Two entries: QWEN_VL (model/qwen_vl.py) and QWEN2_VL (model/qwen2_vl.py: the vision tower run once per
micro-batch over its images and videos together, on a blank 2x2 patch grid when it has none; its rows
read by model/qwen2_vl_data.py). Registering an entry makes --preset take its presets
(model/config.py PRESETS, QWEN2_VL_PRESETS: `model_presets`) and --stage its stage presets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from model.config import ADAPTER, LLM, QWEN2_VL_STAGES, STAGES, VISION, ModelConfig, Qwen2VLConfig, StageConfig
from model.qwen2_vl import Qwen2VL
from model.qwen_vl import QwenVL


@dataclass(frozen=True)
class Architecture:
    """One model family as the trainer sees it (the module docstring details each field)."""

    name: str  # the family: the key in ARCHITECTURES
    config_type: type  # its model config class: for_model() matches on it
    parts: tuple[str, ...]  # what --trainable names
    stages: dict[int, StageConfig]  # the stage presets --stage picks from
    build: Callable[[object, StageConfig], nn.Module]  # (model config, stage) -> the model as trained (meta-buildable)
    blocks: Callable[[nn.Module], list[nn.Module]]  # the units to compile, recompute and shard
    set_checkpointing: Callable[[nn.Module, bool], None]  # activation checkpointing per block, on or off
    inits: dict[str, Callable]  # --init-* option (underscored) -> loader(model, path) -> report
    stream: Callable  # (model config, stage, files, **kwargs) -> the stage's ParquetStream
    collate: Callable[[list[dict]], dict]  # items -> a batch
    batch_keys: tuple[str, ...]  # the batch's tensors the forward takes, in order
    check_stage: Callable[[StageConfig, object], str | None]  # (stage, model config) -> a usage problem or None
    count_images: Callable[[dict], int]  # a batch's images (the metrics' `images`)


# --- Qwen-VL ----------------------------------------------------------------------------------------------


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


def _build_qwen_vl(cfg: ModelConfig, stage: StageConfig) -> TrainModel:
    model = TrainModel(cfg, stage.image_size)
    model.train_only(stage.trainable)
    return model


def _qwen_vl_blocks(model: TrainModel) -> list[nn.Module]:
    return list(model.vision.trunk.transformer.resblocks) + list(model.llm.h)


def _qwen_vl_stream(cfg: ModelConfig, stage: StageConfig, files: list[str], **kwargs):
    from model.data import stage_stream

    return stage_stream(stage, files, **kwargs)


def _qwen_vl_collate(items: list[dict]) -> dict:
    from model.data import collate

    return collate(items)


def _lazy_loader(name: str) -> Callable:
    """model/weights.py's `name`, imported when first called."""

    def load(model, path):
        from model import weights

        return getattr(weights, name)(model, path)

    load.__name__ = name
    return load


def _qwen_vl_inits() -> dict[str, Callable]:
    names = {"init": "load_own", "init_qwen_vl": "load_qwen_vl", "init_vision": "load_openclip_vision", "init_llm": "load_hf_qwen_llm"}
    return {option: _lazy_loader(name) for option, name in names.items()}


def _qwen_vl_check(stage: StageConfig, cfg: ModelConfig) -> str | None:
    if VISION in stage.trainable and stage.vit_layer_decay == 0:
        return "--vit-layer-decay 0 freezes the ViT, but the stage trains it (trainable includes vision)"
    if stage.image_size % cfg.vision.patch:
        return f"--image-size {stage.image_size} is not a multiple of the patch size {cfg.vision.patch}"
    return None


QWEN_VL = Architecture(
    name="qwen-vl",
    config_type=ModelConfig,
    parts=(VISION, ADAPTER, LLM),
    stages=STAGES,
    build=_build_qwen_vl,
    blocks=_qwen_vl_blocks,
    set_checkpointing=lambda model, on: model.set_checkpointing(on),
    inits=_qwen_vl_inits(),
    stream=_qwen_vl_stream,
    collate=_qwen_vl_collate,
    batch_keys=("input_ids", "position_ids", "doc_ids", "loss_mask", "images"),
    check_stage=_qwen_vl_check,
    count_images=lambda batch: int(batch["images"].shape[0]),
)



# --- Qwen2-VL ---------------------------------------------------------------------------------------------


class Qwen2VLTrainModel(Qwen2VL):
    """Qwen2VL whose forward returns the *summed* loss of a micro-batch, and which runs the vision tower
    once per micro-batch whatever it holds: over its images and videos together, or over one blank 2x2
    patch grid (its token times 0 added to the loss) when it has none, so that every rank uses every
    trainable parameter and runs the same FSDP collectives in the same order."""

    def forward(self, input_ids, position_ids, doc_ids, loss_mask, images=None, image_grids=(), videos=None, video_grids=()):
        unused = 0.0
        if not (len(image_grids) or len(video_grids)):
            m = self.cfg.vision.spatial_merge_size
            blank = torch.zeros(m * m, self.cfg.vision.patch_values, device=input_ids.device)
            unused = self.vision(blank, [(1, m, m)]).float().sum() * 0.0
        loss = super().forward(input_ids, position_ids, doc_ids, loss_mask, images, image_grids, videos, video_grids, reduction="sum")
        return loss + unused


def _build_qwen2_vl(cfg: Qwen2VLConfig, stage: StageConfig) -> Qwen2VLTrainModel:
    model = Qwen2VLTrainModel(cfg)
    model.train_only(stage.trainable)
    return model


def _qwen2_vl_stream(cfg: Qwen2VLConfig, stage: StageConfig, files: list[str], **kwargs):
    from model.qwen2_vl_data import Qwen2VLPackedStream

    return Qwen2VLPackedStream(files, stage, cfg.vision, **kwargs)


def _qwen2_vl_collate(items: list[dict]) -> dict:
    from model.qwen2_vl_data import collate

    return collate(items)


def _qwen2_vl_check(stage: StageConfig, cfg: Qwen2VLConfig) -> str | None:
    if VISION in stage.trainable and stage.vit_layer_decay == 0:
        return "--vit-layer-decay 0 freezes the ViT, but the stage trains it (trainable includes vision)"
    return None


QWEN2_VL = Architecture(
    name="qwen2-vl",
    config_type=Qwen2VLConfig,
    parts=(VISION, LLM),
    stages=QWEN2_VL_STAGES,
    build=_build_qwen2_vl,
    blocks=lambda model: [*model.vision.blocks, *model.llm.layers],
    set_checkpointing=lambda model, on: model.set_checkpointing(on),
    inits={"init": _qwen_vl_inits()["init"], "init_qwen2_vl": _lazy_loader("load_qwen2_vl")},
    stream=_qwen2_vl_stream,
    collate=_qwen2_vl_collate,
    batch_keys=("input_ids", "position_ids", "doc_ids", "loss_mask", "images", "image_grids", "videos", "video_grids"),
    check_stage=_qwen2_vl_check,
    count_images=lambda batch: len(batch["image_grids"]) + len(batch["video_grids"]),
)

ARCHITECTURES: dict[str, Architecture] = {QWEN_VL.name: QWEN_VL, QWEN2_VL.name: QWEN2_VL}


def model_presets() -> dict[str, object]:
    """The model presets (model/config.py) of the registered families, by name: what --preset takes."""
    from model import config

    every = {**config.PRESETS, **config.QWEN2_VL_PRESETS}
    return {name: cfg for name, cfg in every.items() if any(type(cfg) is arch.config_type for arch in ARCHITECTURES.values())}


def for_model(model_cfg) -> Architecture:
    """The entry whose config_type is the model config's class (a ValueError naming the families)."""
    for arch in ARCHITECTURES.values():
        if type(model_cfg) is arch.config_type:
            return arch
    raise ValueError(f"no trainer plug-in for a {type(model_cfg).__name__} model (families: {', '.join(ARCHITECTURES)})")
