import io
import random

import av
import numpy as np
import pytest
from PIL import Image

from formats.reasons import IMAGE_ASPECT_RATIO, VIDEO_TOO_SHORT, VIDEO_UNREADABLE
from formats.video import VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, VideoError, frame_plan, read_video
from synthetic.videos import write_video
from tests.qwen2vl_reference import reference


def video(seconds=3, fps=10, width=160, height=120, **kw) -> bytes:
    out = io.BytesIO()
    write_video(out, seconds, fps, width, height, **kw)
    return out.getvalue()


@pytest.fixture(scope="module")
def small():
    return video()  # 30 frames at 10 fps, 160x120


@pytest.fixture(scope="module")
def large():
    return video(width=1280, height=720)  # 30 frames at 10 fps


def cut_off(tmp_path, frames: int) -> bytes:
    """A 30-frame MP4 with its header first, cut after frame `frames`'s packet: the header still says 30."""
    path = tmp_path / "faststart.mp4"
    write_video(path, 3, 10, 160, 120, codec="mpeg4", options={"movflags": "faststart"})  # mpeg4: no B-frames
    data = path.read_bytes()
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].frames == 30
        packets = [p for p in container.demux(video=0) if p.size]
    end = packets[frames - 1].pos + packets[frames - 1].size
    return data[:end]


def jpeg_size(frame: bytes) -> tuple[str, str, tuple[int, int]]:
    image = Image.open(io.BytesIO(frame))
    return image.format, image.mode, image.size


def test_write_video_is_deterministic(small, large):  # large: another video encoded in between
    assert video() == small
    assert video(seed=1) != small
    assert write_video(io.BytesIO(), 3, 10, 160, 120) == 30
    with av.open(io.BytesIO(small)) as container:
        stream = container.streams.video[0]
        assert (stream.frames, stream.average_rate, stream.codec_context.name) == (30, 10, "h264")
        assert [f.to_image().size for f in container.decode(stream)] == [(160, 120)] * 30
    with pytest.raises(ValueError, match=r"^0.01 s at 10 fps of 160x120: need at least 1 frame and even sides$"):
        write_video(io.BytesIO(), 0.01, 10, 160, 120)


def test_small_video(small):
    v = read_video(small)
    # 30 frames / 10 fps * 2 fps = 6 frames; linspace(0, 29, 6) = 0, 5.8, 11.6, 17.4, 23.2, 29
    assert (v.total_frames, v.source_fps, v.indices) == (30, 10.0, [0, 6, 12, 17, 23, 29])
    # 120x160 rounds to 112x168 = 18816 px, below 128 * 28 * 28: scaled up by sqrt(100352 / 19200), ceiled
    assert (v.size, v.grid, v.tokens) == ((280, 392), (3, 20, 28), 420)
    assert [jpeg_size(f) for f in v.frames] == [("JPEG", "RGB", (392, 280))] * 6


@pytest.mark.parametrize(
    "max_tokens, size, grid, tokens",
    [
        (16384, (560, 1008), (3, 40, 72), 2160),  # 768 tokens' area a frame: 728x1288 is above, floored
        (1024, (364, 672), (3, 26, 48), 936),  # 1024 * 784 / 6 * 2 px a frame: within the budget
        (100, (224, 420), (3, 16, 30), 360),  # the floor, int(100352 * 1.05) px a frame, wins over the budget
    ],
)
def test_large_video_token_budget(large, max_tokens, size, grid, tokens):
    v = read_video(large, max_tokens=max_tokens)
    assert (v.total_frames, v.indices, v.size, v.grid, v.tokens) == (30, [0, 6, 12, 17, 23, 29], size, grid, tokens)
    assert [jpeg_size(f) for f in v.frames] == [("JPEG", "RGB", (size[1], size[0]))] * 6


def test_max_pixels_and_fps(large):
    v = read_video(large, max_pixels=VIDEO_MIN_PIXELS * 2, fps=4.0)
    # 12 frames: linspace(0, 29, 12) steps 29/11 = 2.636...
    assert v.indices == [0, 3, 5, 8, 11, 13, 16, 18, 21, 24, 26, 29]
    # 200704 px a frame: 720x1280 scaled by sqrt(200704 / 921600) = 7/15 to 336x597.3, floored to 28s
    assert (v.size, v.grid, v.tokens) == ((336, 588), (6, 24, 42), 1512)


def test_containers_that_do_not_count_frames(small):
    mkv = video(format="matroska")
    ts = video(codec="mpeg4", format="mpegts")
    for data in (mkv, ts):
        with av.open(io.BytesIO(data)) as container:
            assert container.streams.video[0].frames == 0  # counted by decoding
    with av.open(io.BytesIO(ts)) as container:
        assert container.streams.video[0].average_rate is None  # the rate is FFmpeg's guess
    expected = read_video(small)
    for data in (mkv, ts):
        v = read_video(data)
        assert (v.total_frames, v.source_fps, v.indices, v.size, v.grid) == (30, 10.0, expected.indices, (280, 392), (3, 20, 28))
    assert read_video(mkv).frames == expected.frames  # the same H.264 frames in another container


def test_tags_that_are_not_utf8_are_no_obstacle():
    mkv = video(format="matroska")
    bad = mkv.replace(b"Lavf", b"\xff\xfe\xfa\xfb")  # the muxer's name, in the header and in a tag
    assert mkv.count(b"Lavf") == 3
    with pytest.raises(UnicodeDecodeError):
        av.open(io.BytesIO(bad))  # PyAV decodes tags strictly unless told otherwise
    assert read_video(bad).frames == read_video(mkv).frames


def test_cut_off_file_is_planned_on_the_frames_that_decode(tmp_path):
    v = read_video(cut_off(tmp_path, 20))
    # 20 frames / 10 fps * 2 fps = 4 frames (the minimum); linspace(0, 19, 4) = 0, 6.33, 12.67, 19
    assert (v.total_frames, v.indices, len(v.frames)) == (20, [0, 6, 13, 19], 4)
    assert (v.size, v.grid, v.tokens) == ((280, 392), (2, 20, 28), 280)


def test_two_frames_are_one_temporal_patch():
    v = read_video(video(seconds=0.2))
    assert (v.total_frames, v.indices, v.grid, v.tokens) == (2, [0, 1], (1, 20, 28), 140)


def still_gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(out, "GIF")
    return out.getvalue()


@pytest.mark.parametrize("data", [video(seconds=0.1), still_gif()], ids=["mp4", "gif"])
def test_one_frame_is_too_short(data):
    with pytest.raises(VideoError) as e:
        read_video(data)
    assert (e.value.reason, e.value.detail) == (VIDEO_TOO_SHORT, "frames: 1, fewer than 2 to sample")


def image_bytes(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(out, fmt)
    return out.getvalue()


def audio_only() -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


INVALID_DATA = "cannot open: Invalid data found when processing input"


@pytest.mark.parametrize(
    "name, detail",
    [
        ("empty", INVALID_DATA),
        ("random", INVALID_DATA),
        ("truncated", INVALID_DATA),  # the MP4's header (moov) is at its end
        ("png", "an image (png_pipe), not a video"),
        ("jpeg", "an image (jpeg_pipe), not a video"),
        ("wav", "no video stream (wav)"),
    ],
)
def test_unreadable(small, name, detail):
    data = {
        "empty": b"",
        "random": random.Random(0).randbytes(4096),
        "truncated": small[: len(small) // 2],
        "png": image_bytes("PNG"),
        "jpeg": image_bytes("JPEG"),
        "wav": audio_only(),
    }[name]
    with pytest.raises(VideoError) as e:
        read_video(data)
    assert (e.value.reason, e.value.detail) == (VIDEO_UNREADABLE, detail)
    assert isinstance(e.value, ValueError) and str(e.value) == f"video_unreadable: {detail}"


def test_cut_off_h264_fails_to_decode(tmp_path):
    path = tmp_path / "faststart.mp4"
    write_video(path, 3, 10, 160, 120, options={"movflags": "faststart"})
    data = path.read_bytes()
    with pytest.raises(VideoError) as e:
        read_video(data[: len(data) * 4 // 5])  # FFmpeg's H.264 decoder refuses the last, partial packet
    assert (e.value.reason, e.value.detail) == (VIDEO_UNREADABLE, "cannot decode: Invalid data found when processing input")


def test_aspect_ratio():
    with pytest.raises(VideoError) as e:
        read_video(video(seconds=1, width=404, height=2))
    assert (e.value.reason, e.value.detail) == (IMAGE_ASPECT_RATIO, "aspect ratio 202.0 of 2x404 is above 200")


def test_frame_plan_bad_usage():
    with pytest.raises(ValueError, match="^max_pixels 3136 is below min_pixels 100352$"):
        frame_plan(30, 10.0, 120, 160, max_pixels=3136)


# [total_frames, video_fps, height, width, fps, min_pixels, max_pixels, max_tokens]: short and long videos
# (768 frames at most), common and odd rates and sizes, token budgets from the floor to qwen-vl-utils' own.
PLANS = [
    [total, rate, h, w, 2.0, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS, tokens]
    for total, rate in [(2, 10), (3, 30), (5, 25), (30, 10), (31, 29.97), (299, 24), (1801, 60), (40000, 30)]
    for h, w in [(120, 160), (720, 1280), (1080, 1920), (1920, 1080), (2160, 3840), (28, 28), (10, 1990)]
    for tokens in [16384, 1024, 100, 115200]
] + [
    [1, 10, 120, 160, 2.0, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS, 16384],  # too short
    [30, 10, 2, 404, 2.0, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS, 16384],  # aspect ratio above 200
    [600, 30, 720, 1280, 1.0, 4 * 28 * 28, 256 * 28 * 28, 16384],
    [600, 30, 720, 1280, 0.5, 4 * 28 * 28, 256 * 28 * 28, 512],
    [100, 25, 480, 640, 4.0, 16 * 28 * 28, VIDEO_MAX_PIXELS, 2048],
]


FLOAT32_EXACT = 2**23  # below this (total - 1) * (n - 1), torch's float32 linspace rounds as float64 does


@pytest.fixture(scope="module")
def plans():
    return reference("video_size", PLANS)


def test_frame_plan_matches_qwen_vl_utils(plans):
    refused = {}
    for case, expected in zip(PLANS, plans, strict=True):
        total, rate, h, w, fps, min_pixels, max_pixels, tokens = case
        try:
            indices, size = frame_plan(total, rate, h, w, fps, min_pixels, max_pixels, tokens)
        except VideoError as e:
            refused[e.reason] = expected
            continue
        assert list(size) == expected[1] and len(indices) == len(expected[0]), case
        if (total - 1) * (len(indices) - 1) < FLOAT32_EXACT:
            assert indices == expected[0], case
        else:  # the reference's float32 linspace may round a few indices to the neighbouring frame
            assert max(abs(a - b) for a, b in zip(indices, expected[0])) <= 1, case
    assert refused == {
        VIDEO_TOO_SHORT: "nframes should in interval [2, 1], but got 0.",
        IMAGE_ASPECT_RATIO: "absolute aspect ratio must be smaller than 200, got 202.0",
    }
    sizes = {tuple(e[1]) for e in plans if not isinstance(e, str)}
    counts = {len(e[0]) for e in plans if not isinstance(e, str)}
    assert len(plans) == 229 and len(sizes) == 18 and min(counts) == 2 and max(counts) == 768


def decoded(frames: list[bytes]) -> np.ndarray:
    """JPEG frames as the (T, C, H, W) array fetch_video returns."""
    return np.stack([np.asarray(Image.open(io.BytesIO(f))) for f in frames]).transpose(0, 3, 1, 2).astype(np.float32)


def test_read_video_matches_fetch_video(tmp_path, small, large):
    """fetch_video itself (its torchvision backend, which decodes every frame) on files: the same frames
    sampled, the same sizes; pixels within 1 of 255 on average (PIL's bicubic and JPEG against
    torchvision's antialiased bicubic: 0.5 here, where two sampled frames next to each other are 1.8 to 11
    apart)."""
    files = {
        "small": (small, 16384),
        "large": (large, 1024),
        "cut": (cut_off(tmp_path, 20), 16384),  # torchvision's reader, like ours, counts the frames that decode
        "mkv": (video(format="matroska"), 16384),
    }
    cases = []
    for name, (data, tokens) in files.items():
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(data)
        cases.append({"video": str(path), "total_pixels": tokens * 28 * 28, "out": str(path.with_suffix(".npy"))})
    answers = reference("fetch_video", cases)
    assert answers == [
        [[6, 3, 280, 392], [0, 6, 12, 17, 23, 29], 30, 10.0],
        [[6, 3, 364, 672], [0, 6, 12, 17, 23, 29], 30, 10.0],
        [[4, 3, 280, 392], [0, 6, 13, 19], 20, 10.0],
        [[6, 3, 280, 392], [0, 6, 12, 17, 23, 29], 30, 10.0],
    ]
    for (name, (data, tokens)), (shape, indices, total, fps) in zip(files.items(), answers):
        v = read_video(data, max_tokens=tokens)
        assert ([len(v.frames), 3, *v.size], v.indices, v.total_frames, v.source_fps) == (shape, indices, total, fps)
        theirs = np.load(tmp_path / f"{name}.npy").clip(0, 255)
        assert np.abs(decoded(v.frames) - theirs).mean() < 1.0, name
