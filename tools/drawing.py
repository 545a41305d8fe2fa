"""Pictures: rank lists (Pillow) and charts (matplotlib, an optional dependency imported only
when a chart is drawn): the CMC / mAP summary, and the helpers of tools/plot_training.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from datasets.bases import read_image
from datasets.image_list import ImageRecord
from utils.errors import ToolError
from utils.files import atomic_output

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


# -------------------------------------------------------------------------- matplotlib charts
def new_figure(width: int, height: int, what: str, dpi: int = 100):
    """A matplotlib Figure of `width` x `height` pixels, outside pyplot (no global state, no
    display needed). matplotlib is optional: without it, a ToolError naming `what` and the fix."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ToolError(f"drawing {what} needs matplotlib: pip install matplotlib") from None
    # The epsilon keeps the inch size from rounding down to one pixel short (e.g. 3.33 x 100).
    return Figure(figsize=((width + 1e-3) / dpi, (height + 1e-3) / dpi), dpi=dpi)


def figure_image(figure) -> Image.Image:
    """The figure rendered by matplotlib's Agg backend, as an RGB picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def mpl_colour(colour: RGB) -> Tuple[float, float, float]:
    return tuple(channel / 255 for channel in colour)


# -------------------------------------------------------------------------- CMC / mAP chart
@dataclass(frozen=True)
class ChartLayout:
    """Pixel size of the summary chart and the margins around its plot box."""
    width: int = 640
    height: int = 480
    left: int = 60  # room for the y labels
    right: int = 20
    top: int = 60  # room for the title and the numbers
    bottom: int = 50  # room for the x labels

    def axes_rect(self) -> Tuple[float, float, float, float]:
        """The plot box as matplotlib's (left, bottom, width, height) figure fractions."""
        return (self.left / self.width, self.bottom / self.height,
                (self.width - self.left - self.right) / self.width,
                (self.height - self.top - self.bottom) / self.height)


def x_ticks(max_rank: int) -> list:
    """Rank 1 and round ranks up to `max_rank`, about five of them."""
    step = 5 * int(np.ceil(max_rank / 25)) if max_rank > 5 else 1
    return sorted({1, *range(step, max_rank + 1, step)})


def draw_cmc_summary(cmc: Sequence[float], mAP: float, title: str,
                     layout: ChartLayout = ChartLayout()) -> Image.Image:
    """The CMC curve (matching rate against rank), with mAP and Rank-1/5/10 written above it;
    a picture of layout.width x layout.height pixels (drawn with matplotlib)."""
    from matplotlib.ticker import PercentFormatter
    figure = new_figure(layout.width, layout.height, "the CMC summary")
    cmc = np.asarray(cmc, dtype=float)
    max_rank = len(cmc)
    axes = figure.add_axes(layout.axes_rect())
    axes.plot(np.arange(1, max_rank + 1), cmc, color=mpl_colour(BLUE), linewidth=2)
    marked = [rank for rank in (1, 5, 10) if rank <= max_rank]
    axes.plot(marked, cmc[np.asarray(marked) - 1], "o", color=mpl_colour(RED), markersize=5,
              clip_on=False)
    axes.set_xlim(1, max(max_rank, 2))
    axes.set_ylim(0.0, 1.0)
    axes.set_xticks(x_ticks(max_rank))
    axes.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    axes.grid(True, color="0.88")
    axes.set_xlabel("rank")
    ranks = "  ".join(f"Rank-{rank}: {cmc[rank - 1]:.1%}" for rank in marked)
    figure.text(0.5, 1 - 8 / layout.height, title, ha="center", va="top", fontsize=12)
    figure.text(0.5, 1 - 32 / layout.height, f"mAP: {mAP:.1%}  {ranks}", ha="center", va="top",
                fontsize=10)
    return figure_image(figure)


def save_png(image: Image.Image, path: str) -> None:
    """Write a PNG atomically (a crash never leaves a truncated picture)."""
    with atomic_output(path) as tmp_path:
        image.save(tmp_path, format="PNG")
