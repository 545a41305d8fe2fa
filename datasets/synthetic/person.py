"""Synthetic pedestrians: identity attributes and their rendering from four viewpoints.

An identity is a draw of independent attributes (upper and lower clothing colour and cut,
clothing pattern, bag and its side, headwear and hair, shoes, body build, skin). The palettes
are small, so many identities share several attributes, and a fraction of identities is made
as a near-copy of an earlier one with one or two attributes changed: hard negatives.

The viewpoint decides what is visible: the chest logo only from the front, a backpack as a large
patch from the back but only straps from the front, a shoulder bag on one side of the image or
the other, or hidden behind the body from the far side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Set, Tuple

import numpy as np
from PIL import Image, ImageDraw

from . import attributes
from .camera import RGB, Camera, apply_camera, draw_background, draw_occluder, jitter
from .domains import DOMAINS, Domain
from .drawing import Pen

FRONT, BACK, LEFT_SIDE, RIGHT_SIDE = range(4)
NUM_VIEWS = 4

CLOTHES = [(200, 30, 30), (30, 60, 170), (30, 130, 50), (230, 200, 40), (240, 240, 235),
           (25, 25, 25), (120, 120, 125), (120, 60, 150), (240, 130, 30), (110, 70, 40),
           (100, 180, 220), (230, 140, 170)]
TROUSERS = [(25, 25, 30), (40, 50, 110), (90, 90, 95), (150, 130, 100), (220, 220, 215),
            (90, 60, 35), (60, 80, 50), (150, 30, 40)]
HAIR = [(20, 15, 10), (80, 50, 25), (200, 170, 90), (150, 150, 150)]
SKIN = [(240, 210, 180), (215, 170, 130), (170, 120, 80), (110, 75, 50)]
SHOES = [(20, 20, 20), (240, 240, 240), (100, 60, 30), (130, 130, 135), (200, 40, 40)]
BAGS = [(20, 20, 20), (110, 70, 35), (40, 60, 140), (180, 30, 30), (200, 200, 195),
        (60, 110, 60)]

PLAIN, H_STRIPES, V_STRIPES, CHEST_LOGO = range(4)
NO_BAG, BACKPACK, SHOULDER_BAG, HANDBAG = range(4)
NO_HAT, CAP, BEANIE = range(3)
TROUSERS_CUT, SHORTS, SKIRT = range(3)
LEFT, RIGHT = range(2)


@dataclass(frozen=True)
class Person:
    upper: RGB
    lower: RGB
    pattern: int
    pattern_colour: RGB
    long_sleeves: bool
    lower_cut: int
    bag: int
    bag_side: int
    bag_colour: RGB
    headwear: int
    hat_colour: RGB
    hair: RGB
    long_hair: bool
    shoes: RGB
    build: float  # width factor
    skin: RGB


def _pick(rng: np.random.Generator, palette: List[RGB], shade: int = 12) -> RGB:
    return jitter(palette[int(rng.integers(len(palette)))], rng, shade)


def _attribute_draws(rng: np.random.Generator) -> Dict[str, object]:
    """One independent draw of every attribute."""
    return dict(
        upper=_pick(rng, CLOTHES), lower=_pick(rng, TROUSERS),
        pattern=int(rng.choice(4, p=[0.45, 0.2, 0.15, 0.2])), pattern_colour=_pick(rng, CLOTHES),
        long_sleeves=bool(rng.integers(2)), lower_cut=int(rng.choice(3, p=[0.6, 0.25, 0.15])),
        bag=int(rng.choice(4, p=[0.35, 0.25, 0.25, 0.15])), bag_side=int(rng.integers(2)),
        bag_colour=_pick(rng, BAGS), headwear=int(rng.choice(3, p=[0.6, 0.25, 0.15])),
        hat_colour=_pick(rng, CLOTHES), hair=_pick(rng, HAIR, 6),
        long_hair=bool(rng.random() < 0.35), shoes=_pick(rng, SHOES, 8),
        build=float(rng.choice([0.85, 1.0, 1.18])), skin=_pick(rng, SKIN, 8))


def random_person(rng: np.random.Generator) -> Person:
    return Person(**_attribute_draws(rng))  # type: ignore[arg-type]


def _hidden(p: Person) -> Set[str]:
    """Attributes that do not show on `p`."""
    hidden = set()
    if p.bag == NO_BAG:
        hidden |= {"bag_side", "bag_colour"}
    if p.headwear == NO_HAT:
        hidden.add("hat_colour")
    if p.pattern == PLAIN:
        hidden.add("pattern_colour")
    return hidden


def make_identities(num_ids: int, rng: np.random.Generator) -> List[Person]:
    return attributes.make_identities(Person, num_ids, _attribute_draws, _hidden, rng)


# ---------------------------------------------------------------------------------- rendering
def _draw_head(pen: Pen, p: Person, view: int) -> None:
    hair_back = view == BACK
    if p.long_hair:
        pen.rect(-0.055, 0.07, 0.055, 0.2 if hair_back else 0.16, p.hair)
    pen.ellipse(0.0, 0.09, 0.05, 0.062, p.hair if hair_back else p.skin)
    if not hair_back:  # hairline, seen from the front and the sides
        pen.ellipse(0.0 if view == FRONT else -0.012, 0.05, 0.05, 0.027, p.hair)
    if p.headwear == CAP:
        pen.ellipse(0.0, 0.045, 0.054, 0.03, p.hat_colour)
        if view != BACK:  # the peak points forward
            pen.rect(-0.06 if view == FRONT else 0.0, 0.05, 0.06 if view == FRONT else 0.09,
                     0.065, p.hat_colour)
    elif p.headwear == BEANIE:
        pen.ellipse(0.0, 0.05, 0.055, 0.04, p.hat_colour)


def _draw_torso(pen: Pen, p: Person, view: int, half_width: float) -> None:
    top, bottom = 0.16, 0.52
    pen.rect(-half_width, top, half_width, bottom, p.upper)
    if p.pattern == H_STRIPES:
        for y in np.arange(top + 0.04, bottom - 0.02, 0.07):
            pen.rect(-half_width, y, half_width, y + 0.03, p.pattern_colour)
    elif p.pattern == V_STRIPES:
        for x in np.arange(-half_width + 0.02, half_width - 0.01, 0.06):
            pen.rect(x, top, x + 0.025, bottom, p.pattern_colour)
    elif p.pattern == CHEST_LOGO and view == FRONT:
        pen.rect(-0.06, 0.22, 0.06, 0.32, p.pattern_colour)


def _draw_arm(pen: Pen, p: Person, shoulder: Tuple[float, float], angle: float) -> None:
    sleeve = 0.3 if p.long_sleeves else 0.1
    end = pen.limb(shoulder, angle, 0.3, 0.055, p.skin)
    pen.limb(shoulder, angle, sleeve, 0.06, p.upper)
    pen.ellipse(end[0], end[1], 0.025, 0.025, p.skin)


def _draw_leg(pen: Pen, p: Person, hip: Tuple[float, float], angle: float) -> None:
    covered = {TROUSERS_CUT: 0.4, SHORTS: 0.15, SKIRT: 0.0}[p.lower_cut]
    end = pen.limb(hip, angle, 0.4, 0.085, p.skin)
    if covered:
        pen.limb(hip, angle, covered, 0.09, p.lower)
    pen.ellipse(end[0] + 0.01, end[1] + 0.015, 0.05, 0.022, p.shoes)


def _draw_lower(pen: Pen, p: Person, view: int, half_width: float, phase: float) -> None:
    if view in (FRONT, BACK):
        spread = 3.0 + 4.0 * abs(phase)
        _draw_leg(pen, p, (-half_width * 0.5, 0.52), -spread)
        _draw_leg(pen, p, (half_width * 0.5, 0.52), spread)
    else:
        for sign in (-1, 1):
            _draw_leg(pen, p, (0.0, 0.52), sign * 22.0 * phase)
    if p.lower_cut == SKIRT:
        pen.polygon([(-half_width, 0.5), (half_width, 0.5), (half_width * 1.4, 0.72),
                     (-half_width * 1.4, 0.72)], p.lower)
    else:
        pen.rect(-half_width, 0.49, half_width, 0.56, p.lower)


def _draw_bag_behind(pen: Pen, p: Person, view: int) -> None:
    """What is hidden by the body: a backpack seen from the side sticks out behind."""
    if p.bag == BACKPACK and view in (LEFT_SIDE, RIGHT_SIDE):
        pen.rect(-0.16, 0.19, -0.04, 0.44, p.bag_colour)  # figures face +x; the back is -x


def _bag_on_image_right(p: Person, view: int) -> bool:
    # Seen from the front the person's right hand is on the image's left.
    return (p.bag_side == RIGHT) == (view == BACK)


def _draw_bag_front(pen: Pen, p: Person, view: int, half_width: float) -> None:
    if p.bag == BACKPACK:
        if view == BACK:
            pen.rect(-0.11, 0.19, 0.11, 0.44, p.bag_colour)
        elif view == FRONT:
            for x in (-0.08, 0.08):
                pen.rect(x - 0.015, 0.16, x + 0.015, 0.36, p.bag_colour)
        return
    if p.bag == NO_BAG:
        return
    if view in (LEFT_SIDE, RIGHT_SIDE):
        near_side = LEFT if view == LEFT_SIDE else RIGHT
        if p.bag_side != near_side:
            return  # behind the body
        x = 0.0
    else:
        x = (half_width + 0.04) * (1 if _bag_on_image_right(p, view) else -1)
    if p.bag == SHOULDER_BAG:
        pen.line([(-x * 0.8, 0.17), (x, 0.46)], p.bag_colour, 0.015)
        pen.rect(x - 0.06, 0.44, x + 0.06, 0.56, p.bag_colour)
    else:  # handbag, at the hand
        pen.rect(x - 0.04, 0.46, x + 0.04, 0.56, p.bag_colour)


def draw_person(img: Image.Image, p: Person, view: int, box: Tuple[float, float, float],
                phase: float) -> None:
    """Draw `p` seen from `view`, with its head top-centre at (cx, top) and height `height`."""
    cx, top, height = box
    side = view in (LEFT_SIDE, RIGHT_SIDE)
    # Side figures are drawn facing +x; the right side is seen when the person faces left.
    pen = Pen(ImageDraw.Draw(img), cx, top, height, mirror=view == RIGHT_SIDE)
    half_width = (0.085 if side else 0.14) * p.build
    _draw_bag_behind(pen, p, view)
    if side:
        _draw_arm(pen, p, (0.0, 0.18), 20.0 * phase)  # the far arm, behind the body
    _draw_lower(pen, p, view, half_width, phase)
    _draw_torso(pen, p, view, half_width)
    if side:
        _draw_arm(pen, p, (0.0, 0.18), -25.0 * phase)
    else:
        swing = 4.0 + 3.0 * abs(phase)
        _draw_arm(pen, p, (-half_width - 0.025, 0.17), -swing)
        _draw_arm(pen, p, (half_width + 0.025, 0.17), swing)
    _draw_head(pen, p, view)
    _draw_bag_front(pen, p, view, half_width)


SUPERSAMPLE = 2


def render_person(p: Person, camera: Camera, view: int, size: Tuple[int, int],
                  rng: np.random.Generator, occlusion_rate: float = 0.15,
                  partial: bool = False, domain: Domain = DOMAINS["A"]) -> bytes:
    """One JPEG of `p` taken by `camera`: pose, crop and scale jitter, maybe an occluder.

    `partial` gives a badly aligned detection (for distractors and junk); `domain` the framing.
    """
    width, height = size[1] * SUPERSAMPLE, size[0] * SUPERSAMPLE
    img = draw_background(camera, (width, height), rng)
    person_height = (height * rng.uniform(*domain.person_height)
                     * (rng.uniform(0.9, 1.8) if partial else 1))
    cx = width * (0.5 + rng.uniform(-0.08, 0.08) + (rng.uniform(-0.45, 0.45) if partial else 0))
    top = (height * rng.uniform(*domain.person_top)
           + (rng.uniform(-0.5, 0.3) * height if partial else 0))
    draw_person(img, p, view, (cx, top, person_height), phase=float(rng.uniform(-1, 1)))
    if rng.random() < occlusion_rate:
        draw_occluder(img, rng)
    img = img.resize((size[1], size[0]), Image.Resampling.BOX)
    return apply_camera(img, camera, rng)
