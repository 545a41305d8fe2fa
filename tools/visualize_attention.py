"""Attention maps of a trained TransReID: where the class token of each branch looks.

python tools/visualize_attention.py --config_file CONFIG --weight MODEL.pth \\
    (--images FOLDER_LIST_OR_IMAGE [--images ...] | --query-index I,J,...) \\
    [--output-dir FOLDER] [KEY VALUE ...]

Each map is the attention rollout (model/attention_rollout.py) of a branch's class token over
the image patches, spread over the pixels (overlapping patches averaged) and blended over the
image with a matplotlib colormap (optional dependency: pip install matplotlib). Each map is
scaled from its own minimum (coldest colour) to its maximum (hottest), so colours compare
places within a map, not maps with each other. Pixels no patch covers (the right or bottom
margin when the patch grid does not reach it) are left uncoloured.

With JPM, the local maps are drawn over the image: every token of a part is shown at the
patch it came from, after JPM's shift and shuffle. A patch the shuffle's padding copies
counts once per copy in its part. Tail patches (in no part, when the patch count is not a
multiple of MODEL.DEVIDE_LENGTH) get only the weight the backbone blocks passed on to the
part's tokens, not b2's direct attention; the tool logs which patches are repeated or left out.

Writes one PNG per image (the image, then the global map, then local maps 1..P) and grid.png,
the same panels for the first --grid-size images, one row each, named above it; under them a
colour scale and, with JPM, a caption with the largest difference between a local map and the
global one and why it is small (model/attention_rollout.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from datasets import load_eval_dataset
from datasets.bases import read_image
from datasets.image_list import ImageRecord, collect_images
from model import build_transformer_local
from model.attention_rollout import attention_maps, branch_names, jpm_layout, patch_grid, pixel_maps
from model.backbones.specs import is_swin
from model.trained import TrainedModel, load_trained
from processor import FeatureExtractor
from utils.errors import exits_on_user_error
from processor.inference import LabelChoice
from tools.common import (ToolError, add_label_arguments, add_overwrite_argument,
                          add_sie_count_arguments, configure_logging, positive_int, tool_parser)
from tools.loading import default_folder, load_tool_config
from tools.drawing import WHITE, PlacedText, draw_texts, save_png, wrap_words
from tools.visualize_ranks import choose_queries, index_list
from utils.files import check_output_folder
from utils.progress import Progress

# The models with a class token to roll out: TransReID's ViTs and CLIP-ReID's.
ATTENTION_MODELS = ('transformer', 'ViT-B-16', 'ViT-T-16')

logger = logging.getLogger("transreid.tools")

GRID_NAME = "grid.png"
IMAGE_COLUMN = "image"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(
        "Draw the attention rollout of a trained transformer: where the class token of the "
        "global branch and, with JPM, of each local branch looks in the image, as heat maps "
        "over your images or over queries of the test set of DATASETS.NAMES. Needs matplotlib.",
        "python tools/visualize_attention.py --config_file configs/Market/vit_transreid_stride.yml "
        "--weight logs/market/transformer_120.pth --images my_crops/ --output-dir attention/")
    source = parser.add_mutually_exclusive_group(required=True)
    # One value per --images: a greedy list would swallow the KEY VALUE overrides that follow.
    source.add_argument("--images", action="append",
                        help="image, folder (recursive) or list file ('path [pid camid [viewid]]' "
                             "lines); repeat --images for more")
    source.add_argument("--query-index", type=index_list, metavar="I,J,...",
                        help="comma-separated indices of queries of the test set of "
                             "DATASETS.NAMES (0 = first query)")
    parser.add_argument("--output-dir", "--output", dest="output_dir", default="",
                        help="folder of the pictures (default: OUTPUT_DIR/attention, or "
                             "./attention when OUTPUT_DIR is empty)")
    parser.add_argument("--grid-size", type=positive_int, default=8,
                        help="images in grid.png, the first ones (default 8)")
    add_overwrite_argument(parser)
    parser.add_argument("--scale", type=positive_int, default=2,
                        help="each panel is INPUT.SIZE_TEST times this (default 2)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="opacity of the heat map over the image, 0 to 1 (default 0.5)")
    parser.add_argument("--colormap", default="jet",
                        help="matplotlib colormap of the heat maps (default jet)")
    add_label_arguments(parser)
    add_sie_count_arguments(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be between 0 and 1, got {args.alpha}")
    return args


def check_attention_model(cfg) -> None:
    """Refuse, before any work, models whose attention is not a ViT class token's rollout."""
    if cfg.MODEL.NAME not in ATTENTION_MODELS:
        raise ToolError(f"attention maps need a transformer (MODEL.NAME transformer, or CLIP-ReID's "
                        f"ViT-B-16); {cfg.MODEL.NAME} has no class token to draw")
    if is_swin(cfg):
        raise ToolError(f"{cfg.MODEL.TRANSFORMER_TYPE} (SOLIDER's Swin) has no class token, so "
                        "there is no class-token rollout to draw: its windows attend locally, "
                        "and its feature is the mean of the last stage's tokens")


def load_model(cfg, args: argparse.Namespace) -> TrainedModel:
    """The trained model, sized from its checkpoint (the one place that builds it)."""
    return load_trained(cfg, num_cameras=args.num_cameras, num_views=args.num_views)


def load_colormap(name: str):
    """The matplotlib colormap `name`; matplotlib is imported only here (optional dependency)."""
    try:
        import matplotlib
    except ImportError:
        raise ToolError("drawing heat maps needs matplotlib: pip install matplotlib") from None
    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ToolError(f"--colormap '{name}' is not a matplotlib colormap; try jet, viridis, "
                        "inferno or turbo") from None


# ---------------------------------------------------------------------------------- images
def chosen_images(cfg, args: argparse.Namespace) -> Tuple[List[ImageRecord], List[str]]:
    """The images to draw and the file name (without .png) of each picture."""
    if args.query_index is None:
        records = [record for source in args.images for record in collect_images(source)]
        names = [f"{i:03d}_{os.path.splitext(os.path.basename(r.path))[0]}"
                 for i, r in enumerate(records)]
        return records, names
    query = load_eval_dataset(cfg).query
    chosen = choose_queries(args, len(query))
    return [ImageRecord(*query[i]) for i in chosen], [f"query_{i:05d}" for i in chosen]


class AttentionMapsOf(nn.Module):
    """A model whose 'features' are another model's flattened patch maps (branches x patches),
    so that the extractor's batching and SIE label averaging apply to maps as to features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
                view_label: Optional[torch.Tensor] = None) -> torch.Tensor:
        return attention_maps(self.model, images, cam_label, view_label).maps.flatten(1)


def image_attention(cfg, trained: TrainedModel, records: Sequence[ImageRecord],
                    camera: LabelChoice, view: LabelChoice,
                    chunk: int = 64) -> Iterator[Tuple[List[int], np.ndarray]]:
    """Per chunk of records: their indices and pixel maps (images x branches x H x W, NaN where
    no patch looks). With SIE, the maps are averaged over each image's labels as features are.
    Pixel maps are made a chunk at a time, so that a large folder is never held at full size."""
    model = trained.model
    extractor = FeatureExtractor(cfg, AttentionMapsOf(model), counts=trained.counts,
                                 camera=camera, view=view)
    flat = extractor.extract_records(records, desc="attention")
    grid = patch_grid(model)
    for start in range(0, len(records), chunk):
        rows = list(range(start, min(start + chunk, len(records))))
        maps = flat[rows].to(extractor.device).view(len(rows), -1, *grid)
        yield rows, pixel_maps(model, maps).cpu().numpy()


def log_jpm_layout(model: torch.nn.Module) -> None:
    """Say which patches the local maps show more than once or only indirectly."""
    if not isinstance(model, build_transformer_local):
        return
    layout = jpm_layout(model)
    columns = model.base.patch_embed.num_x
    if layout.repeated:
        logger.info("JPM padding repeats patches (row, column) %s in the parts: their local "
                    "weight counts once per copy", _grid_positions(layout.repeated, columns))
    if layout.left_out:
        logger.info("JPM tail: patches (row, column) %s are in no part; local maps show them "
                    "only through the backbone blocks", _grid_positions(layout.left_out, columns))


def _grid_positions(patches: Sequence[int], columns: int) -> str:
    return ", ".join(f"({patch // columns}, {patch % columns})" for patch in patches)


# --------------------------------------------------------------------------------- drawing
@dataclass(frozen=True)
class GridLayout:
    """Panels in rows (one per image, its name above it) and columns (the image, then one per
    branch), under a header row naming the columns; under them the colour scale and a caption."""
    panel_width: int
    panel_height: int
    gap: int = 4
    header_height: int = 16
    name_height: int = 14
    line_height: int = 14
    bar_width: int = 80

    @property
    def row_height(self) -> int:
        return self.name_height + self.panel_height + self.gap

    def grid_size(self, rows: int, columns: int) -> Tuple[int, int]:
        """(width, height) of the headers and `rows` x `columns` panels."""
        return (self.gap + columns * (self.panel_width + self.gap),
                self.header_height + self.gap + rows * self.row_height)

    def panel_origin(self, row: int, column: int) -> Tuple[int, int]:
        return (self.gap + column * (self.panel_width + self.gap),
                self.header_height + self.gap + row * self.row_height + self.name_height)


@dataclass(frozen=True)
class GridPicture:
    """Everything a grid shows and where, but the panels: `draw_grid` draws it, tests read it."""
    size: Tuple[int, int]
    texts: Tuple[PlacedText, ...]
    bar: Tuple[int, int, int, int]  # the colour scale, coldest colour on the left


def drawn_values(pixel_map: np.ndarray) -> np.ndarray:
    """`pixel_map` on its colour scale: 0 at its minimum, 1 at its maximum, NaN kept."""
    defined = np.isfinite(pixel_map)
    if not defined.any():
        return pixel_map
    low, high = pixel_map[defined].min(), pixel_map[defined].max()
    return (pixel_map - low) / (high - low) if high > low else np.where(defined, 0.0, np.nan)


def largest_local_difference(maps: np.ndarray) -> Optional[float]:
    """Largest difference, over pixels, images and local branches, between a local map and the
    global one as drawn (`drawn_values`); None without local branches. maps: images x branches
    x H x W, the global branch first."""
    if maps.shape[1] < 2:
        return None
    return max(float(np.nanmax(np.abs(drawn_values(local) - drawn_values(image_maps[0]))))
               for image_maps in maps for local in image_maps[1:])


def caption(maps: np.ndarray) -> List[str]:
    """Why the local maps look like the global one, with how much they differ in `maps`."""
    difference = largest_local_difference(maps)
    if difference is None:
        return []
    return [f"Local maps differ from the global map by at most {difference:.0%} of the colour "
            "scale: each branch's last block keeps at least half its weight on the class token, "
            "whose rollout through the backbone is the same in every branch "
            "(docs/visualization.md)."]


def grid_picture(names: Sequence[str], headers: Sequence[str], notes: Sequence[str],
                 layout: GridLayout) -> GridPicture:
    """Column headers, a name above each row, the colour scale and `notes`, placed."""
    width, height = layout.grid_size(len(names), len(headers))
    texts = [PlacedText(header, (layout.panel_origin(0, column)[0] + layout.panel_width / 2,
                                 (layout.header_height + layout.gap) / 2), "mm")
             for column, header in enumerate(headers)]
    texts += [PlacedText(name, (layout.gap, layout.panel_origin(row, 0)[1] - 2), "ld")
              for row, name in enumerate(names)]
    middle = height + layout.line_height // 2
    low = PlacedText("lowest", (layout.gap, middle), "lm")
    bar_left = low.box()[2] + layout.gap
    bar = (bar_left, middle - 4, bar_left + layout.bar_width, middle + 4)
    high = PlacedText("highest attention, each map its own range", (bar[2] + layout.gap, middle),
                      "lm")
    texts += [low, high]
    width = max(width, high.box()[2] + layout.gap)
    lines = [line for note in notes for line in wrap_words(note, width - 2 * layout.gap)]
    top = height + layout.line_height
    texts += [PlacedText(line, (layout.gap, top + (number + 0.5) * layout.line_height), "lm")
              for number, line in enumerate(lines)]
    return GridPicture((width, top + len(lines) * layout.line_height + layout.gap), tuple(texts),
                       bar)


def heat_map_panel(image: Image.Image, pixel_map: np.ndarray, colormap, alpha: float,
                   size: Tuple[int, int]) -> Image.Image:
    """`pixel_map` (H x W, NaN where undefined) coloured from its minimum to its maximum and
    blended over `image`, both resized to `size` (width, height); NaN pixels stay uncoloured."""
    values = drawn_values(pixel_map)
    defined = np.isfinite(values)
    colours = (colormap(np.where(defined, values, 0.0))[..., :3] * 255).round().astype(np.uint8)
    heat = Image.fromarray(colours).resize(size, Image.BILINEAR)
    mask = Image.fromarray(defined.astype(np.uint8) * 255).resize(size, Image.NEAREST)
    photo = image.resize(size, Image.BILINEAR)
    return Image.composite(Image.blend(photo, heat, alpha), photo, mask)


def image_panels(path: str, maps: np.ndarray, colormap, alpha: float,
                 layout: GridLayout) -> List[Image.Image]:
    """The image, then its heat map of each branch."""
    size = (layout.panel_width, layout.panel_height)
    image = read_image(path)
    heat_maps = [heat_map_panel(image, branch_map, colormap, alpha, size) for branch_map in maps]
    return [image.resize(size, Image.BILINEAR), *heat_maps]


def draw_grid(rows: Sequence[Sequence[Image.Image]], picture: GridPicture, colormap,
              layout: GridLayout) -> Image.Image:
    """The panels of each row (one image each) in the frame of `picture`."""
    canvas = Image.new("RGB", picture.size, WHITE)
    for row, panels in enumerate(rows):
        for column, panel in enumerate(panels):
            canvas.paste(panel, layout.panel_origin(row, column))
    left, top, right, bottom = picture.bar
    scale = (colormap(np.linspace(0.0, 1.0, right - left))[None, :, :3] * 255).astype(np.uint8)
    canvas.paste(Image.fromarray(scale).resize((right - left, bottom - top)), (left, top))
    draw_texts(ImageDraw.Draw(canvas), picture.texts)
    return canvas


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    # A map of the mirror image would be mirrored: flip averaging is for features only.
    cfg = load_tool_config(args, ["TEST.FLIP_FEATS", "False"])
    colormap = load_colormap(args.colormap)  # before any work: matplotlib may be missing
    output_dir = args.output_dir or default_folder(cfg, "attention")
    records, names = chosen_images(cfg, args)
    check_output_folder(output_dir, [*(f"{name}.png" for name in names), GRID_NAME],
                        [args.run_config, cfg.TEST.WEIGHT, *(args.images or [])], args.overwrite)
    check_attention_model(cfg)
    trained = load_model(cfg, args)
    log_jpm_layout(trained.model)
    height, width = cfg.INPUT.SIZE_TEST
    layout = GridLayout(width * args.scale, height * args.scale)
    headers = [IMAGE_COLUMN, *branch_names(trained.model)]
    grid_rows, grid_maps = [], []
    computed = [(i, image_maps) for rows, maps in image_attention(
        cfg, trained, records, args.camera, args.view) for i, image_maps in zip(rows, maps)]
    for i, image_maps in Progress(computed, len(computed), "drawing", logger):
        panels = image_panels(records[i].path, image_maps, colormap, args.alpha, layout)
        picture = grid_picture([names[i]], headers, caption(image_maps[None]), layout)
        save_png(draw_grid([panels], picture, colormap, layout),
                 os.path.join(output_dir, f"{names[i]}.png"))
        if len(grid_rows) < args.grid_size:
            grid_rows.append(panels)
            grid_maps.append(image_maps)
    picture = grid_picture(names[:len(grid_rows)], headers, caption(np.stack(grid_maps)), layout)
    save_png(draw_grid(grid_rows, picture, colormap, layout), os.path.join(output_dir, GRID_NAME))
    logger.info("Attention maps of %d images (%s) in %s", len(records), ", ".join(headers[1:]),
                output_dir)
    return 0


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
