"""Distortions of a rendered page, as SynthDoG applies them (Kim et al., "OCR-free Document Understanding
Transformer", ECCV 2022, §3.2 and its synthtiger templates): a geometric one (rotation and perspective,
one homography for the page and every point on it) and photometric ones (shading, blur, noise; JPEG
quality is chosen where the page is encoded).

Coordinates are continuous pixels: pixel (i, j) covers [i, i+1) x [j, j+1), its centre at (i + 0.5,
j + 0.5), as Pillow's Image.transform samples (it maps each output pixel's centre to the input).
"""

import math
import random

import numpy as np
from PIL import Image, ImageFilter


def homography(src, dst) -> np.ndarray:
    """The 3x3 projective map taking the four points `src` to the four points `dst`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def apply(matrix: np.ndarray, points) -> list[tuple[float, float]]:
    """The points mapped by a homography."""
    out = []
    for x, y in points:
        u, v, w = matrix @ (x, y, 1.0)
        out.append((float(u / w), float(v / w)))
    return out


def random_homography(width: int, height: int, rng: random.Random, max_rotation_deg: float, max_perspective: float, margin: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A page of width x height turned by up to `max_rotation_deg` about its centre, each corner then moved
    by up to `max_perspective` of the shorter side, and shifted so that it lies `margin` px inside the
    output: (the homography, the output's (width, height))."""
    angle = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
    corners = [(0, 0), (width, 0), (width, height), (0, height)]
    cx, cy, c, s = width / 2, height / 2, math.cos(angle), math.sin(angle)
    jitter = max_perspective * min(width, height)
    moved = []
    for x, y in corners:
        dx, dy = x - cx, y - cy
        moved.append((cx + dx * c - dy * s + rng.uniform(-jitter, jitter), cy + dx * s + dy * c + rng.uniform(-jitter, jitter)))
    left, top = min(x for x, _ in moved), min(y for _, y in moved)
    moved = [(x - left + margin, y - top + margin) for x, y in moved]
    size = (math.ceil(max(x for x, _ in moved)) + margin, math.ceil(max(y for _, y in moved)) + margin)
    return homography(corners, moved), size


def warp(image: Image.Image, matrix: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The image mapped by the homography onto a canvas of `size` (bilinear; outside it transparent or 0)."""
    inverse = np.linalg.inv(matrix)
    inverse /= inverse[2, 2]
    return image.transform(size, Image.Transform.PERSPECTIVE, tuple(inverse.flatten()[:8]), Image.Resampling.BILINEAR)


def shading(width: int, height: int, angle: float, strength: float) -> np.ndarray:
    """An illumination field (height, width) from 1 down to 1 - strength: a linear fall-off towards
    `angle` (radians), as light across a photographed sheet."""
    xs, ys = np.meshgrid(np.linspace(-0.5, 0.5, width), np.linspace(-0.5, 0.5, height))
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9)
    return (1.0 - strength * ramp).astype(np.float32)


def blur(image: Image.Image, radius: float) -> Image.Image:
    """Gaussian blur of standard deviation `radius` px (none at 0), as an out-of-focus camera."""
    return image.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else image


def sensor_noise(pixels: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Pixels (float, 0-255) plus Gaussian noise of `sigma` levels, clipped, as uint8."""
    noisy = pixels + rng.standard_normal(pixels.shape, dtype=np.float32) * sigma if sigma > 0 else pixels
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
