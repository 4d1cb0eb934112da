"""Small synthetic videos with known answers, written with PyAV: a square moving over a gradient.

The frame count is `round(seconds * fps)`, and the same arguments give the same bytes: the pattern is
drawn from `seed`, the encoder runs on one thread, libx264 without its macroblock tree. Sides must be
even (yuv420p).

    write_video("clip.mp4", seconds=3, fps=10, width=160, height=120)  # 30 frames, about 7 KB"""

import os
from typing import BinaryIO

import av
import numpy as np

# libx264's macroblock-tree rate control wrote different bytes for the same frames within one process
# (PyAV 18.1's libx264, after other videos were encoded): turned off. B-frames stay.
REPEATABLE = {"libx264": {"x264-params": "mbtree=0"}}


def frame_pattern(index: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Frame `index`'s RGB pixels (height, width, 3): the seed's gradient, its square moved `index` steps."""
    colours = rng.integers(0, 256, (3, 3), dtype=np.uint8)  # the gradient's two ends and the square
    start = rng.integers(0, max(width, height), 2)
    ramp = np.linspace(0.0, 1.0, width)[None, :, None]
    image = (colours[0] * (1 - ramp) + colours[1] * ramp).astype(np.uint8).repeat(height, axis=0)
    side = max(2, min(width, height) // 4)
    x = (start[0] + 4 * index) % max(1, width - side)
    y = (start[1] + 2 * index) % max(1, height - side)
    image[y : y + side, x : x + side] = colours[2]
    return image


def write_video(
    path_or_file: str | os.PathLike | BinaryIO,
    seconds: float,
    fps: int,
    width: int,
    height: int,
    seed: int = 0,
    codec: str = "libx264",
    format: str = "mp4",
    options: dict[str, str] | None = None,
) -> int:
    """Write a `seconds`-long video at `fps` of `width` x `height` to a path or a binary file; return its
    frame count. A path's folder is made when missing. `format` is FFmpeg's container name (mp4,
    matroska, mpegts); `options` go to the muxer (e.g. {"movflags": "faststart"}, which needs a path)."""
    frames = round(seconds * fps)
    if frames < 1 or width % 2 or height % 2:
        raise ValueError(f"{seconds} s at {fps} fps of {width}x{height}: need at least 1 frame and even sides")
    target = path_or_file
    if isinstance(path_or_file, (str, os.PathLike)):
        target = os.fspath(path_or_file)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    with av.open(target, "w", format=format, options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=REPEATABLE.get(codec, {}))
        stream.codec_context.thread_count = 1  # the bytes must not depend on the machine's cores
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            rng = np.random.default_rng(seed)  # the same pattern every frame, moved
            frame = av.VideoFrame.from_ndarray(frame_pattern(index, width, height, rng), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return frames
