"""What the tools share on the command line: the parser, its argument types and logging.
Light on purpose: nothing here imports torch, so --help and a mistaken option answer at once;
a tool imports its work (`tools.loading` and the library) after parsing.
"""
from __future__ import annotations

import argparse
import logging
import math
import textwrap
from typing import Union

from config.choices import AUTO, MEAN
from config.cli import base_parser
from utils.errors import ToolError  # noqa: F401  (the tools' error type, by this name)

LabelChoice = Union[str, int]
DEFAULT_TOPK = 10  # matches shown per query, by search.py and gallery.py search alike

logger = logging.getLogger("transreid.tools")

HELP_WIDTH = 88


# ------------------------------------------------------------------------------ command line
def label_choice(text: str) -> LabelChoice:
    """argparse type of --camera / --view."""
    if text in (MEAN, AUTO):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not 'mean', 'auto' or a label id") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"label ids start at 0, got {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def bounded_float(low: float, high: float, low_open: bool = False, high_open: bool = False,
                  what: str = "a number"):
    """argparse type of a finite float in an interval (each bound open or closed): nan, inf and
    values outside are refused in one line naming the interval."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number; give {what} in "
                                             f"{interval}") from None
        inside = ((low < value if low_open else low <= value)
                  and (value < high if high_open else value <= high))
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"{what} is a finite number in {interval}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type by it
    return parse


def tool_parser(description: str, example: str,
                exported_ok: bool = False) -> argparse.ArgumentParser:
    """test.py's parser (--config_file, KEY VALUE overrides) plus the trained weights (or, when
    `exported_ok`, an exported model: see `load_extractor`)."""
    parser = base_parser(textwrap.fill(description, HELP_WIDTH))
    # Raw, so that the example stays one line to copy; the prose is wrapped here instead.
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = f"{textwrap.fill(parser.epilog, HELP_WIDTH)}\n\nexample:\n  {example}"
    exported = ", or an .onnx / .xml written by tools/export.py" if exported_ok else ""
    parser.add_argument("--weight", default="",
                        help=f"trained model (.pth written by train.py{exported}); sets TEST.WEIGHT")
    return parser


# (label, its plural, where an image's label can come from)
SIDE_INFO = (("camera", "cameras", "a Market-style name or the list file"),
             ("view", "views", "the list file"))


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """--camera / --view: the SIE labels of images (see this module's doc)."""
    for name, plural, source in SIDE_INFO:
        parser.add_argument(
            f"--{name}", type=label_choice, default=AUTO, metavar="auto|mean|ID",
            help=f"SIE {name} label of each image: 'auto' (default: the {name} {source} gives, "
                 f"else 'mean'), 'mean' (average the feature over every {name} the model knows: "
                 f"the neutral choice for unknown {plural}), or a fixed id. Ignored by models "
                 f"without SIE {name} embeddings.")


def add_sie_count_arguments(parser: argparse.ArgumentParser) -> None:
    """--num-cameras / --num-views, needed only to split a joint camera-view SIE table."""
    for _, plural, _ in SIDE_INFO:
        parser.add_argument(
            f"--num-{plural}", type=positive_int, default=None, metavar="N",
            help=f"{plural} the model was trained with; read from the checkpoint unless it holds "
                 "a joint camera-and-view table (SIE_CAMERA and SIE_VIEW both on)")


def configure_logging() -> None:
    """Log lines to stderr when the tool runs as a script (library code only uses loggers)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that exist (never an input of the command)")
