"""Training curves of one or more runs from their OUTPUT_DIR/metrics.csv (written by train.py).

python tools/plot_training.py OUTPUT_DIR [OUTPUT_DIR ...] [--output PNG]

Draws the loss (with its ID, triplet and, when trained with it, center parts), the training
accuracy, the learning rate and the evaluations' mAP, Rank-k and mINP against epochs into
OUTPUT_DIR/training.png of the first run; several runs are overlaid in one colour each, named by
their folder. Needs matplotlib.

The x axis counts epochs done: iteration i of epoch e (of N_e batches) is at e - 1 + i / N_e,
so an epoch's end and its evaluation are at x = e. N_e is the epoch's largest iteration in
the file (its end row's batch count); for the last epoch, which may still be running, at least
the largest of the earlier epochs'.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loss import LOSS_PARTS
from utils.errors import exits_on_user_error
from processor.run_log import METRICS_NAME, Row, metrics_path, read_metrics
from tools.common import ToolError, add_overwrite_argument, configure_logging
from tools.drawing import figure_image, new_figure, save_png
from utils.files import check_output, fresh_names
from utils.metrics import METRICS

logger = logging.getLogger("transreid.tools")

OUTPUT_NAME = "training.png"
WIDTH, HEIGHT = 1200, 800
LINE_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))
MARKERS = ("o", "s", "^", "v", "D")


def loss_lines() -> list:
    """The total loss and each of ReIDLoss's parts (loss.LOSS_PARTS)."""
    parts = [(name, LINE_STYLES[i % len(LINE_STYLES)], "", name[:-len("_loss")].replace("id", "ID"))
             for i, name in enumerate(LOSS_PARTS)]
    return [("loss", "-", "", "total"), *parts]


def metric_label(name: str) -> str:
    return f"Rank-{name[len('rank'):]}" if name.startswith("rank") else name


# (panel title, y label, [(column, line style, marker, legend name)])
PANELS = (
    ("Loss", "loss", loss_lines()),
    ("Training accuracy", "accuracy", [("accuracy", "-", "", "accuracy")]),
    ("Learning rate", "base lr", [("lr", "-", "", "lr")]),
    # Solid, told apart by markers: a legend's short line hides a dash pattern behind its marker.
    ("Evaluation", "score", [(name, "-", MARKERS[i % len(MARKERS)], metric_label(name))
                             for i, name in enumerate(METRICS)]),
)
PERCENT_COLUMNS = {"accuracy", *METRICS}

Series = Tuple[List[float], List[float]]


@dataclass
class RunCurves:
    """One run's curves: for each column, (x in epochs, value) of the rows that measured it."""
    name: str
    series: Dict[str, Series] = field(default_factory=dict)


def epoch_lengths(rows: Sequence[Row]) -> Dict[int, int]:
    """Batches per epoch as the module doc defines N_e."""
    lengths: Dict[int, int] = {}
    for row in rows:
        if row["iteration"]:
            epoch = int(row["epoch"])
            lengths[epoch] = max(lengths.get(epoch, 0), int(row["iteration"]))
    if len(lengths) > 1:
        last = max(lengths)
        lengths[last] = max(lengths.values())
    return lengths


def epoch_position(row: Row, lengths: Dict[int, int]) -> float:
    """x of a row: epochs done; a row without an iteration (an evaluation) is at its epoch's end."""
    epoch = int(row["epoch"])
    if not row["iteration"] or not lengths.get(epoch):
        return float(epoch)
    return epoch - 1 + int(row["iteration"]) / lengths[epoch]


def load_run(output_dir: str, name: str) -> RunCurves:
    path = metrics_path(output_dir)
    if not os.path.isfile(path):
        raise ToolError(f"'{output_dir}' has no {METRICS_NAME}: give the OUTPUT_DIR of a run "
                        "trained by train.py (older runs did not write one)")
    rows = read_metrics(path)
    if not rows:
        raise ToolError(f"{path} has no rows yet: train.py writes one every SOLVER.LOG_PERIOD "
                        "iterations")
    lengths = epoch_lengths(rows)
    run = RunCurves(name)
    for row in rows:
        x = epoch_position(row, lengths)
        for column, value in row.items():
            if column not in ("epoch", "iteration") and value:
                xs, ys = run.series.setdefault(column, ([], []))
                xs.append(x)
                ys.append(float(value))
    return run


def run_names(output_dirs: Sequence[str]) -> List[str]:
    """Folder names for the legend; the paths as given where two folders share a name."""
    names = [os.path.basename(os.path.normpath(path)) for path in output_dirs]
    return [name if names.count(name) == 1 else path for name, path in zip(names, output_dirs)]


def draw_training(runs: Sequence[RunCurves], width: int = WIDTH, height: int = HEIGHT):
    """Four panels (PANELS) of every run, overlaid; a picture of width x height pixels."""
    return figure_image(training_figure(runs, width, height))


def line_style(linestyle, marker: str) -> dict:
    """The look of a curve, shared by the curve and its legend entry."""
    return dict(linestyle=linestyle, marker=marker, markersize=4, linewidth=1.5)


def training_figure(runs: Sequence[RunCurves], width: int = WIDTH, height: int = HEIGHT):
    """The matplotlib Figure of `draw_training`; each curve's gid is its metrics.csv column."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter
    figure = new_figure(width, height, "training curves")
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for index, (title, ylabel, columns) in enumerate(PANELS):
        axes = figure.add_subplot(2, 2, index + 1)
        drawn = [line for line in columns if any(line[0] in run.series for run in runs)]
        for run, colour in zip(runs, colours):
            for column, linestyle, marker, _ in drawn:
                if column in run.series:
                    axes.plot(*run.series[column], color=colour, gid=column,
                              **line_style(linestyle, marker))
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.grid(True, color="0.9")
        if columns[0][0] in PERCENT_COLUMNS:
            axes.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        if len(columns) > 1 and drawn:  # which line is which; the runs' colours: figure legend
            axes.legend([Line2D([], [], color="0.3", **line_style(linestyle, marker))
                         for _, linestyle, marker, _ in drawn],
                        [label for *_, label in drawn], loc="best", fontsize=8, handlelength=3)
    figure.legend([Line2D([], [], color=colour, linewidth=2) for colour in colours],
                  [run.name for run in runs], loc="upper center", ncol=min(len(runs), 4),
                  frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    return figure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Draw the loss (total, ID, triplet), training accuracy, learning rate and "
                    "mAP / Rank-1 of one or more training runs from their metrics.csv; several "
                    "runs are overlaid for comparison.",
        epilog="example: python tools/plot_training.py logs/market_vit logs/market_transreid")
    parser.add_argument("output_dirs", nargs="+", metavar="OUTPUT_DIR",
                        help="OUTPUT_DIR of a run (the folder holding its metrics.csv)")
    parser.add_argument("--output", default="",
                        help=f"PNG to write (default: FIRST_OUTPUT_DIR/{OUTPUT_NAME}, or "
                             f"a fresh name beside an earlier one)")
    add_overwrite_argument(parser)
    return parser


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    new_figure(1, 1, "training curves")  # fails now, not after reading, without matplotlib
    output = args.output or fresh_names([os.path.join(args.output_dirs[0], OUTPUT_NAME)])[0]
    check_output(output, ".png", [metrics_path(path) for path in args.output_dirs],
                 args.overwrite)
    names = run_names(args.output_dirs)
    runs = [load_run(path, name) for path, name in zip(args.output_dirs, names)]
    save_png(draw_training(runs), output)
    logger.info("training curves of %d run(s) in %s", len(runs), output)
    return 0


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
