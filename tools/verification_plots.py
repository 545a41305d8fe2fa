"""Pictures of verification figures (`utils.verification.VerificationResult`): the ROC curve,
and the genuine and impostor distance histograms, drawn with matplotlib (optional)."""
from __future__ import annotations

import os
from typing import Dict

import numpy as np
from PIL import Image

from tools.drawing import (BLUE, GREEN, RED, distance_texts, figure_image, mpl_colour, new_figure,
                           save_png)
from utils.distance import DISTANCE_UNIT
from utils.verification import DistanceCounts, VerificationResult

ROC_PNG, HISTOGRAM_PNG = "verification_roc.png", "verification_distances.png"
VERIFICATION_PICTURES = (ROC_PNG, HISTOGRAM_PNG)
HISTOGRAM_BINS = 100


def draw_roc(result: VerificationResult, width: int = 640, height: int = 480) -> Image.Image:
    """TAR against FAR (log scale), the reported FARs marked, the EER in the title."""
    return figure_image(roc_figure(result, width, height))


def roc_figure(result: VerificationResult, width: int = 640, height: int = 480):
    """The matplotlib Figure of `draw_roc`."""
    figure = new_figure(width, height, "the ROC curve")
    axes = figure.add_subplot(1, 1, 1)
    shown = result.roc_far > 0  # a log axis has no 0
    axes.plot(result.roc_far[shown], result.roc_tar[shown], color=mpl_colour(BLUE), linewidth=2)
    low_far = max(1.0 / max(result.num_impostor, 1), 1e-6)
    for far, tar in result.tar_at_far.items():
        if far < low_far:  # left of the axis: a label there would float outside the plot
            continue
        axes.plot([far], [tar], "o", color=mpl_colour(RED), markersize=5)
        # The curve rises to the right: a low point's label goes above it on the left, a high
        # one's below it on the right, so that neither crosses the curve or the tick labels.
        low = tar < 0.5
        axes.annotate(f"{tar:.1%} @ {far:g}", (far, tar), textcoords="offset points",
                      xytext=(-4, 6) if low else (4, -6), ha="right" if low else "left",
                      va="bottom" if low else "top", fontsize=8)
    axes.set_xscale("log")
    axes.set_xlim(low_far, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.grid(True, color="0.88")
    axes.set_xlabel("false accept rate (impostor pairs accepted)")
    axes.set_ylabel("true accept rate")
    axes.set_title(f"ROC: EER {result.eer:.2%}, {result.num_genuine} genuine / "
                   f"{result.num_impostor} impostor pairs", fontsize=10)
    figure.tight_layout()
    return figure


def _density(counts: DistanceCounts, edges: np.ndarray) -> np.ndarray:
    """Share of the pairs in each bin of `edges`, from a step CDF."""
    at_most = counts.count_at_most(edges)
    return np.diff(at_most) / max(counts.total, 1)


def draw_distance_histograms(result: VerificationResult, width: int = 640,
                             height: int = 480) -> Image.Image:
    """Genuine and impostor distance distributions, with the threshold for the target FAR."""
    return figure_image(histogram_figure(result, width, height))


def histogram_figure(result: VerificationResult, width: int = 640, height: int = 480):
    """The matplotlib Figure of `draw_distance_histograms`."""
    figure = new_figure(width, height, "the distance histograms")
    axes = figure.add_subplot(1, 1, 1)
    values = np.concatenate([result.genuine.values, result.impostor.values])
    edges = np.linspace(values.min(), values.max(), HISTOGRAM_BINS + 1)
    for counts, colour, name in ((result.genuine, GREEN, "genuine"),
                                 (result.impostor, RED, "impostor")):
        axes.stairs(_density(counts, edges), edges, color=mpl_colour(colour), fill=True,
                    alpha=0.45, label=f"{name} ({counts.total} pairs)")
    axes.axvline(result.threshold, color="0.2", linestyle="--",
                 label=f"threshold {distance_texts([result.threshold])[0]} "
                       f"(FAR {result.target_far:g})")
    axes.set_xlabel(DISTANCE_UNIT)
    axes.set_ylabel("share of pairs")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def save_verification_plots(result: VerificationResult, folder: str, roc_name: str = ROC_PNG,
                            histogram_name: str = HISTOGRAM_PNG) -> Dict[str, str]:
    """Write the ROC curve and the distance histograms as PNGs in `folder` (atomically); their
    paths."""
    paths = {"roc": os.path.join(folder, roc_name),
             "distances": os.path.join(folder, histogram_name)}
    save_png(draw_roc(result), paths["roc"])
    save_png(draw_distance_histograms(result), paths["distances"])
    return paths
