import dataclasses
import io

import imagehash
from PIL import Image

from formats import reasons
from filters.config import load_config
from filters.image_rules import ImageHeader, check_header, decode_phash
from formats.pair import Reject

CFG = load_config(["laion-en"])["laion-en"]


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    return Image.linear_gradient("L").resize((width, height)).convert("RGB")


def test_good_jpeg_gives_size_format_and_phash():
    data = encode(gradient(640, 480))
    assert check_header(data, CFG) == ImageHeader("JPEG", 640, 480)
    phash = decode_phash(check_header(data, CFG).image)
    assert len(phash) == 16
    # the reduced-scale decode hashes like a full decode of the same image, within a bit or two
    assert imagehash.hex_to_hash(phash) - imagehash.phash(Image.open(io.BytesIO(data))) <= 2


def test_good_png():
    data = encode(gradient(300, 200), "PNG")
    assert check_header(data, CFG) == ImageHeader("PNG", 300, 200)
    assert decode_phash(check_header(data, CFG).image) == str(imagehash.phash(Image.open(io.BytesIO(data))))


def test_too_small():
    assert check_header(encode(gradient(199, 400)), CFG) == Reject(reasons.IMAGE_TOO_SMALL, "199x400: shorter side < 200 px")
    assert isinstance(check_header(encode(gradient(200, 400)), CFG), ImageHeader)


def test_aspect_ratio():
    assert check_header(encode(gradient(1000, 300)), CFG) == Reject(reasons.IMAGE_ASPECT_RATIO, "1000x300: ratio > 3")
    assert isinstance(check_header(encode(gradient(900, 300)), CFG), ImageHeader)


def test_decompression_bomb_is_rejected_from_the_header():
    bomb = encode(Image.new("1", (12000, 12000)), "PNG")
    assert len(bomb) < 100_000
    assert check_header(bomb, CFG) == Reject(reasons.IMAGE_DECOMPRESSION_BOMB, "12000x12000 = 144000000 px > 89478485")
    small_limit = dataclasses.replace(CFG, max_image_pixels=640 * 480 - 1)
    assert check_header(encode(gradient(640, 480)), small_limit).reason == reasons.IMAGE_DECOMPRESSION_BOMB


def test_undecodable():
    data = encode(gradient(640, 480))
    assert check_header(b"not an image at all", CFG) == Reject(reasons.IMAGE_UNDECODABLE, "not an image format PIL knows")
    assert check_header(b"", CFG) == Reject(reasons.IMAGE_UNDECODABLE, "not an image format PIL knows")
    header = check_header(data[: len(data) // 2], CFG)
    assert header == ImageHeader("JPEG", 640, 480)  # the header is whole
    truncated = decode_phash(header.image)
    assert truncated.reason == reasons.IMAGE_UNDECODABLE
    assert truncated.detail.startswith("OSError: image file is truncated")
    png = encode(gradient(400, 300), "PNG")
    assert decode_phash(check_header(png[: len(png) // 2], CFG).image).reason == reasons.IMAGE_UNDECODABLE
