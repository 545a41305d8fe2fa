"""Drawing in a subject's own coordinates: x right and y down in units of the subject's height."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

from PIL import ImageDraw

Point = Tuple[float, float]


class Pen:
    """Maps subject coordinates to pixels (origin at (cx, top), `scale` pixels per unit).

    `mirror` flips x, so a figure facing right is drawn facing left for free; `squash` narrows x
    (a face seen at an angle).
    """

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, top: float, scale: float,
                 mirror: bool = False, squash: float = 1.0):
        self.draw, self.cx, self.top, self.scale = draw, cx, top, scale
        self.x_scale = (-scale if mirror else scale) * squash

    def px(self, points: Sequence[Point]) -> List[Point]:
        return [(self.cx + x * self.x_scale, self.top + y * self.scale) for x, y in points]

    def polygon(self, points: Sequence[Point], fill) -> None:
        self.draw.polygon(self.px(points), fill=fill)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill) -> None:
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill) -> None:
        (x0, y0), (x1, y1) = self.px([(cx - rx, cy - ry), (cx + rx, cy + ry)])
        self.draw.ellipse([min(x0, x1), y0, max(x0, x1), y1], fill=fill)

    def line(self, points: Sequence[Point], fill, width: float) -> None:
        self.draw.line(self.px(points), fill=fill, width=max(1, round(width * self.scale)))

    def limb(self, top: Point, angle_deg: float, length: float, width: float, fill) -> Point:
        """A bar hanging from `top`, swung by `angle_deg` (positive = towards +x); returns its
        far end."""
        angle = math.radians(angle_deg)
        dx, dy = math.sin(angle), math.cos(angle)
        nx, ny = dy * width / 2, -dx * width / 2
        end = (top[0] + dx * length, top[1] + dy * length)
        self.polygon([(top[0] + nx, top[1] + ny), (top[0] - nx, top[1] - ny),
                      (end[0] - nx, end[1] - ny), (end[0] + nx, end[1] + ny)], fill)
        return end
