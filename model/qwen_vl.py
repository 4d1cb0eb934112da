"""The Qwen-VL model: ViT (model/vision.py) -> adapter (model/adapter.py) -> Qwen LLM (model/llm.py).

Each image in a batch becomes 256 vectors (the adapter's queries); they replace the 256 `<imgpad>`
slots of that image's `<img>...</img>` span in the token embeddings, images taken in batch order and
slots in reading order. Nothing else of the text embeddings changes. The loss is next-token cross
entropy on the supervised tokens only (loss_mask), within documents (model/llm.py `loss`).
"""

import torch
from torch import nn

from formats.tokenizer import IMGPAD_ID
from model.adapter import Adapter
from model.config import ADAPTER, LLM, VISION, ModelConfig
from model.llm import QwenLM
from model.vision import VisionEncoder


class QwenVL(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision)
        self.adapter = Adapter(cfg.adapter, cfg.vision.width, cfg.llm.hidden)
        self.llm = QwenLM(cfg.llm)

    def parts(self) -> dict[str, nn.Module]:
        return {VISION: self.vision, ADAPTER: self.adapter, LLM: self.llm}

    def train_only(self, trainable: tuple[str, ...]) -> None:
        """Freeze every part not named in `trainable` (a stage's preset)."""
        for name, part in self.parts().items():
            part.requires_grad_(name in trainable)

    def set_checkpointing(self, on: bool) -> None:
        """Activation checkpointing per transformer block, in the ViT and the LLM."""
        self.vision.grad_checkpointing = on
        self.llm.checkpointing = on

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] preprocessed images -> [N, queries, hidden]."""
        return self.adapter(self.vision(images), self.vision.grid(images.shape[-1]))

    def embed(self, input_ids: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with every image's slots replaced by its adapter outputs."""
        x = self.llm.embed(input_ids)
        slots = input_ids == IMGPAD_ID
        n_images = 0 if images is None else images.shape[0]
        expected = n_images * self.cfg.adapter.queries
        if int(slots.sum()) != expected:
            raise ValueError(f"{int(slots.sum())} <imgpad> slots in the batch for {n_images} images x {self.cfg.adapter.queries} queries")
        if not n_images:
            return x
        features = self.image_features(images).to(x.dtype)
        return x.masked_scatter(slots.unsqueeze(-1), features.reshape(-1, x.shape[-1]))

    def forward(self, input_ids, position_ids, doc_ids, loss_mask, images=None, document_mask: bool = True, reduction: str = "mean"):
        """The loss of a batch (model/data.py's collate gives these tensors)."""
        hidden = self.llm(self.embed(input_ids, images), position_ids, doc_ids, document_mask=document_mask)
        return self.llm.loss(hidden, input_ids, loss_mask, doc_ids if document_mask else None, reduction=reduction)
