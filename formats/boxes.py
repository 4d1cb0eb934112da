"""Boxes and quads from a data set's pixels to Qwen-VL's [0, 1000) integer grid (Qwen-VL paper §2.2).

A coordinate is the pixel value divided by the image width (x) or height (y), times 1000. Rounding is
one rule everywhere: floor, clamped to 0..999 (so x = width, the right edge, is 999). A float is taken
as the decimal the data set wrote (Python's shortest repr), so 72.3 px in a 723 px wide image is
exactly 100, never 99 by binary rounding.

Bad geometry is rejected with a `BoxError` naming the failure, never fixed silently:
- `box_malformed`: not 4 numbers (a box) or 4 points of 2 numbers (a quad);
- `box_not_finite`: a NaN or infinite coordinate;
- `box_inverted`: x2 < x1 or y2 < y1; a quad whose corners run counter-clockwise (on screen, y down);
- `box_degenerate`: zero width or height (a quad: zero area), in pixels, or on the 1000 grid after
  flooring (a box too thin to show at 1/1000 of the image, e.g. 1 px wide in a 2000 px image);
- `box_outside_image`: no part inside the image (touching its edge from outside counts as outside).
A box partly outside the image is clipped to it (each quad corner is clamped into it); that is the one
change made, as the grid cannot hold a point outside the image.

`normalize_example` applies this to every region of a `formats.example.Example` (regions, spans'
regions, lines' regions) and answers a new Example with integer coordinates, or the first failure as
an `Invalid`.
"""

import dataclasses
import math
import numbers
from fractions import Fraction

from formats.example import Example, Invalid, Region
from formats.reasons import BOX_DEGENERATE, BOX_INVERTED, BOX_MALFORMED, BOX_NOT_FINITE, BOX_OUTSIDE_IMAGE, IMAGE_SIZE_INVALID


GRID = 1000  # coordinates are integers in [0, GRID)

NormBox = tuple[int, int, int, int]
NormQuad = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]


class BoxError(ValueError):
    """A box or quad that cannot be normalized: `reason` is one of the BOX_* names, `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _num(v) -> str:
    """A coordinate as a person reads it: 10, 10.5, nan."""
    v = float(v)
    return str(int(v)) if v.is_integer() else repr(v)


def _nums(values) -> str:
    return "(" + ", ".join(_num(v) for v in values) + ")"


def _scale(v, size: int) -> int:
    """One pixel coordinate, clipped into [0, size], on the grid: floor(v / size * 1000), at most 999."""
    v = min(max(v, 0), size)
    if isinstance(v, numbers.Integral) or float(v).is_integer():
        n = int(v) * GRID // size
    else:
        v = float(v)
        n = v * GRID / size
        # near an integer, binary rounding could cross it: there, exact arithmetic on the written decimal
        n = math.floor(n) if abs(n - round(n)) > 1e-6 else math.floor(Fraction(repr(v)) * GRID / size)
    return min(n, GRID - 1)


def _check_numbers(values, count: int, what: str) -> None:
    if len(values) != count or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        raise BoxError(BOX_MALFORMED, f"{what} needs {count} numbers, got {values!r}")
    if not all(math.isfinite(v) for v in values):
        raise BoxError(BOX_NOT_FINITE, _nums(values))


def normalize_box(box, width: int, height: int) -> NormBox:
    """A pixel box (x1, y1, x2, y2) in a width x height image on the 1000 grid, or a BoxError."""
    try:
        box = tuple(box)
    except TypeError:
        raise BoxError(BOX_MALFORMED, f"box needs 4 numbers, got {box!r}") from None
    _check_numbers(box, 4, "box")
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise BoxError(BOX_INVERTED, f"{_nums(box)}: " + ("x2 < x1" if x2 < x1 else "y2 < y1"))
    if x2 == x1 or y2 == y1:
        raise BoxError(BOX_DEGENERATE, f"{_nums(box)}: zero {'width' if x2 == x1 else 'height'} in pixels")
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise BoxError(BOX_OUTSIDE_IMAGE, f"{_nums(box)} outside {width}x{height}")
    x1, y1, x2, y2 = _scale(x1, width), _scale(y1, height), _scale(x2, width), _scale(y2, height)
    if x2 == x1 or y2 == y1:
        raise BoxError(BOX_DEGENERATE, f"{_nums(box)}: zero {'width' if x2 == x1 else 'height'} on the 1000 grid")
    return (x1, y1, x2, y2)


def _signed_area2(points) -> float:
    """Twice the shoelace area; positive when the points run clockwise on screen (y pointing down)."""
    return sum(x * y_next - x_next * y for (x, y), (x_next, y_next) in zip(points, points[1:] + points[:1]))


def normalize_quad(quad, width: int, height: int) -> NormQuad:
    """A pixel quad (four (x, y) corners, clockwise from the top-left) on the 1000 grid, or a BoxError."""
    try:
        points = tuple(tuple(p) for p in quad)
    except TypeError:
        points = ()
    if len(points) != 4 or any(len(p) != 2 for p in points):
        raise BoxError(BOX_MALFORMED, f"quad needs 4 points of 2 numbers, got {quad!r}")
    flat = [v for p in points for v in p]
    _check_numbers(flat, 8, "quad")
    shown = _nums(flat)
    area = _signed_area2(points)
    if area < 0:
        raise BoxError(BOX_INVERTED, f"{shown}: corners run counter-clockwise")
    if area == 0:
        raise BoxError(BOX_DEGENERATE, f"{shown}: zero area in pixels")
    xs, ys = flat[0::2], flat[1::2]
    if max(xs) <= 0 or max(ys) <= 0 or min(xs) >= width or min(ys) >= height:
        raise BoxError(BOX_OUTSIDE_IMAGE, f"{shown} outside {width}x{height}")
    norm = tuple((_scale(x, width), _scale(y, height)) for x, y in points)
    if _signed_area2(norm) <= 0:
        raise BoxError(BOX_DEGENERATE, f"{shown}: zero area on the 1000 grid")
    return norm


def normalize_region(region: Region, width: int, height: int) -> Region:
    """The region with its box or quad on the 1000 grid, or a BoxError."""
    if (region.box is None) == (region.quad is None):
        raise BoxError(BOX_MALFORMED, "a region needs exactly one of box and quad")
    if region.box is not None:
        return Region(box=normalize_box(region.box, width, height))
    return Region(quad=normalize_quad(region.quad, width, height))


def _check_grid(values) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < GRID for v in values):
        raise ValueError(f"not normalized to the 1000 grid: {values!r}")


def format_box(box: NormBox) -> str:
    """A normalized box as Qwen-VL writes it between <box> and </box>: "(x1,y1),(x2,y2)"."""
    _check_grid(box)
    x1, y1, x2, y2 = box
    return f"({x1},{y1}),({x2},{y2})"


def format_quad(quad: NormQuad) -> str:
    """A normalized quad as written between <quad> and </quad>: "(x1,y1),(x2,y2),(x3,y3),(x4,y4)"."""
    flat = [v for p in quad for v in p]
    _check_grid(flat)
    if len(quad) != 4:
        raise ValueError(f"a quad has 4 points: {quad!r}")
    return ",".join(f"({x},{y})" for x, y in quad)


def normalize_example(example: Example, width: int | None = None, height: int | None = None) -> Example | Invalid:
    """The example with every region on the 1000 grid (width and height default to the example's own),
    or an Invalid for its first bad region; the detail names it, e.g. "spans[1].regions[0]: ..."."""
    width = example.width if width is None else width
    height = example.height if height is None else height
    sizes = (width, height)
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in sizes):
        return Invalid(example.source, example.key, IMAGE_SIZE_INVALID, f"width {width!r}, height {height!r}")
    width, height = int(width), int(height)
    where = ""
    try:
        regions = []
        for i, region in enumerate(example.regions):
            where = f"regions[{i}]"
            regions.append(normalize_region(region, width, height))
        spans = []
        for i, span in enumerate(example.spans):
            normed = []
            for j, region in enumerate(span.regions):
                where = f"spans[{i}].regions[{j}]"
                normed.append(normalize_region(region, width, height))
            spans.append(dataclasses.replace(span, regions=tuple(normed)))
        lines = []
        for i, (text, region) in enumerate(example.lines):
            where = f"lines[{i}]"
            lines.append((text, normalize_region(region, width, height)))
    except BoxError as e:
        return Invalid(example.source, example.key, e.reason, f"{where}: {e.detail}")
    return dataclasses.replace(
        example, width=width, height=height, regions=tuple(regions), spans=tuple(spans), lines=tuple(lines)
    )
