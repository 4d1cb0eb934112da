"""Image rules of the Qwen-VL stage-1 recipe: decodable, not a decompression bomb, large enough, not too
elongated (the Qwen-VL paper's cleaning of pre-training data, §3.1 and its appendix; docs/recipe.md).

`check_header` reads the header only (format and size, no pixels), so a bomb or a tiny image is rejected
without decoding. `decode_phash` decodes an image that passed, once, to prove its bytes are whole: JPEGs with
libjpeg's DCT scaling (the entropy-coded data is still read to the end, so truncation and corruption
surface) at the smallest scale that keeps 32 px a side, which is also the pHash input. PIL's
LOAD_TRUNCATED_IMAGES stays off: a cut-off image is an error, never grey-filled.
"""

import io
import warnings
from dataclasses import dataclass, field

import imagehash
from PIL import Image, UnidentifiedImageError

from formats import reasons
from filters.config import SourceConfig
from formats.pair import Reject

# Our own max_image_pixels decides what a bomb is; PIL's warning below its hard limit would only be noise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

PHASH_INPUT_PX = 32  # imagehash.phash resizes to 32x32: decoding finer than that buys nothing


@dataclass(frozen=True)
class ImageHeader:
    format: str  # as PIL names it: JPEG, PNG, WEBP, GIF...
    width: int
    height: int
    image: Image.Image | None = field(default=None, compare=False, repr=False)  # opened, not yet decoded


def _decode_error(e: Exception) -> Reject:
    return Reject(reasons.IMAGE_UNDECODABLE, f"{type(e).__name__}: {e}")


def _open(data: bytes) -> Image.Image | Reject:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        return Reject(reasons.IMAGE_DECOMPRESSION_BOMB, str(e))
    except UnidentifiedImageError:
        return Reject(reasons.IMAGE_UNDECODABLE, "not an image format PIL knows")
    except (OSError, SyntaxError, ValueError) as e:
        return _decode_error(e)


def check_header(data: bytes, cfg: SourceConfig) -> ImageHeader | Reject:
    """The image's format and size from its header alone (no pixels decoded), or the rule it fails."""
    image = _open(data)
    if isinstance(image, Reject):
        return image
    width, height = image.size
    if width * height > cfg.max_image_pixels:
        return Reject(reasons.IMAGE_DECOMPRESSION_BOMB, f"{width}x{height} = {width * height} px > {cfg.max_image_pixels}")
    if min(width, height) < cfg.min_side_px:
        return Reject(reasons.IMAGE_TOO_SMALL, f"{width}x{height}: shorter side < {cfg.min_side_px} px")
    if min(width, height) == 0 or max(width, height) / min(width, height) > cfg.max_aspect_ratio:
        return Reject(reasons.IMAGE_ASPECT_RATIO, f"{width}x{height}: ratio > {cfg.max_aspect_ratio:g}")
    return ImageHeader(format=image.format, width=width, height=height, image=image)


def decode_phash(image: Image.Image) -> str | Reject:
    """Decode an image opened by `check_header` once, at the smallest scale that keeps 32 px a side, and
    return its pHash (imagehash, 16 hex digits); a truncated or corrupt image is IMAGE_UNDECODABLE. This
    is where the pixels are paid for, so it runs only on images whose header passed."""
    try:
        image.draft("L", (PHASH_INPUT_PX, PHASH_INPUT_PX))
        image.load()
        return str(imagehash.phash(image))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        return _decode_error(e)
