"""Pictures: rank lists (Pillow) and charts (matplotlib, an optional dependency imported only
when a chart is drawn): the CMC / mAP summary, and the helpers of tools/plot_training.py."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from datasets.bases import read_image
from datasets.image_list import ImageRecord
from utils.distance import DISTANCE_UNIT
from utils.errors import ToolError
from utils.files import atomic_output

RGB = Tuple[int, int, int]
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (150, 150, 150)
GREEN, RED, BLUE = (0, 170, 0), (220, 0, 0), (30, 90, 220)


@functools.lru_cache(maxsize=None)
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


# What each frame colour of a rank list means, in the legend's order.
FRAME_MEANINGS: Tuple[Tuple[RGB, str], ...] = (
    (BLUE, "query"), (GREEN, "same identity"), (RED, "another identity"),
    (GREY, "identity unknown"))
CAPTION_FONT_SIZE = 11


def distance_texts(distances: Sequence[float]) -> List[str]:
    """The distances with one number of decimals: three significant digits of the largest, and
    up to three more where distinct distances would otherwise read the same."""
    values = np.asarray(distances, dtype=float).ravel()
    if not values.size:
        return []
    largest = float(np.abs(values).max())
    first = 3 if largest == 0 else max(3, 2 - int(np.floor(np.log10(largest))))
    distinct = len(np.unique(values))
    for decimals in range(first, first + 4):
        texts = [f"{value:.{decimals}f}" for value in values]
        if len(set(texts)) == distinct:
            break
    return texts


@dataclass(frozen=True)
class PlacedText:
    """A text of a Pillow picture: where it is anchored (Pillow's anchor codes) and its size."""
    text: str
    xy: Tuple[float, float]
    anchor: str = "la"
    size: int = CAPTION_FONT_SIZE

    def box(self) -> Tuple[int, int, int, int]:
        """(left, top, right, bottom) of the drawn text."""
        left, top, right, bottom = font(self.size).getbbox(self.text, anchor=self.anchor)
        x, y = self.xy
        return (int(left + x), int(top + y), int(np.ceil(right + x)), int(np.ceil(bottom + y)))


def wrap_words(text: str, width: int, size: int = CAPTION_FONT_SIZE) -> List[str]:
    """`text` in lines of at most `width` pixels (a longer word keeps a line of its own)."""
    lines: List[str] = []
    for word in text.split():
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and font(size).getlength(joined) <= width:
            lines[-1] = joined
        else:
            lines.append(word)
    return lines


def draw_texts(draw: ImageDraw.ImageDraw, texts: Sequence[PlacedText]) -> None:
    for text in texts:
        draw.text(text.xy, text.text, fill=BLACK, font=font(text.size), anchor=text.anchor)


@dataclass(frozen=True)
class RankListLayout:
    """Geometry of a rank-list picture: the query, a wider gap, then the matches in rank order,
    each thumbnail framed by a border and captioned underneath; under them, the legend."""
    thumb_height: int = 128
    thumb_width: int = 64
    border: int = 4
    gap: int = 6
    query_gap: int = 18
    caption_height: int = 30
    legend_line: int = 16
    swatch: int = 10

    @property
    def cell_width(self) -> int:
        return self.thumb_width + 2 * self.border

    def strip_size(self, num_matches: int) -> Tuple[int, int]:
        """(width, height) of the framed and captioned thumbnails of `num_matches` matches."""
        width = self.gap + (num_matches + 1) * (self.cell_width + self.gap) + self.query_gap
        height = 2 * self.gap + self.thumb_height + 2 * self.border + self.caption_height
        return width, height

    def cell_left(self, position: int) -> int:
        """x of cell `position` (0 = the query)."""
        return self.gap + position * (self.cell_width + self.gap) + (self.query_gap if position else 0)


@dataclass(frozen=True)
class RankListPicture:
    """Everything a rank list shows and where: `draw_rank_list` draws it, tests read it."""
    size: Tuple[int, int]
    cells: Tuple[Tuple[int, str, RGB], ...]  # (left, image path, frame colour), query first
    texts: Tuple[PlacedText, ...]  # captions, then the legend's words
    swatches: Tuple[Tuple[Tuple[int, int, int, int], RGB], ...]  # legend: (box, colour)


def rank_list_picture(query: ImageRecord, matches: Sequence[ImageRecord],
                      distances: Sequence[float],
                      layout: RankListLayout = RankListLayout()) -> RankListPicture:
    """The query then its matches, framed blue (query), green (same identity), red (another)
    or grey (unknown), captioned with rank and distance; a legend of the colours in use and of
    the numbers under them."""
    colours = [border_colour(same_identity(query, match)) for match in matches]
    cells = [(layout.cell_left(0), query.path, BLUE)]
    captions = [["query", f"id {query.pid}" if query.pid is not None else ""]]
    numbers = distance_texts(distances)
    for rank, (match, colour, text) in enumerate(zip(matches, colours, numbers), 1):
        cells.append((layout.cell_left(rank), match.path, colour))
        captions.append([f"#{rank}", text])
    width, strip_height = layout.strip_size(len(matches))
    texts = [PlacedText(line, (left + layout.cell_width / 2,
                               strip_height - layout.gap - layout.caption_height + 2
                               + number * layout.caption_height // 2), "ma")
             for (left, _, _), lines in zip(cells, captions) for number, line in enumerate(lines)]
    entries = [(colour, name) for colour, name in FRAME_MEANINGS
               if colour == BLUE or colour in colours]
    entries.append((None, f"under each match: rank, {DISTANCE_UNIT}"))
    legend_texts, swatches, height = _legend(entries, width, strip_height, layout)
    width = max([width, *(text.box()[2] + layout.gap for text in legend_texts)])
    return RankListPicture((width, height), tuple(cells), tuple(texts + legend_texts),
                           tuple(swatches))


def _legend(entries, width: int, top: int, layout: RankListLayout):
    """Legend entries (colour or None, words) flowed into lines of at most `width` pixels:
    (texts, swatches, bottom of the picture)."""
    texts, swatches = [], []
    x, y = layout.gap, top
    for colour, words in entries:
        mark = 0 if colour is None else layout.swatch + 4
        length = mark + int(np.ceil(font(CAPTION_FONT_SIZE).getlength(words)))
        if x > layout.gap and x + length > width - layout.gap:
            x, y = layout.gap, y + layout.legend_line
        middle = y + layout.legend_line // 2
        if colour is not None:
            half = layout.swatch // 2
            swatches.append(((x, middle - half, x + layout.swatch, middle + half), colour))
        texts.append(PlacedText(words, (x + mark, middle), "lm"))
        x += length + 3 * layout.gap
    return texts, swatches, y + layout.legend_line + layout.gap


def draw_rank_list(query: ImageRecord, matches: Sequence[ImageRecord], distances: Sequence[float],
                   layout: RankListLayout = RankListLayout()) -> Image.Image:
    """The picture of `rank_list_picture`."""
    picture = rank_list_picture(query, matches, distances, layout)
    canvas = Image.new("RGB", picture.size, WHITE)
    draw = ImageDraw.Draw(canvas)
    for left, path, colour in picture.cells:
        top = layout.gap
        draw.rectangle([left, top, left + layout.cell_width - 1,
                        top + layout.thumb_height + 2 * layout.border - 1], fill=colour)
        thumb = read_image(path).resize((layout.thumb_width, layout.thumb_height), Image.BILINEAR)
        canvas.paste(thumb, (left + layout.border, top + layout.border))
    for box, colour in picture.swatches:
        draw.rectangle(box, fill=colour)
    draw_texts(draw, picture.texts)
    return canvas


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
    left: int = 72  # room for the y tick labels and the y label
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
    return figure_image(cmc_summary_figure(cmc, mAP, title, layout))


def cmc_summary_figure(cmc: Sequence[float], mAP: float, title: str,
                       layout: ChartLayout = ChartLayout()):
    """The matplotlib Figure of `draw_cmc_summary`."""
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
    axes.set_ylabel("queries with a true match within the rank")
    ranks = "  ".join(f"Rank-{rank}: {cmc[rank - 1]:.1%}" for rank in marked)
    figure.text(0.5, 1 - 8 / layout.height, title, ha="center", va="top", fontsize=12)
    figure.text(0.5, 1 - 32 / layout.height, f"mAP: {mAP:.1%}  {ranks}", ha="center", va="top",
                fontsize=10)
    return figure


def save_png(image: Image.Image, path: str) -> None:
    """Write a PNG atomically (a crash never leaves a truncated picture)."""
    with atomic_output(path) as tmp_path:
        image.save(tmp_path, format="PNG")
