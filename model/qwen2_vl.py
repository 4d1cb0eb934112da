"""The Qwen2-VL model: vision tower (model/qwen2_vision.py) -> Qwen2 decoder with M-RoPE (model/qwen2_llm.py).

Images and videos go through the vision tower separately (as transformers' `Qwen2VLModel.forward`):
the image tokens, image after image, replace the `<|image_pad|>` embeddings of the batch in reading
order, and the video tokens the `<|video_pad|>` embeddings. Every other embedding is the token's own.
Position ids are M-RoPE's [3, B, T] (formats/mrope.py `mrope_positions`, per document); the loss is
next-token cross entropy on the supervised tokens only (loss_mask), within documents (model/llm.py).

Parameter names are the released checkpoint's (Hugging Face Qwen/Qwen2-VL-*-Instruct, the layout
transformers 4.57 still reads and writes through `Qwen2VLForConditionalGeneration._checkpoint_conversion_mapping`)
under our two parts: `visual.<k>` <-> `vision.<k>`, `model.<k>` <-> `llm.<k>`, `lm_head.weight` <->
`llm.lm_head.weight` (absent when the embeddings are tied): `hf_key`, `to_hf_key`.
"""

import torch
from torch import nn

from formats.mrope import IMAGE_PAD_ID, VIDEO_PAD_ID
from model.config import LLM, VISION, Qwen2VLConfig
from model.llm import RMSNorm
from model.qwen2_llm import Qwen2LM
from model.qwen2_vision import INIT_STD, Grid, Qwen2VisionTower


class Qwen2VL(nn.Module):
    def __init__(self, cfg: Qwen2VLConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = Qwen2VisionTower(cfg.vision, cfg.llm.hidden)
        self.llm = Qwen2LM(cfg.llm)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Qwen2-VL's init (transformers' `_init_weights` with initializer_range 0.02): Linear, Conv3d and
        Embedding weights N(0, 0.02), biases 0, norms 1 (and LayerNorm biases 0)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv3d, nn.Embedding)):
                m.weight.normal_(0.0, INIT_STD)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, (nn.LayerNorm, RMSNorm)):
                m.weight.fill_(1.0)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()

    def parts(self) -> dict[str, nn.Module]:
        """What a stage trains or freezes: the vision tower (its merger included) and the LLM."""
        return {VISION: self.vision, LLM: self.llm}

    def train_only(self, trainable: tuple[str, ...]) -> None:
        """Freeze every part not named in `trainable` (a stage's preset)."""
        for name, part in self.parts().items():
            part.requires_grad_(name in trainable)

    def set_checkpointing(self, on: bool) -> None:
        """Activation checkpointing per block, in the vision tower and the LLM."""
        self.vision.checkpointing = self.llm.checkpointing = on

    def vision_tokens(self, images: torch.Tensor | None, image_grids: list[Grid], videos: torch.Tensor | None, video_grids: list[Grid]) -> tuple[torch.Tensor, torch.Tensor]:
        """The LLM tokens of the batch's images and of its videos, from one pass of the vision tower over
        both (each image and frame pair attends only to itself, so one pass equals one per kind, and every
        rank runs the tower once per batch)."""
        patches = [p for p, grids in ((images, image_grids), (videos, video_grids)) if len(grids)]
        tokens = self.vision(torch.cat(patches), [*image_grids, *video_grids])
        merge = self.cfg.vision.spatial_merge_size ** 2
        n_image = sum(t * h * w for t, h, w in image_grids) // merge
        return tokens[:n_image], tokens[n_image:]

    def embed(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None = None,
        image_grids: list[Grid] = (),
        videos: torch.Tensor | None = None,
        video_grids: list[Grid] = (),
    ) -> torch.Tensor:
        """Token embeddings [B, T, H] with the vision tokens in the pad slots. `images` are the patches of
        every image of the batch in order ([N, C*T*p*p], model/qwen2_vision.py), `image_grids` their grids;
        likewise `videos`."""
        x = self.llm.embed(input_ids)
        if not (len(image_grids) or len(video_grids)):
            tokens = (x.new_zeros(0, x.shape[-1]),) * 2
        else:
            tokens = self.vision_tokens(images, image_grids, videos, video_grids)
        for pad, kind, found, grids in ((IMAGE_PAD_ID, "image", tokens[0], image_grids), (VIDEO_PAD_ID, "video", tokens[1], video_grids)):
            slots = input_ids == pad
            if int(slots.sum()) != found.shape[0]:
                raise ValueError(f"{int(slots.sum())} {kind} pad slots in the batch for {len(grids)} {kind}s of {found.shape[0]} tokens")
            if len(grids):
                x = x.masked_scatter(slots.unsqueeze(-1), found.to(x.dtype))
        return x

    def hidden(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        image_grids: list[Grid] = (),
        videos: torch.Tensor | None = None,
        video_grids: list[Grid] = (),
        document_mask: bool = True,
    ) -> torch.Tensor:
        """The decoder's final hidden states [B, T, H] of a batch (`embed`, then the LLM)."""
        x = self.embed(input_ids, images, image_grids, videos, video_grids)
        return self.llm(x, position_ids, doc_ids, document_mask=document_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        doc_ids: torch.Tensor | None,
        loss_mask: torch.Tensor,
        images: torch.Tensor | None = None,
        image_grids: list[Grid] = (),
        videos: torch.Tensor | None = None,
        video_grids: list[Grid] = (),
        document_mask: bool = True,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """The loss of a batch: input_ids, doc_ids and loss_mask [B, T], position_ids [3, B, T]."""
        hidden = self.hidden(input_ids, position_ids, doc_ids, images, image_grids, videos, video_grids, document_mask)
        return self.llm.loss(hidden, input_ids, loss_mask, doc_ids if document_mask else None, reduction=reduction)


# released checkpoint prefix -> ours
_HF_PREFIXES = (("visual.", "vision."), ("model.", "llm."), ("lm_head.", "llm.lm_head."))


def hf_key(name: str) -> str | None:
    """A released Qwen2-VL checkpoint key -> our parameter name; None for a key outside its three parts."""
    for theirs, ours in _HF_PREFIXES:
        if name.startswith(theirs):
            return ours + name.removeprefix(theirs)
    return None


def to_hf_key(name: str) -> str:
    """Our parameter name -> the released checkpoint's key (the inverse of `hf_key`)."""
    for theirs, ours in sorted(_HF_PREFIXES, key=lambda p: -len(p[1])):  # llm.lm_head. before llm.
        if name.startswith(ours):
            return theirs + name.removeprefix(ours)
    raise KeyError(f"not a Qwen2VL parameter: {name!r}")
