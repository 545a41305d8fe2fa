"""Cameras of the synthetic datasets: what a camera does to every image it takes.

Each camera has its own colour cast, brightness and contrast, blur, sensor noise, JPEG quality,
background and typical viewpoint; each image jitters these a little. The cast and brightness are
strong enough that raw colours differ between cameras of one identity, which is what makes the
task harder than colour matching.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .domains import DOMAINS, WINDOWS, Domain

RGB = Tuple[int, int, int]


@dataclass(frozen=True)
class Camera:
    cast: Tuple[float, float, float]  # per-channel gain
    brightness: float
    contrast: float
    blur: float  # Gaussian radius in pixels of a 64-pixel-wide image
    noise: float  # std of additive Gaussian noise, 0..255 scale
    jpeg_quality: int
    wall: RGB
    ground: RGB
    horizon: float  # fraction of the height where the ground starts
    texture: int  # 0 plain, 1 vertical bands, 2 tiles, 3 gradient
    view_weights: Tuple[float, ...]  # probability of each view label


def random_colour(rng: np.random.Generator, low: int = 40, high: int = 220) -> RGB:
    return tuple(int(v) for v in rng.integers(low, high, size=3))  # type: ignore[return-value]


def make_camera(rng: np.random.Generator, num_views: int, typical_views: Sequence[int],
                domain: Domain = DOMAINS["A"]) -> Camera:
    """A camera of `domain` that mostly sees `typical_views` (a camera's angle to the walking
    direction)."""
    weights = np.full(num_views, 0.25 / num_views)
    weights[list(typical_views)] += 0.75 / len(typical_views)
    return Camera(
        cast=tuple(float(g) for g in rng.uniform(*domain.cast, size=3)),  # type: ignore[arg-type]
        brightness=float(rng.uniform(*domain.brightness)),
        contrast=float(rng.uniform(*domain.contrast)),
        blur=float(rng.uniform(*domain.blur)),
        noise=float(rng.uniform(*domain.noise)),
        jpeg_quality=int(rng.integers(*domain.jpeg_quality)),
        wall=random_colour(rng, *domain.wall),
        ground=random_colour(rng, *domain.ground),
        horizon=float(rng.uniform(*domain.horizon)),
        texture=domain.textures[int(rng.integers(len(domain.textures)))],
        view_weights=tuple(float(w) for w in weights / weights.sum()),
    )


def jitter(colour: RGB, rng: np.random.Generator, amount: int) -> RGB:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255))
                 for c in colour)  # type: ignore[return-value]


def draw_background(camera: Camera, size: Tuple[int, int], rng: np.random.Generator
                    ) -> Image.Image:
    """The camera's scene (wall over ground, with its texture) seen from a jittered position."""
    width, height = size
    img = Image.new("RGB", size, jitter(camera.wall, rng, 12))
    draw = ImageDraw.Draw(img)
    horizon = int(height * (camera.horizon + rng.uniform(-0.05, 0.05)))
    draw.rectangle([0, horizon, width, height], fill=jitter(camera.ground, rng, 12))
    dark = jitter(tuple(int(c * 0.7) for c in camera.wall), rng, 10)  # type: ignore[arg-type]
    step = max(4, width // 5)
    shift = int(rng.integers(step))
    if camera.texture == 1:
        for x in range(-shift, width, step):
            draw.rectangle([x, 0, x + step // 3, horizon], fill=dark)
    elif camera.texture == 2:
        for y in range(horizon, height, step // 2):
            draw.line([0, y, width, y], fill=dark, width=1)
        for x in range(-shift, width, step):
            draw.line([x, horizon, x - step // 2, height], fill=dark, width=1)
    elif camera.texture == 3:
        for y in range(horizon):
            shade = 0.6 + 0.4 * y / max(1, horizon)
            draw.line([0, y, width, y], fill=tuple(int(c * shade) for c in camera.wall))
    elif camera.texture == WINDOWS:
        _draw_windows(draw, width, horizon, step, shift, rng)
    return img


def _draw_windows(draw: ImageDraw.ImageDraw, width: int, horizon: int, step: int, shift: int,
                  rng: np.random.Generator) -> None:
    """Rows of windows on the wall, each lit (warm) or dark at random."""
    size = max(2, step // 2)
    for y in range(size // 2, horizon - size, 2 * size):
        for x in range(-shift, width, step):
            lit = rng.random() < 0.5
            colour = jitter((235, 200, 120) if lit else (35, 40, 50), rng, 15)
            draw.rectangle([x, y, x + size, y + size], fill=colour)


def draw_occluder(img: Image.Image, rng: np.random.Generator) -> None:
    """An object between camera and subject: a pole, a low obstacle or a passer-by's shoulder."""
    width, height = img.size
    draw = ImageDraw.Draw(img)
    colour = random_colour(rng, 20, 235)
    kind = rng.integers(3)
    if kind == 0:  # pole
        x = int(rng.uniform(0.1, 0.8) * width)
        draw.rectangle([x, 0, x + int(rng.uniform(0.12, 0.25) * width), height], fill=colour)
    elif kind == 1:  # bench, car bonnet: the lower part
        top = int(rng.uniform(0.55, 0.8) * height)
        draw.rectangle([0, top, width, height], fill=colour)
    else:  # someone passing on one side
        left = bool(rng.integers(2))
        reach = int(rng.uniform(0.25, 0.45) * width)
        x0, x1 = (-reach, reach) if left else (width - reach, width + reach)
        draw.ellipse([x0, int(0.2 * height), x1, int(1.2 * height)], fill=colour)


def apply_camera(img: Image.Image, camera: Camera, rng: np.random.Generator) -> bytes:
    """Colour cast, brightness, contrast, blur, noise, then JPEG: the image file's bytes."""
    scale = img.size[0] / 64.0
    blur = camera.blur * scale * rng.uniform(0.7, 1.3)
    if blur > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(img, dtype=np.float32)
    gain = np.asarray(camera.cast, np.float32) * camera.brightness * rng.uniform(0.88, 1.12)
    mean = pixels.mean()
    pixels = (pixels - mean) * camera.contrast + mean
    pixels = pixels * gain + rng.normal(0.0, camera.noise, size=pixels.shape)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    quality = int(np.clip(camera.jpeg_quality + rng.integers(-10, 11), 25, 95))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
