"""Pictures drawn with Pillow alone: rank lists and a CMC / mAP summary chart."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from datasets.bases import read_image
from datasets.image_list import ImageRecord
from utils.checkpoint import atomic_output

RGB = Tuple[int, int, int]
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (150, 150, 150)
GREEN, RED, BLUE = (0, 170, 0), (220, 0, 0), (30, 90, 220)


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font (scalable when Pillow has FreeType, a fixed bitmap otherwise)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def same_identity(query: ImageRecord, match: ImageRecord) -> Optional[bool]:
    """Whether two images show the same identity; None when either identity is unknown."""
    if query.pid is None or match.pid is None:
        return None
    return query.pid == match.pid


def border_colour(correct: Optional[bool]) -> RGB:
    return GREY if correct is None else (GREEN if correct else RED)


@dataclass(frozen=True)
class RankListLayout:
    """Geometry of a rank-list picture: the query, a wider gap, then the matches in rank order,
    each thumbnail framed by a border and captioned underneath."""
    thumb_height: int = 128
    thumb_width: int = 64
    border: int = 4
    gap: int = 6
    query_gap: int = 18
    caption_height: int = 30

    @property
    def cell_width(self) -> int:
        return self.thumb_width + 2 * self.border

    def canvas_size(self, num_matches: int) -> Tuple[int, int]:
        """(width, height) of a picture with `num_matches` matches."""
        width = self.gap + (num_matches + 1) * (self.cell_width + self.gap) + self.query_gap
        height = 2 * self.gap + self.thumb_height + 2 * self.border + self.caption_height
        return width, height

    def cell_left(self, position: int) -> int:
        """x of cell `position` (0 = the query)."""
        return self.gap + position * (self.cell_width + self.gap) + (self.query_gap if position else 0)


def draw_rank_list(query: ImageRecord, matches: Sequence[ImageRecord], distances: Sequence[float],
                   layout: RankListLayout = RankListLayout()) -> Image.Image:
    """The query then its matches; borders green (same identity), red (another) or grey (unknown)."""
    canvas = Image.new("RGB", layout.canvas_size(len(matches)), WHITE)
    draw = ImageDraw.Draw(canvas)
    caption_font = font(11)
    query_caption = ["query", f"id {query.pid}" if query.pid is not None else ""]
    _draw_cell(canvas, draw, layout, 0, query.path, BLUE, query_caption, caption_font)
    for rank, (match, distance) in enumerate(zip(matches, distances), 1):
        colour = border_colour(same_identity(query, match))
        _draw_cell(canvas, draw, layout, rank, match.path, colour,
                   [f"#{rank}", f"{distance:.3f}"], caption_font)
    return canvas


def _draw_cell(canvas: Image.Image, draw: ImageDraw.ImageDraw, layout: RankListLayout, position: int,
               path: str, colour: RGB, caption: Sequence[str], caption_font) -> None:
    left, top = layout.cell_left(position), layout.gap
    bottom = top + layout.thumb_height + 2 * layout.border
    draw.rectangle([left, top, left + layout.cell_width - 1, bottom - 1], fill=colour)
    thumb = read_image(path).resize((layout.thumb_width, layout.thumb_height), Image.BILINEAR)
    canvas.paste(thumb, (left + layout.border, top + layout.border))
    line_height = layout.caption_height // 2
    for line_no, text in enumerate(caption):
        draw.text((left + layout.cell_width / 2, bottom + 2 + line_no * line_height), text,
                  fill=BLACK, font=caption_font, anchor="ma")


# -------------------------------------------------------------------------- CMC / mAP chart
@dataclass(frozen=True)
class ChartLayout:
    width: int = 640
    height: int = 480
    left: int = 60  # room for the y labels
    right: int = 20
    top: int = 60  # room for the title and the numbers
    bottom: int = 50  # room for the x labels

    def plot_box(self) -> Tuple[int, int, int, int]:
        return self.left, self.top, self.width - self.right, self.height - self.bottom


def x_ticks(max_rank: int) -> list:
    """Rank 1 and round ranks up to `max_rank`, about five of them."""
    step = 5 * int(np.ceil(max_rank / 25)) if max_rank > 5 else 1
    return sorted({1, *range(step, max_rank + 1, step)})


def draw_cmc_summary(cmc: Sequence[float], mAP: float, title: str,
                     layout: ChartLayout = ChartLayout()) -> Image.Image:
    """The CMC curve (matching rate against rank), with mAP and Rank-1/5/10 written above it."""
    cmc = np.asarray(cmc, dtype=float)
    canvas = Image.new("RGB", (layout.width, layout.height), WHITE)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = layout.plot_box()
    max_rank = len(cmc)

    def point(rank: float, rate: float) -> Tuple[float, float]:
        x = x0 + (rank - 1) / max(max_rank - 1, 1) * (x1 - x0)
        return x, y1 - rate * (y1 - y0)

    label_font, title_font = font(12), font(15)
    for rate in np.linspace(0.0, 1.0, 6):
        _, y = point(1, rate)
        draw.line([x0, y, x1, y], fill=(225, 225, 225))
        draw.text((x0 - 6, y), f"{rate:.0%}", fill=BLACK, font=label_font, anchor="rm")
    for rank in x_ticks(max_rank):
        x, _ = point(rank, 0.0)
        draw.line([x, y1, x, y1 + 4], fill=BLACK)
        draw.text((x, y1 + 6), str(rank), fill=BLACK, font=label_font, anchor="ma")
    draw.rectangle([x0, y0, x1, y1], outline=BLACK)
    draw.line([point(r + 1, v) for r, v in enumerate(cmc)], fill=BLUE, width=2)
    for rank in (1, 5, 10):
        if rank <= max_rank:
            x, y = point(rank, cmc[rank - 1])
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=RED)
    draw.text((layout.width / 2, layout.height - 6), "rank", fill=BLACK, font=label_font, anchor="md")
    draw.text((layout.width / 2, 8), title, fill=BLACK, font=title_font, anchor="ma")
    ranks = "  ".join(f"Rank-{r}: {cmc[r - 1]:.1%}" for r in (1, 5, 10) if r <= max_rank)
    draw.text((layout.width / 2, 32), f"mAP: {mAP:.1%}  {ranks}", fill=BLACK, font=label_font,
              anchor="ma")
    return canvas


def save_png(image: Image.Image, path: str) -> None:
    """Write a PNG atomically (a crash never leaves a truncated picture)."""
    with atomic_output(path) as tmp_path:
        image.save(tmp_path, format="PNG")
