"""Pictures of verification figures (`utils.verification.VerificationResult`): the ROC curve,
and the genuine and impostor distance histograms, drawn with matplotlib (optional)."""
from __future__ import annotations

import os
from typing import Dict

import numpy as np
from PIL import Image

from tools.drawing import BLUE, GREEN, RED, figure_image, mpl_colour, new_figure, save_png
from utils.verification import DistanceCounts, VerificationResult

ROC_PNG, HISTOGRAM_PNG = "verification_roc.png", "verification_distances.png"
VERIFICATION_PICTURES = (ROC_PNG, HISTOGRAM_PNG)
HISTOGRAM_BINS = 100


def draw_roc(result: VerificationResult, width: int = 640, height: int = 480) -> Image.Image:
    """TAR against FAR (log scale), the reported FARs marked, the EER in the title."""
    figure = new_figure(width, height, "the ROC curve")
    axes = figure.add_subplot(1, 1, 1)
    shown = result.roc_far > 0  # a log axis has no 0
    axes.plot(result.roc_far[shown], result.roc_tar[shown], color=mpl_colour(BLUE), linewidth=2)
    for far, tar in result.tar_at_far.items():
        axes.plot([far], [tar], "o", color=mpl_colour(RED), markersize=5)
        axes.annotate(f"{tar:.1%} @ {far:g}", (far, tar), textcoords="offset points",
                      xytext=(6, -12), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlim(max(1.0 / max(result.num_impostor, 1), 1e-6), 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.grid(True, color="0.88")
    axes.set_xlabel("false accept rate (impostor pairs accepted)")
    axes.set_ylabel("true accept rate")
    axes.set_title(f"ROC: EER {result.eer:.2%}, {result.num_genuine} genuine / "
                   f"{result.num_impostor} impostor pairs", fontsize=10)
    figure.tight_layout()
    return figure_image(figure)


def _density(counts: DistanceCounts, edges: np.ndarray) -> np.ndarray:
    """Share of the pairs in each bin of `edges`, from a step CDF."""
    at_most = counts.count_at_most(edges)
    return np.diff(at_most) / max(counts.total, 1)


def draw_distance_histograms(result: VerificationResult, width: int = 640,
                             height: int = 480) -> Image.Image:
    """Genuine and impostor distance distributions, with the threshold for the target FAR."""
    figure = new_figure(width, height, "the distance histograms")
    axes = figure.add_subplot(1, 1, 1)
    values = np.concatenate([result.genuine.values, result.impostor.values])
    edges = np.linspace(values.min(), values.max(), HISTOGRAM_BINS + 1)
    for counts, colour, name in ((result.genuine, GREEN, "genuine"),
                                 (result.impostor, RED, "impostor")):
        axes.stairs(_density(counts, edges), edges, color=mpl_colour(colour), fill=True,
                    alpha=0.45, label=f"{name} ({counts.total} pairs)")
    axes.axvline(result.threshold, color="0.2", linestyle="--",
                 label=f"threshold {result.threshold:.4f} (FAR {result.target_far:g})")
    axes.set_xlabel("distance")
    axes.set_ylabel("share of pairs")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure_image(figure)


def save_verification_plots(result: VerificationResult, folder: str) -> Dict[str, str]:
    """Write the ROC curve and the histograms as PNGs in `folder` (atomically); their paths."""
    paths = {"roc": os.path.join(folder, ROC_PNG), "distances": os.path.join(folder, HISTOGRAM_PNG)}
    save_png(draw_roc(result), paths["roc"])
    save_png(draw_distance_histograms(result), paths["distances"])
    return paths
