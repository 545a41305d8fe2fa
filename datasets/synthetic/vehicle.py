"""Synthetic vehicles: identity attributes and their rendering from VeRi's eight viewpoints.

View labels follow VehicleReIDKeyPointData: 0 front, 1 rear, 2 left, 3 left front, 4 left rear,
5 right, 6 right front, 7 right rear. A side decal is seen only from its side and a bonnet stripe
only from the front, so the view matters; colours and models repeat, as on real roads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Set, Tuple

import numpy as np
from PIL import Image, ImageDraw

from . import attributes
from .camera import RGB, Camera, apply_camera, draw_background, draw_occluder, jitter
from .drawing import Pen

FRONT, REAR, LEFT, LEFT_FRONT, LEFT_REAR, RIGHT, RIGHT_FRONT, RIGHT_REAR = range(8)
NUM_VIEWS = 8

PAINT = [(235, 235, 235), (25, 25, 25), (150, 150, 155), (190, 30, 30), (30, 60, 160),
         (40, 110, 60), (230, 190, 40), (110, 70, 40), (200, 110, 30), (100, 160, 210)]
RIMS = [(200, 200, 205), (30, 30, 30), (200, 170, 80)]
GLASS = [(60, 80, 100), (20, 25, 35)]

NO_DECAL, LEFT_DECAL, RIGHT_DECAL, BOTH_DECALS, BONNET_STRIPE = range(5)
# Cabin outline of each model in the side view (front at +x): (x, y) corners.
CABINS = [
    [(-0.3, 0.42), (-0.2, 0.24), (0.14, 0.24), (0.28, 0.42)],  # sedan
    [(-0.44, 0.42), (-0.4, 0.18), (0.18, 0.18), (0.3, 0.42)],  # SUV
    [(-0.46, 0.42), (-0.46, 0.12), (0.3, 0.12), (0.44, 0.42)],  # van
    [(-0.38, 0.42), (-0.34, 0.22), (0.12, 0.22), (0.27, 0.42)],  # hatchback
    [(-0.06, 0.42), (-0.04, 0.2), (0.16, 0.2), (0.28, 0.42)],  # pickup
]


@dataclass(frozen=True)
class Vehicle:
    paint: RGB
    model: int
    roof: RGB
    decal: int
    decal_colour: RGB
    rims: RGB
    glass: RGB
    roof_rack: bool
    bar_lights: bool


def _attribute_draws(rng: np.random.Generator) -> Dict[str, object]:
    paint = jitter(PAINT[int(rng.integers(len(PAINT)))], rng, 10)
    roof_choice = int(rng.choice(3, p=[0.7, 0.15, 0.15]))
    return dict(
        paint=paint, model=int(rng.integers(len(CABINS))),
        roof=[paint, (20, 20, 20), (240, 240, 240)][roof_choice],
        decal=int(rng.choice(5, p=[0.5, 0.12, 0.12, 0.13, 0.13])),
        decal_colour=jitter(PAINT[int(rng.integers(len(PAINT)))], rng, 10),
        rims=RIMS[int(rng.integers(len(RIMS)))], glass=GLASS[int(rng.integers(len(GLASS)))],
        roof_rack=bool(rng.random() < 0.2), bar_lights=bool(rng.integers(2)))


def _hidden(v: Vehicle) -> Set[str]:
    return {"decal_colour"} if v.decal == NO_DECAL else set()


def make_identities(num_ids: int, rng: np.random.Generator) -> List[Vehicle]:
    return attributes.make_identities(Vehicle, num_ids, _attribute_draws, _hidden, rng)


# ---------------------------------------------------------------------------------- rendering
def _draw_side(pen: Pen, v: Vehicle, near_side: int) -> None:
    """Profile with the front at +x, seen from `near_side` (LEFT_DECAL or RIGHT_DECAL)."""
    cabin = CABINS[v.model]
    pen.polygon(cabin, v.paint)
    inset = [(x * 0.88 + 0.01, y + 0.03) for x, y in cabin]
    pen.polygon(inset, v.glass)
    pillar = (cabin[1][0] + cabin[2][0]) / 2
    pen.rect(pillar - 0.015, cabin[1][1], pillar + 0.015, 0.42, v.paint)
    pen.rect(cabin[1][0], cabin[1][1] - 0.01, cabin[2][0], cabin[1][1] + 0.025, v.roof)
    if v.roof_rack:
        pen.rect(cabin[1][0], cabin[1][1] - 0.04, cabin[2][0], cabin[1][1] - 0.025, (40, 40, 40))
    pen.rect(-0.48, 0.42, 0.48, 0.68, v.paint)
    if v.decal in (near_side, BOTH_DECALS):
        pen.rect(-0.44, 0.5, 0.44, 0.55, v.decal_colour)
    pen.rect(0.44, 0.45, 0.48, 0.5, (250, 240, 190))  # headlight
    pen.rect(-0.48, 0.45, -0.45, 0.5, (200, 20, 20))  # tail light
    for x in (-0.3, 0.3):
        pen.ellipse(x, 0.68, 0.1, 0.1, (20, 20, 20))
        pen.ellipse(x, 0.68, 0.05, 0.05, v.rims)


def _draw_face(pen: Pen, v: Vehicle, front: bool) -> None:
    """Front or rear face, centred on x = 0."""
    cabin_top = CABINS[v.model][1][1]
    pen.polygon([(-0.34, 0.42), (-0.28, cabin_top), (0.28, cabin_top), (0.34, 0.42)], v.paint)
    pen.polygon([(-0.3, 0.41), (-0.25, cabin_top + 0.03), (0.25, cabin_top + 0.03),
                 (0.3, 0.41)], v.glass)
    pen.rect(-0.28, cabin_top - 0.01, 0.28, cabin_top + 0.025, v.roof)
    pen.rect(-0.42, 0.42, 0.42, 0.7, v.paint)
    light = (250, 240, 190) if front else (200, 20, 20)
    if v.bar_lights:
        pen.rect(-0.4, 0.46, 0.4, 0.5, light)
    else:
        for x in (-0.31, 0.31):
            pen.ellipse(x, 0.49, 0.06, 0.035, light)
    if front:
        pen.rect(-0.14, 0.52, 0.14, 0.6, (30, 30, 35))  # grille
        if v.decal == BONNET_STRIPE:
            pen.rect(-0.05, 0.42, 0.05, 0.52, v.decal_colour)
    pen.rect(-0.08, 0.62, 0.08, 0.66, (235, 235, 225))  # plate
    for x in (-0.34, 0.34):
        pen.rect(x - 0.06, 0.68, x + 0.06, 0.76, (20, 20, 20))


def draw_vehicle(img: Image.Image, v: Vehicle, view: int, box: Tuple[float, float, float]
                 ) -> None:
    """Draw `v` from `view`, centred at x = cx, its roofline near `top`, `scale` px wide."""
    cx, top, scale = box
    draw = ImageDraw.Draw(img)
    if view in (FRONT, REAR):
        _draw_face(Pen(draw, cx, top, scale), v, front=view == FRONT)
        return
    # Seen from the left, a vehicle's front points to the image's right; right views mirror.
    mirror = view in (RIGHT, RIGHT_FRONT, RIGHT_REAR)
    near_side = RIGHT_DECAL if mirror else LEFT_DECAL
    sign = -1 if mirror else 1
    if view in (LEFT, RIGHT):
        _draw_side(Pen(draw, cx, top, scale, mirror), v, near_side)
        return
    shows_front = view in (LEFT_FRONT, RIGHT_FRONT)
    side_shift = -0.16 if shows_front else 0.16
    _draw_side(Pen(draw, cx + sign * side_shift * scale, top, scale, mirror, squash=0.62),
               v, near_side)
    face_x = cx + sign * (-side_shift * 2.1) * scale
    _draw_face(Pen(draw, face_x, top, scale, squash=0.42), v, front=shows_front)


SUPERSAMPLE = 2


def render_vehicle(v: Vehicle, camera: Camera, view: int, size: Tuple[int, int],
                   rng: np.random.Generator, occlusion_rate: float = 0.1) -> bytes:
    """One JPEG of `v` taken by `camera` from `view`, with position and scale jitter."""
    width, height = size[1] * SUPERSAMPLE, size[0] * SUPERSAMPLE
    img = draw_background(camera, (width, height), rng)
    scale = min(width, height * 1.3) * rng.uniform(0.78, 0.95)
    cx = width * (0.5 + rng.uniform(-0.06, 0.06))
    top = height / 2 - 0.45 * scale + rng.uniform(-0.05, 0.05) * height
    draw_vehicle(img, v, view, (cx, top, scale))
    if rng.random() < occlusion_rate:
        draw_occluder(img, rng)
    img = img.resize((size[1], size[0]), Image.Resampling.BOX)
    return apply_camera(img, camera, rng)
