"""What the pictures say: labels, legends and texts read back from the drawn figures (matplotlib
keeps them) or from the placed texts of the Pillow pictures, and where they sit."""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datasets.image_list import ImageRecord
from tools.drawing import (BLUE, GREEN, GREY, RED, distance_texts, draw_rank_list,
                           rank_list_picture)
from utils.distance import DISTANCE_UNIT
from utils.verification import verify

matplotlib = pytest.importorskip("matplotlib")  # optional (requirements-dev.txt)


def rendered(figure):
    """The figure drawn once, and its renderer (text extents exist only after a draw)."""
    from tools.drawing import figure_image
    figure_image(figure)
    return figure.canvas.get_renderer()


def boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def inside(inner, outer) -> bool:
    return (outer.x0 - 0.5 <= inner.x0 and inner.x1 <= outer.x1 + 0.5
            and outer.y0 - 0.5 <= inner.y0 and inner.y1 <= outer.y1 + 0.5)


def verification_result(genuine_shift: float):
    """Figures of 200 queries x 600 gallery images whose genuine pairs are `genuine_shift`
    farther apart (positive: worse) than impostor pairs on average."""
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, 60, 200), rng.integers(0, 60, 600)
    q_cams, g_cams = rng.integers(0, 3, 200), rng.integers(0, 3, 600)
    same = q_pids[:, None] == g_pids[None]
    distmat = rng.random((200, 600)) + genuine_shift * same
    return verify(distmat.astype(np.float32), q_pids, g_pids, q_cams, g_cams, target_far=1e-3,
                  check_held_out=False)


# ---------------------------------------------------------------------------------- the ROC
@pytest.mark.parametrize("case", ["all zero", "high, a million impostor pairs"])
def test_roc_labels_stay_inside_the_plot_and_off_the_ticks_and_each_other(case):
    from tools.verification_plots import roc_figure
    result = verification_result(0.3)
    if case != "all zero":
        result = dataclasses.replace(result, num_impostor=10 ** 6,
                                     tar_at_far={1e-2: 0.999, 1e-3: 0.987, 1e-4: 0.95})
    assert set(result.tar_at_far.values()) != {0.0} or case == "all zero"
    figure = roc_figure(result)
    renderer = rendered(figure)
    axes = figure.axes[0]
    labels = axes.texts
    expected = {f"{tar:.1%} @ {far:g}" for far, tar in result.tar_at_far.items()}
    assert {label.get_text() for label in labels} == expected
    if case == "all zero":
        assert "0.0% @ 0.0001" in expected
    ticks = [tick.get_window_extent(renderer)
             for tick in axes.get_xticklabels() + axes.get_yticklabels()
             if tick.get_text() and inside(tick.get_window_extent(renderer), figure.bbox)]
    assert len(ticks) >= 6
    plot_box = axes.get_window_extent(renderer)
    boxes = [label.get_window_extent(renderer) for label in labels]
    for label, box in zip(labels, boxes):
        assert inside(box, plot_box), label.get_text()
        assert not any(boxes_overlap(box, tick) for tick in ticks), label.get_text()
    for i, box in enumerate(boxes):
        assert not any(boxes_overlap(box, other) for other in boxes[i + 1:])


def test_a_far_left_of_the_axis_gets_no_label():
    from tools.verification_plots import roc_figure
    result = verification_result(0.3)
    few = dataclasses.replace(result, num_impostor=500)  # the axis starts at FAR 1/500
    assert {label.get_text().split(" @ ")[1] for label in roc_figure(few).axes[0].texts} \
        == {"0.01"}


def test_histograms_name_the_distance_and_every_entry():
    from tools.verification_plots import histogram_figure
    result = verification_result(-0.3)
    axes = histogram_figure(result).axes[0]
    assert axes.get_xlabel() == DISTANCE_UNIT == "cosine distance (1 - cos)"
    assert axes.get_ylabel() == "share of pairs"
    assert [text.get_text() for text in axes.get_legend().get_texts()] == [
        f"genuine ({result.num_genuine} pairs)", f"impostor ({result.num_impostor} pairs)",
        f"threshold {result.threshold:.3g} (FAR 0.001)"]
    small = dataclasses.replace(result, threshold=0.000812345)
    assert histogram_figure(small).axes[0].get_legend().get_texts()[2].get_text() == \
        "threshold 0.000812 (FAR 0.001)"


# ------------------------------------------------------------------------------ CMC summary
def test_cmc_summary_has_both_axis_labels_inside_the_picture():
    from tools.drawing import cmc_summary_figure
    figure = cmc_summary_figure(np.linspace(0.5, 1.0, 50), 0.42, "Market: model.pth")
    renderer = rendered(figure)
    axes = figure.axes[0]
    assert axes.get_xlabel() == "rank"
    assert axes.get_ylabel() == "queries with a true match within the rank"
    label = axes.yaxis.label.get_window_extent(renderer)
    assert inside(label, figure.bbox)
    for tick in axes.get_yticklabels():
        if tick.get_text():
            assert not boxes_overlap(label, tick.get_window_extent(renderer))
    assert [text.get_text() for text in figure.texts] == [
        "Market: model.pth", "mAP: 42.0%  Rank-1: 50.0%  Rank-5: 54.1%  Rank-10: 59.2%"]


# ------------------------------------------------------------------------------- rank lists
def test_distance_texts_tell_different_distances_apart():
    # Ten distances 7e-5 apart, which three decimals would all write "0.001".
    close = 0.0008 + np.arange(10) * 0.00007
    assert distance_texts(close) == ["0.00080", "0.00087", "0.00094", "0.00101", "0.00108",
                                     "0.00115", "0.00122", "0.00129", "0.00136", "0.00143"]
    assert distance_texts([0.5, 1.25, 0.5]) == ["0.500", "1.250", "0.500"]
    # A pair 5e-7 apart needs three more decimals than the largest's three significant digits.
    assert distance_texts([0.0123451, 0.0123456, 0.2]) == ["0.012345", "0.012346", "0.200000"]
    # At most six significant digits: float noise does not make long numbers.
    assert distance_texts([0.3, 0.3 + 1e-9]) == ["0.300000", "0.300000"]
    assert distance_texts([0.0, 0.0]) == ["0.000", "0.000"]
    assert distance_texts([]) == []


@pytest.fixture
def thumbnails(tmp_path):
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (20, 40), (40 * i, 90, 200 - 40 * i)).save(path)
        paths.append(str(path))
    return paths


def text_boxes_apart_and_inside(picture) -> None:
    width, height = picture.size
    boxes = [text.box() for text in picture.texts if text.text]
    for i, (left, top, right, bottom) in enumerate(boxes):
        assert 0 <= left and right <= width and 0 <= top and bottom <= height, picture.texts[i]
        for other in boxes[i + 1:]:
            assert not (left < other[2] and other[0] < right and top < other[3]
                        and other[1] < bottom), (picture.texts[i], other)


def test_rank_list_legend_names_the_frame_colours_in_use_and_the_numbers(thumbnails):
    query = ImageRecord(thumbnails[0], pid=7, camid=0)
    matches = [ImageRecord(thumbnails[1], pid=7, camid=1), ImageRecord(thumbnails[2], pid=3,
                                                                        camid=1)]
    picture = rank_list_picture(query, matches, [0.00121, 0.00124])
    texts = [text.text for text in picture.texts]
    assert texts[:6] == ["query", "id 7", "#1", "0.00121", "#2", "0.00124"]
    assert texts[6:] == ["query", "same identity", "another identity",
                         f"under each match: rank, {DISTANCE_UNIT}"]
    assert [colour for _, colour in picture.swatches] == [BLUE, GREEN, RED]
    assert [colour for _, _, colour in picture.cells] == [BLUE, GREEN, RED]
    text_boxes_apart_and_inside(picture)
    drawn = draw_rank_list(query, matches, [0.00121, 0.00124])
    assert drawn.size == picture.size
    for (left, top, right, bottom), colour in picture.swatches:
        assert drawn.getpixel(((left + right) // 2, (top + bottom) // 2)) == colour


def test_a_one_match_rank_list_widens_for_its_legend_and_names_unknown_identities(thumbnails):
    picture = rank_list_picture(ImageRecord(thumbnails[0]), [ImageRecord(thumbnails[3])], [0.5])
    assert [colour for _, colour in picture.swatches] == [BLUE, GREY]
    assert "identity unknown" in [text.text for text in picture.texts]
    text_boxes_apart_and_inside(picture)


# ---------------------------------------------------------------------------- training curves
def runs(with_center: bool):
    from tools.plot_training import RunCurves
    epochs = ([1.0, 2.0, 3.0], [3.0, 2.0, 1.5])
    series = {column: epochs for column in ("loss", "id_loss", "triplet_loss", "accuracy", "lr")}
    series.update(mAP=([2.0, 4.0], [0.3, 0.5]), rank1=([2.0, 4.0], [0.4, 0.6]))
    if with_center:
        series["center_loss"] = epochs
    return [RunCurves("a", dict(series)), RunCurves("b", dict(series))]


@pytest.mark.parametrize("with_center", [False, True])
def test_training_legends_list_the_drawn_curves_in_their_own_style(with_center):
    from tools.plot_training import PANELS, training_figure
    figure = training_figure(runs(with_center))
    loss_axes, _, _, eval_axes = figure.axes
    expected = {"Loss": ["total", "ID", "triplet"] + (["center"] if with_center else []),
                "Evaluation": ["mAP", "Rank-1"]}
    for axes, (title, _, columns) in zip((loss_axes, eval_axes), (PANELS[0], PANELS[3])):
        legend = axes.get_legend()
        labels = [text.get_text() for text in legend.get_texts()]
        assert labels == expected[title]
        column_of = {label: column for column, *_, label in columns}
        for label, handle in zip(labels, legend.legend_handles):
            lines = [line for line in axes.get_lines() if line.get_gid() == column_of[label]]
            assert len(lines) == 2, label  # one per run
            for line in lines:
                for look in ("linestyle", "marker", "linewidth", "markersize"):
                    assert getattr(line, f"get_{look}")() == getattr(handle, f"get_{look}")(), \
                        (label, look)
    markers = [handle.get_marker() for handle in eval_axes.get_legend().legend_handles]
    assert len(set(markers)) == len(markers)  # evaluations are told apart by their markers
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["a", "b"]


# ------------------------------------------------------------------------------------ imports
def test_tools_import_matplotlib_only_when_they_draw():
    modules = ["tools.visualize_ranks", "tools.visualize_attention", "tools.plot_training",
               "tools.verification_plots", "model.attention_rollout"]
    code = (f"import sys\nfor m in {modules}: __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
