import pytest

from formats.dynamic_resolution import MAX_PIXELS, MIN_PIXELS, image_grid, image_tokens, smart_resize, video_frames, video_grid
from tests.qwen2vl_reference import reference

PAPER_MIN = 100 * 28 * 28  # the paper's ablation minimum
SMALL_MAX = 256 * 28 * 28

# (height, width, min_pixels, max_pixels): tiny, square, photo, extreme aspect ratios (200 is allowed,
# above is not), above the maximum and below the minimum.
SIZES = [
    (h, w, MIN_PIXELS, MAX_PIXELS)
    for h, w in [
        (1, 1), (2, 3), (10, 10), (13, 15), (27, 27), (28, 28), (42, 42), (55, 57), (56, 56), (100, 37),
        (224, 224), (448, 448), (480, 640), (640, 480), (1080, 1920), (14, 500), (500, 14), (1, 200),
        (200, 1), (28, 5600), (5600, 28), (7, 1400), (20, 3000), (1, 201), (28, 5601), (2800, 4700),
    ]
] + [
    (h, w, PAPER_MIN, SMALL_MAX)
    for h, w in [(1, 1), (224, 224), (300, 300), (1080, 1920), (1920, 1080), (2000, 3000), (30, 5000), (999, 1001)]
]


@pytest.fixture(scope="module")
def resized():
    return dict(zip(SIZES, reference("resize", [list(s) for s in SIZES])))


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}-{lo}-{hi}" for h, w, lo, hi in SIZES])
def test_smart_resize_and_grid_match_transformers(size, resized):
    height, width, min_pixels, max_pixels = size
    expected = resized[size]
    if isinstance(expected, str):  # the reference refused the aspect ratio
        assert "aspect ratio" in expected
        with pytest.raises(ValueError, match="^aspect ratio .* is above 200$"):
            smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
        return
    (h, w), grid = expected
    assert smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels) == (h, w)
    assert image_grid(h, w) == tuple(grid)


def test_resize_cases_cover_both_bounds_and_errors(resized):
    answers = list(resized.values())
    assert sum(isinstance(a, str) for a in answers) == 2
    sizes = [a[0][0] * a[0][1] for a in answers if not isinstance(a, str)]
    assert min(sizes) == MIN_PIXELS and max(sizes) > SMALL_MAX


@pytest.mark.parametrize(
    "height, width, expected",
    [
        (224, 224, (224, 224)),
        (1, 1, (56, 56)),  # scaled up to 4 tokens' area
        (480, 640, (476, 644)),  # each side to its nearest multiple of 28
        (28, 5600, (28, 5600)),
        (4000, 4000, (3584, 3584)),  # floored into 16384 tokens: 128 x 128 merged patches
    ],
)
def test_smart_resize_values(height, width, expected):
    assert smart_resize(height, width) == expected


def test_smart_resize_bad_usage():
    with pytest.raises(ValueError, match="^aspect ratio 201.0 of 1x201 is above 200$"):
        smart_resize(1, 201)
    with pytest.raises(ValueError, match="^image size 0x10: both sides must be at least 1 px$"):
        smart_resize(0, 10)


def test_grids_and_tokens():
    assert image_grid(224, 224) == (1, 16, 16)
    assert image_tokens(image_grid(224, 224)) == 64  # the paper's 224x224 -> 64 tokens
    assert image_tokens(image_grid(476, 644)) == 17 * 23
    assert video_grid(8, 224, 448) == (4, 16, 32)
    assert video_grid(3, 224, 224) == (2, 16, 16)  # the last frame repeated to fill the pair
    assert image_tokens(video_grid(8, 224, 448)) == 4 * 8 * 16


def test_grid_bad_usage():
    with pytest.raises(ValueError, match="^size 224x230 is not a multiple of 28: smart_resize it first$"):
        image_grid(224, 230)
    with pytest.raises(ValueError, match="^0 frames: at least 1$"):
        video_grid(0, 224, 224)
    with pytest.raises(ValueError, match=r"^grid \(1, 3, 4\): height and width must be multiples of 2$"):
        image_tokens((1, 3, 4))


# (total_frames, video_fps): short, long (capped at 768), odd counts, a video with fewer than 4 frames.
VIDEOS = [
    (100, 30.0), (30, 30.0), (10, 1.0), (5, 1.0), (3, 1.0), (2, 25.0), (60, 24.0), (61, 24.0), (600, 30.0),
    (1000, 2.0), (10000, 25.0), (100000, 30.0), (7, 2.0), (9, 3.0), (1, 1.0), (45, 29.97), (1801, 29.97),
]


def test_video_frames_match_qwen_vl_utils():
    expected = reference("nframes", [list(v) for v in VIDEOS])
    for (total, fps), want in zip(VIDEOS, expected):
        if isinstance(want, str):
            with pytest.raises(ValueError, match="^a video of 1 frames is too short"):
                video_frames(total, fps)
        else:
            assert video_frames(total, fps) == want, (total, fps)


def test_video_frames_values():
    assert video_frames(300, 30.0) == 20  # 10 s at 2 fps
    assert video_frames(90, 30.0) == 6  # 3 s: 6 frames
    assert video_frames(30, 30.0) == 4  # 1 s: raised to the minimum 4
    assert video_frames(3, 1.0) == 2  # fewer frames than the minimum: all, floored to a pair
    assert video_frames(100_000, 30.0) == 768  # capped
    assert video_frames(77, 10.0) == 14  # 15.4 floored to an even count
    with pytest.raises(ValueError, match="^a video of 1 frames is too short: fewer than 2 frames to sample$"):
        video_frames(1, 1.0)
    with pytest.raises(ValueError, match="^a video of 10 frames at 0 fps, sampled at 2.0 fps: all must be positive$"):
        video_frames(10, 0)
