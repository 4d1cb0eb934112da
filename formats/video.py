"""Read a video for the Qwen2-VL dialect, with PyAV (FFmpeg): which frames, at what size, as JPEG.

The rules are qwen-vl-utils 0.0.14's `fetch_video` (QwenLM/Qwen2-VL, `vision_process.py`):
- frames to sample: `video_frames` (its `smart_nframes`): 2 per second, an even count within [4, 768]
  and the video's own frames;
- which: `linspace(0, total - 1, n).round()`, so the first and the last frame are always sampled. We
  compute it in float64; qwen-vl-utils in torch's float32, which can pick a neighbouring frame for a few
  indices once (total - 1) * (n - 1) reaches about 2^23 (videos over some 11,000 frames);
- the per-frame pixel budget: `max(min(VIDEO_MAX_PIXELS, total_pixels / n * 2), int(min_pixels * 1.05))`,
  capped by `max_pixels`, with total_pixels = max_tokens * 28 * 28, so the video's tokens
  (n/2 * h/28 * w/28) stay within max_tokens unless the per-frame floor wins (long videos, small budgets);
- the size: `smart_resize(h, w, min_pixels, budget)`; qwen-vl-utils' own copy of it differs from
  transformers' (ours) only for a side of 14 px or less, which the default min_pixels never reaches.

Choices where the reference leaves one, or where we differ:
- The total is the container's frame count (an MP4's sample table, as decord and torchcodec read it);
  when it gives none (Matroska, WebM, MPEG-TS) the frames are counted by decoding them. When fewer frames
  decode than it promised (a cut-off file), the frames that decode are the video: planned again on them.
- The source rate is the stream's average frame rate (as torchvision and decord), else FFmpeg's guess.
- `max_tokens` defaults to 16384, an image's cap (MAX_PIXELS); qwen-vl-utils' is 90% of 128000 (115200).
- Frames are resized with PIL's bicubic filter, where qwen-vl-utils uses torchvision's bicubic with
  antialias: pixels may differ slightly; sizes, counts and indices are exact. Rotation metadata and
  non-square pixels are not applied (neither reader does), nor a start or end time.
- An image FFmpeg reads as a one-frame stream (PNG, JPEG, ...) is not a video; cover art is not a stream.

Cost per video: the header, then every frame decoded up to the last one sampled, which is the last
frame: one full decode (two when the frames must be counted first). Memory: one decoded frame at a time
and the sampled frames as JPEG.
"""

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from formats.dynamic_resolution import FACTOR, FPS, MAX_PIXELS, TEMPORAL, image_tokens, smart_resize, video_frames, video_grid
from formats.reasons import IMAGE_ASPECT_RATIO, VIDEO_TOO_SHORT, VIDEO_UNREADABLE

VIDEO_MIN_PIXELS = 128 * FACTOR * FACTOR  # qwen-vl-utils' VIDEO_MIN_TOKEN_NUM: a frame is at least 128 tokens' area
VIDEO_MAX_PIXELS = 768 * FACTOR * FACTOR  # its VIDEO_MAX_TOKEN_NUM: at most 768
MAX_TOKENS = MAX_PIXELS // (FACTOR * FACTOR)  # a whole video's token budget: 16384, an image's cap
JPEG_QUALITY = 95


class VideoError(ValueError):
    """A video that cannot be used: `reason` is VIDEO_UNREADABLE, VIDEO_TOO_SHORT or IMAGE_ASPECT_RATIO."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Video:
    """A video as Qwen2-VL sees it: the frames sampled and resized, their patch grid."""

    frames: list[bytes]  # the sampled frames, JPEG (quality 95) at `size`
    grid: tuple[int, int, int]  # (t, h, w) in 14 px patches; t = len(frames) / 2
    size: tuple[int, int]  # (height, width) the frames were resized to, multiples of 28
    indices: list[int]  # the sampled frames' positions among the decoded frames, from 0
    source_fps: float  # the stream's frame rate
    total_frames: int  # the video's frames

    @property
    def tokens(self) -> int:
        """The `<|video_pad|>` tokens the video takes."""
        return image_tokens(self.grid)


def frame_plan(
    total_frames: int,
    source_fps: float,
    height: int,
    width: int,
    fps: float = FPS,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    max_tokens: int = MAX_TOKENS,
) -> tuple[list[int], tuple[int, int]]:
    """The indices of the frames to sample and the (height, width) to resize them to, as `fetch_video`
    picks them for a video of `total_frames` at `source_fps` of height x width."""
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels {max_pixels} is below min_pixels {min_pixels}")
    if total_frames < TEMPORAL:
        raise VideoError(VIDEO_TOO_SHORT, f"frames: {total_frames}, fewer than {TEMPORAL} to sample")
    count = video_frames(total_frames, source_fps, fps)
    indices = np.linspace(0, total_frames - 1, count).round().astype(int).tolist()
    budget = max(min(VIDEO_MAX_PIXELS, max_tokens * FACTOR * FACTOR / count * TEMPORAL), int(min_pixels * 1.05))
    try:
        size = smart_resize(height, width, min_pixels=min_pixels, max_pixels=min(max_pixels, budget))
    except ValueError as e:  # the aspect ratio: the sides are at least 1 px
        raise VideoError(IMAGE_ASPECT_RATIO, str(e)) from e
    return indices, size


def read_video(
    data: bytes,
    fps: float = FPS,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    max_tokens: int = MAX_TOKENS,
) -> Video:
    """The frames of the video file in `data` that Qwen2-VL sees, resized, as JPEG; VideoError if none."""
    counted, source_fps, height, width = _probe(data)

    def plan(total: int) -> tuple[list[int], tuple[int, int]]:
        if total == 0:
            raise VideoError(VIDEO_UNREADABLE, "no frame decodes")
        return frame_plan(total, source_fps, height, width, fps, min_pixels, max_pixels, max_tokens)

    total = counted or _count_frames(data)
    indices, size = plan(total)
    frames, decoded = _sample(data, indices, size)
    if len(frames) < len(indices):  # fewer frames decode than the container counts: they are the video
        total = decoded
        indices, size = plan(total)
        frames, _ = _sample(data, indices, size)
    return Video(frames, video_grid(len(frames), *size), size, indices, source_fps, total)


@contextmanager
def _video_stream(data: bytes) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """The container in `data` and its video stream; FFmpeg's errors, here or in the with block, as VideoError."""
    step = "open"
    try:
        with av.open(io.BytesIO(data), metadata_errors="replace") as container:  # tags we do not read
            stream = _first_video(container)
            step = "decode"
            yield container, stream
    except av.FFmpegError as e:
        raise VideoError(VIDEO_UNREADABLE, f"cannot {step}: {e.strerror}") from e


def _first_video(container: av.container.InputContainer) -> av.VideoStream:
    """The first video stream that is not cover art; VideoError if there is none or the file is an image."""
    name = container.format.name
    if name.endswith("_pipe") or name in ("image2", "image2pipe"):  # FFmpeg's demuxers of single images
        raise VideoError(VIDEO_UNREADABLE, f"an image ({name}), not a video")
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise VideoError(VIDEO_UNREADABLE, f"no video stream ({name})")
    return streams[0]


def _probe(data: bytes) -> tuple[int, float, int, int]:
    """The container's frame count (0: it does not say), the frame rate, height and width."""
    with _video_stream(data) as (_, stream):
        rate = stream.average_rate or stream.guessed_rate
        height, width = stream.codec_context.height, stream.codec_context.width
        if not rate or rate <= 0 or height < 1 or width < 1:
            raise VideoError(VIDEO_UNREADABLE, f"no frame rate or size: {rate} fps, {width}x{height}")
        return stream.frames, float(rate), height, width


def _count_frames(data: bytes) -> int:
    """How many frames decode."""
    with _video_stream(data) as (container, stream):
        return sum(1 for _ in container.decode(stream))


def _sample(data: bytes, indices: list[int], size: tuple[int, int]) -> tuple[list[bytes], int]:
    """The frames at `indices` as JPEG resized to `size`, and how many frames were decoded (all of them when
    the stream ends before the last index)."""
    wanted = set(indices)
    frames, decoded = [], 0
    with _video_stream(data) as (container, stream):
        for frame in container.decode(stream):
            if decoded in wanted:
                frames.append(_jpeg(frame, size))
            decoded += 1
            if len(frames) == len(wanted):
                break
    return frames, decoded


def _jpeg(frame: av.VideoFrame, size: tuple[int, int]) -> bytes:
    """A frame in RGB, resized to size = (height, width) with PIL's bicubic filter, as JPEG."""
    height, width = size
    image = frame.to_image().resize((width, height), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
