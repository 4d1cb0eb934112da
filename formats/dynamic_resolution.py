"""Qwen2-VL's naive dynamic resolution (Qwen2-VL paper, arXiv 2409.12191, §2.1): the size an image is
resized to, its patch grid and its token count; and how many frames of a video are read.

- `smart_resize` is transformers' `Qwen2VLImageProcessor` rule (`image_processing_qwen2_vl.smart_resize`):
  each side rounded to a multiple of 28 (patch 14 x merge 2), then, when the area leaves
  [min_pixels, max_pixels], both sides scaled by the same factor into it (floored above, ceiled below).
- A grid is (t, h, w) in 14 px patches, as the processor's `image_grid_thw`: frames go in pairs (the
  patch embedding is 2 frames deep), an image is one frame repeated, so t = 1.
- The LLM sees one token per 2x2 patches after the MLP merger: t*h*w/4 (224x224 -> 64).
- `video_frames` is qwen-vl-utils' `smart_nframes` (QwenLM/Qwen2-VL, `vision_process.py`) for a sampling
  rate: 2 frames per second, floored to an even count, within [4, 768] and the video's own frames.
"""

import math

PATCH = 14  # ViT patch side, px
MERGE = 2  # the merger joins MERGE x MERGE patches into one token
TEMPORAL = 2  # frames per temporal patch
FACTOR = PATCH * MERGE  # 28: sides are multiples of this
MIN_PIXELS = 4 * FACTOR * FACTOR  # the processor's default: 4 tokens
MAX_PIXELS = 16384 * FACTOR * FACTOR  # the processor's default: 16384 tokens
MAX_ASPECT_RATIO = 200

FPS = 2.0  # frames sampled per second of video
MIN_FRAMES = 4
MAX_FRAMES = 768


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The (height, width) the Qwen2-VL processor resizes an image of this size to."""
    if min(height, width) < 1:
        raise ValueError(f"image size {height}x{width}: both sides must be at least 1 px")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio {ratio} of {height}x{width} is above {MAX_ASPECT_RATIO}")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def video_grid(frames: int, height: int, width: int, patch: int = PATCH, merge: int = MERGE, temporal: int = TEMPORAL) -> tuple[int, int, int]:
    """The (t, h, w) patch grid of `frames` frames of a resized size (the last frame repeated to fill a pair)."""
    if frames < 1:
        raise ValueError(f"{frames} frames: at least 1")
    if height % (patch * merge) or width % (patch * merge):
        raise ValueError(f"size {height}x{width} is not a multiple of {patch * merge}: smart_resize it first")
    return math.ceil(frames / temporal), height // patch, width // patch


def image_grid(height: int, width: int, patch: int = PATCH, merge: int = MERGE, temporal: int = TEMPORAL) -> tuple[int, int, int]:
    """The (1, h, w) patch grid of an image of a resized size."""
    return video_grid(1, height, width, patch, merge, temporal)


def image_tokens(grid: tuple[int, int, int], merge: int = MERGE) -> int:
    """The pad tokens an image (a video) of this grid takes in the LLM: t*h*w / merge^2."""
    t, h, w = grid
    if h % merge or w % merge:
        raise ValueError(f"grid {grid}: height and width must be multiples of {merge}")
    return t * h * w // (merge * merge)


def video_frames(total_frames: int, video_fps: float, fps: float = FPS, min_frames: int = MIN_FRAMES, max_frames: int = MAX_FRAMES) -> int:
    """How many frames qwen-vl-utils samples from a video of `total_frames` at `video_fps`."""
    if total_frames < 1 or video_fps <= 0 or fps <= 0:
        raise ValueError(f"a video of {total_frames} frames at {video_fps} fps, sampled at {fps} fps: all must be positive")
    low = math.ceil(min_frames / TEMPORAL) * TEMPORAL
    high = math.floor(min(max_frames, total_frames) / TEMPORAL) * TEMPORAL
    wanted = total_frames / video_fps * fps
    frames = math.floor(min(max(wanted, low), high, total_frames) / TEMPORAL) * TEMPORAL
    if frames < TEMPORAL:
        raise ValueError(f"a video of {total_frames} frames is too short: fewer than {TEMPORAL} frames to sample")
    return frames
