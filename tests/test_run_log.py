"""Seeing a run: the loss's parts, metrics.csv, TensorBoard files, training and CMC charts, and
the progress bar. `check_metrics_csv` is the helper a trainer-level test can call on the
OUTPUT_DIR of a real run (`from test_run_log import check_metrics_csv`)."""
import errno
import io
import json
import logging
import math
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from loss import CenterLoss, CrossEntropyLabelSmooth, TripletLoss
from loss.make_loss import ReIDLoss
from processor.run_log import (COLUMNS, TENSORBOARD_DIR, MetricsFileError, MetricsLog, metrics_path,
                               read_metrics)
from tools import plot_training
from tools.drawing import ChartLayout, draw_cmc_summary
from utils.errors import ToolError
from utils.files import move_aside
from utils.metrics import EvalResult
from utils.progress import Progress


# ------------------------------------------------------------------------ helper for trainers
def check_metrics_csv(output_dir: str, epochs: Sequence[int], log_period: int,
                      eval_epochs: Sequence[int] = (),
                      weights: Optional[Dict[str, float]] = None, clustered: bool = False) -> List[dict]:
    """Assert the shape of a trained run's metrics.csv and return its rows: per epoch, in
    order and once, (`clustered`: first a clustering row at iteration 0,) progress rows at
    multiples of `log_period`, then one end row with the speed, then an evaluation row where
    evaluated; `weights` (ReIDLoss.weights): the logged loss is the weighted sum of the logged
    parts (averages of a linear sum stay that sum)."""
    rows = read_metrics(metrics_path(output_dir))
    assert [int(row["epoch"]) for row in rows] == sorted(int(row["epoch"]) for row in rows)
    assert sorted({int(row["epoch"]) for row in rows}) == list(epochs)
    for epoch in epochs:
        mine = [row for row in rows if int(row["epoch"]) == epoch]
        evals = [row for row in mine if row["mAP"]]
        clusters = [row for row in mine if row["clusters"]]
        train = [row for row in mine if not row["mAP"] and not row["clusters"]]
        assert [row["iteration"] for row in clusters] == (["0"] if clustered else []), f"epoch {epoch}"
        assert not clusters or mine[0] is clusters[0]
        assert len(evals) == (1 if epoch in eval_epochs else 0), f"epoch {epoch}"
        *progress, end = train
        assert end["img_per_s"] and float(end["img_per_s"]) > 0, f"epoch {epoch} end row"
        iterations = [int(row["iteration"]) for row in progress]
        assert iterations == list(range(log_period, int(end["iteration"]) + 1, log_period))
        for row in train:
            assert all(math.isfinite(float(row[name])) for name in ("loss", "accuracy"))
            if weights:
                parts = sum(weight * float(row[name]) for name, weight in weights.items()
                            if name in COLUMNS)
                assert float(row["loss"]) == pytest.approx(parts, rel=1e-4)
        for row in evals:
            assert 0.0 <= float(row["mAP"]) <= 1.0 and 0.0 <= float(row["rank1"]) <= 1.0
    return rows


def _result(mAP: float, rank1: float = 0.5, mINP: float = 0.25) -> EvalResult:
    cmc = np.linspace(rank1, 1.0, 50).astype(np.float32)
    return EvalResult(mAP=mAP, cmc=cmc, mINP=mINP, num_valid_queries=4, num_queries=4)


def _train(log: MetricsLog, epochs: Sequence[int], iters: int = 4, period: int = 2,
           eval_every: int = 2) -> None:
    """What a trainer logs, with values that encode where they were logged."""
    def values(epoch: int, iteration: int) -> Dict[str, float]:
        loss = 10.0 / (epoch * iters + iteration)
        return {"loss": loss, "id_loss": 0.75 * loss, "triplet_loss": 0.25 * loss,
                "accuracy": 1 - loss / 10, "lr": 1e-3 * epoch}

    for epoch in epochs:
        for iteration in range(period, iters + 1, period):
            log.log_progress(epoch, iteration, values(epoch, iteration))
        log.log_epoch(epoch, iters, {**values(epoch, iters), "img_per_s": 100.0})
        if epoch % eval_every == 0:
            log.log_eval(epoch, _result(mAP=epoch / 10))


# ------------------------------------------------------------------------ ReIDLoss.last_parts
def test_loss_parts_add_up_to_the_loss_with_their_weights():
    # Two identities in 2-D: a=(0,0), b=(3,0) are id 0; c=(0,4), d=(6,8) id 1 (tests/test_loss).
    feats = torch.tensor([[0., 0.], [3., 0.], [0., 4.], [6., 8.]], requires_grad=True)
    target = torch.tensor([0, 0, 1, 1])
    score = torch.tensor([[2., 0.], [0., 1.], [1., 1.], [0., 3.]], requires_grad=True)
    center = CenterLoss(num_classes=2, feat_dim=2)
    loss_fn = ReIDLoss(CrossEntropyLabelSmooth(epsilon=0.0), 0.7, TripletLoss(None), 1.3,
                       center, 0.25)
    loss = loss_fn(score, feats, target, None)

    # By hand: cross-entropy, soft-margin batch-hard triplet (hardest ap / an per anchor),
    # and the mean squared distance to the own class centre.
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(1)), math.log(2),
          math.log(1 + math.exp(-3))]
    ap_an = [(3, 4), (3, 5), (math.sqrt(52), 4), (math.sqrt(52), math.sqrt(73))]
    triplet = [math.log1p(math.exp(ap - an)) for ap, an in ap_an]
    centres = center.centers.detach()
    centre = ((feats.detach() - centres[target]) ** 2).sum(1).mean().item()
    parts = loss_fn.last_parts
    assert set(parts) == {"id_loss", "triplet_loss", "center_loss"} == set(loss_fn.weights)
    assert parts["id_loss"].item() == pytest.approx(sum(ce) / 4, rel=1e-6)
    assert parts["triplet_loss"].item() == pytest.approx(sum(triplet) / 4, rel=1e-6)
    assert parts["center_loss"].item() == pytest.approx(centre, rel=1e-6)
    weighted = sum(loss_fn.weights[name] * part for name, part in parts.items())
    assert loss.item() == pytest.approx(weighted.item(), rel=1e-6)
    assert all(not part.requires_grad and part.device == loss.device for part in parts.values())


def test_loss_parts_hold_only_the_terms_in_use():
    loss_fn = ReIDLoss(CrossEntropyLabelSmooth(epsilon=0.1), 1.0)
    score, target = torch.tensor([[1., 0.], [0., 2.]]), torch.tensor([0, 1])
    loss = loss_fn(score, torch.zeros(2, 4), target)
    assert set(loss_fn.last_parts) == {"id_loss"}
    assert loss_fn.last_parts["id_loss"].item() == pytest.approx(loss.item())


# ------------------------------------------------------------------------ metrics.csv
def test_rows_hold_the_logged_values_and_leave_the_rest_empty(tmp_path):
    with MetricsLog(str(tmp_path), iters_per_epoch=4, tensorboard=False) as log:
        log.log_progress(1, 2, {"loss": 2.5, "id_loss": 2.0, "triplet_loss": 0.5,
                                "accuracy": 0.125, "lr": 3.5e-6})
        log.log_epoch(1, 4, {"loss": 2.25, "accuracy": 0.25, "img_per_s": 812.5})
        result = _result(mAP=0.375, rank1=0.625, mINP=0.0625)
        log.log_eval(1, result)
    rows = read_metrics(metrics_path(str(tmp_path)))
    empty = dict.fromkeys(COLUMNS, "")
    rank5, rank10 = (repr(float(result.cmc[rank - 1])) for rank in (5, 10))
    assert rows == [
        {**empty, "epoch": "1", "iteration": "2", "loss": "2.5", "id_loss": "2.0",
         "triplet_loss": "0.5", "accuracy": "0.125", "lr": "3.5e-06"},
        {**empty, "epoch": "1", "iteration": "4", "loss": "2.25", "accuracy": "0.25",
         "img_per_s": "812.5"},
        {**empty, "epoch": "1", "iteration": "4", "mAP": "0.375", "rank1": "0.625",
         "rank5": rank5, "rank10": rank10, "mINP": "0.0625"},
    ]


def test_a_trainer_shaped_log_passes_the_trainer_helper(tmp_path):
    with MetricsLog(str(tmp_path), iters_per_epoch=4, tensorboard=False) as log:
        _train(log, range(1, 4))
    rows = check_metrics_csv(str(tmp_path), [1, 2, 3], log_period=2, eval_epochs=[2],
                             weights={"id_loss": 1.0, "triplet_loss": 1.0})
    assert len(rows) == 3 * 3 + 1


def test_tensors_and_unknown_columns_are_refused(tmp_path):
    with MetricsLog(str(tmp_path), iters_per_epoch=4, tensorboard=False) as log:
        with pytest.raises(TypeError, match="'loss' is a Tensor; pass a Python number"):
            log.log_progress(1, 1, {"loss": torch.tensor(1.0)})
        with pytest.raises(ValueError, match=r"unknown column\(s\) \['mAP'\]"):
            log.log_epoch(1, 4, {"mAP": 0.5})
    assert read_metrics(metrics_path(str(tmp_path))) == []


def test_resume_drops_the_epochs_it_trains_again_and_appends(tmp_path):
    out = str(tmp_path)
    with MetricsLog(out, iters_per_epoch=4, tensorboard=False) as log:
        _train(log, range(1, 4))  # crashed after epoch 3; its checkpoint is epoch 2's
    with MetricsLog(out, iters_per_epoch=4, start_epoch=3, tensorboard=False) as log:
        assert {row["epoch"] for row in read_metrics(log.path)} == {"1", "2"}
        _train(log, range(3, 5))
    rows = check_metrics_csv(out, [1, 2, 3, 4], log_period=2, eval_epochs=[2, 4])
    with MetricsLog(str(tmp_path / "fresh"), iters_per_epoch=4, tensorboard=False) as log:
        _train(log, range(1, 5))
    assert rows == read_metrics(metrics_path(str(tmp_path / "fresh")))


def test_a_new_run_replaces_rows_of_a_run_that_never_checkpointed(tmp_path):
    with MetricsLog(str(tmp_path), iters_per_epoch=4, tensorboard=False) as log:
        log.log_progress(1, 2, {"loss": 9.0})
    with MetricsLog(str(tmp_path), iters_per_epoch=4, tensorboard=False) as log:
        log.log_progress(1, 2, {"loss": 1.0})
    assert [row["loss"] for row in read_metrics(metrics_path(str(tmp_path)))] == ["1.0"]


@pytest.mark.parametrize("content, problem", [
    (b"step,value\n3,0.5\n", r"its header starts \['step', 'value'\], not \['epoch', 'iteration', 'loss'\]"),
    (b"epoch,iteration,loss\n1,2,0.5\n1,4", r"line 3 has 2 cells, not 3 \(a truncated or damaged row\)"),
    (b"epoch,iteration,loss\n1,2,0.5\n\x00\x13,\x01,\x02\n", r"line 3: epoch '\\x00\\x13' is not an integer"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe junk", r"it is not a text CSV file \('utf-8' codec can't decode"),
])
def test_a_damaged_metrics_csv_is_kept_aside_and_the_run_goes_on(tmp_path, caplog, content, problem):
    path = metrics_path(str(tmp_path))
    (tmp_path / "metrics.csv").write_bytes(content)
    (tmp_path / "metrics.csv.damaged-1").write_bytes(b"an earlier one")
    with caplog.at_level(logging.WARNING, logger="transreid.run_log"):
        with MetricsLog(str(tmp_path), iters_per_epoch=4, start_epoch=2, tensorboard=False) as log:
            _train(log, [2])
    aside = str(tmp_path / "metrics.csv.damaged-2")
    assert open(aside, "rb").read() == content
    assert (tmp_path / "metrics.csv.damaged-1").read_bytes() == b"an earlier one"
    assert {row["epoch"] for row in read_metrics(path)} == {"2"}
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert re.fullmatch(rf"'{re.escape(path)}' is not a whole metrics.csv of train.py: {problem}.*; "
                        rf"kept it as '{re.escape(aside)}' and starting a new metrics.csv", warning)
    # Read directly (tools/plot_training.py), the same file is one error naming it.
    with pytest.raises(MetricsFileError, match=rf"^'{re.escape(aside)}' is not a whole metrics.csv"
                                               rf" of train.py: {problem}"):
        read_metrics(aside)


def test_moving_aside_without_hard_links_still_replaces_nothing(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EPERM, "hard links not supported here")
    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "m.csv").write_text("new")
    (tmp_path / "m.csv.damaged-1").write_text("old")
    assert move_aside(str(tmp_path / "m.csv")) == str(tmp_path / "m.csv.damaged-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv.damaged-1", "m.csv.damaged-2"]
    assert (tmp_path / "m.csv.damaged-1").read_text() == "old"


def test_ranks_other_than_0_write_nothing(tmp_path):
    with MetricsLog(str(tmp_path / "out"), iters_per_epoch=4, enabled=False) as log:
        _train(log, [1, 2])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ TensorBoard
def test_without_tensorboard_only_the_csv_is_written(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with caplog.at_level(logging.INFO, logger="transreid.run_log"):
        with MetricsLog(str(tmp_path), iters_per_epoch=4) as log:
            _train(log, [1])
    assert os.listdir(tmp_path) == ["metrics.csv"]
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


def test_tensorboard_scalars_follow_the_csv_and_a_resume_replaces_its_epochs(tmp_path, caplog):
    pytest.importorskip("tensorboard", reason="optional: pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = str(tmp_path)
    with caplog.at_level(logging.INFO, logger="transreid.run_log"):
        with MetricsLog(out, iters_per_epoch=4) as log:
            _train(log, range(1, 4))
        with MetricsLog(out, iters_per_epoch=4, start_epoch=3) as log:
            _train(log, [3])
    tb_dir = os.path.join(out, TENSORBOARD_DIR)
    assert f"tensorboard --logdir {tb_dir}" in caplog.text
    events = EventAccumulator(tb_dir, purge_orphaned_data=True)
    events.Reload()
    loss = [(event.step, event.value) for event in events.Scalars("train/loss")]
    # Step = (epoch - 1) x 4 + iteration; epoch 3 appears once although logged twice.
    steps = [step for step, _ in loss]
    assert sorted(set(steps)) == [2, 4, 6, 8, 10, 12]
    assert steps.count(10) == 1
    assert loss[0][1] == pytest.approx(10.0 / 6)
    assert [(e.step, e.value) for e in events.Scalars("val/mAP")] == [(8, pytest.approx(0.2))]


# ------------------------------------------------------------------------ charts
def _rows_of(tmp_path, name: str, loss_scale: float) -> str:
    out = str(tmp_path / name)
    with MetricsLog(out, iters_per_epoch=4, tensorboard=False) as log:
        for epoch in (1, 2):
            for iteration in (2, 4):
                log.log_progress(epoch, iteration, {"loss": loss_scale / (epoch + iteration),
                                                    "accuracy": 0.5, "lr": 0.01})
            log.log_eval(epoch, _result(mAP=0.3 * epoch))
    return out


def test_epoch_positions_count_epochs_done(tmp_path):
    rows = [{"epoch": "1", "iteration": "2"}, {"epoch": "1", "iteration": "4"},
            {"epoch": "1", "iteration": ""}, {"epoch": "2", "iteration": "1"},
            {"epoch": "2", "iteration": "2"}]
    lengths = plot_training.epoch_lengths(rows)
    # Epoch 2 is unfinished: it is as long as epoch 1, not as far as it got.
    assert lengths == {1: 4, 2: 4}
    positions = [plot_training.epoch_position(row, lengths) for row in rows]
    assert positions == [0.5, 1.0, 1.0, 1.25, 1.5]


def test_plot_training_draws_every_run_and_changes_with_the_data(tmp_path):
    pytest.importorskip("matplotlib", reason="optional (requirements-dev.txt)")
    first, second = _rows_of(tmp_path, "vit", 4.0), _rows_of(tmp_path, "transreid", 8.0)
    assert plot_training.main([first]) == 0
    single = Image.open(os.path.join(first, "training.png"))
    assert single.size == (plot_training.WIDTH, plot_training.HEIGHT)
    output = str(tmp_path / "both.png")
    assert plot_training.main([first, second, "--output", output]) == 0
    both = Image.open(output)
    assert both.size == single.size
    changed = np.abs(np.asarray(both, dtype=int) - np.asarray(single, dtype=int)).sum(-1) > 0
    assert changed.mean() > 0.002  # the second run's lines and its legend entry


def test_plot_training_names_runs_by_folder_and_refuses_a_folder_without_metrics(tmp_path):
    assert plot_training.run_names(["a/logs", "b/logs", "c/vit"]) == ["a/logs", "b/logs", "vit"]
    with pytest.raises(SystemExit, match=r"'.*empty' has no metrics.csv: give the OUTPUT_DIR"):
        plot_training.main([str(tmp_path / "empty")])
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "metrics.csv").write_bytes(b"epoch,iteration,loss\n1,2,0.5\n1,4\n")
    with pytest.raises(SystemExit, match=r"^error: '.*damaged/metrics.csv' is not a whole metrics.csv "
                                         r"of train.py: line 3 has 2 cells, not 3 .*; repair or remove it"
                                         r"[^\n]*$"):
        plot_training.main([str(tmp_path / "damaged")])


@pytest.mark.parametrize("draw", [
    lambda: draw_cmc_summary(np.linspace(0.5, 1.0, 50), 0.4, "title"),
    lambda: plot_training.main(["unused"])])
def test_charts_without_matplotlib_say_how_to_install_it(draw, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises((ToolError, SystemExit), match="needs matplotlib: pip install matplotlib"):
        draw()


def test_cmc_summary_has_its_layout_size_and_shows_the_curve():
    pytest.importorskip("matplotlib", reason="optional (requirements-dev.txt)")
    layout = ChartLayout(width=333, height=250)
    low = draw_cmc_summary(np.linspace(0.2, 0.6, 20), 0.1, "run", layout)
    high = draw_cmc_summary(np.linspace(0.7, 1.0, 20), 0.1, "run", layout)
    assert low.size == high.size == (333, 250)
    difference = np.abs(np.asarray(low, dtype=int) - np.asarray(high, dtype=int)).sum(-1)
    # The curve moved: pixels inside the plot box differ, the title row does not.
    assert difference[layout.top:-layout.bottom, layout.left:-layout.right].sum() > 0
    assert difference[:20].sum() == 0


# ------------------------------------------------------------------------ progress
def test_progress_off_a_terminal_logs_a_few_lines_and_no_bar(caplog, capsys):
    logger = logging.getLogger("transreid.test_run_log")
    with caplog.at_level(logging.INFO, logger="transreid.test_run_log"):
        assert list(Progress(range(6), 6, "epoch 1", logger, log_fraction=0.5)) == list(range(6))
        assert list(Progress(range(6), 6, "quiet", logger, enabled=False)) == list(range(6))
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["epoch 1: 3/6",
                                                                       "epoch 1: 6/6"]
    assert capsys.readouterr().err == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_draws_a_tqdm_bar_with_log_lines_above_it(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    parent = logging.getLogger("transreid_test_bar")
    parent.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO)
    parent.addHandler(console)
    parent.setLevel(logging.DEBUG)
    child = logging.getLogger("transreid_test_bar.train")
    try:
        for step in Progress(range(4), 4, "epoch 7", child):
            child.info("step %d", step)
            child.debug("not on the console")
    finally:
        parent.removeHandler(console)
    text = terminal.getvalue()
    assert "epoch 7: 100%" in text and "4/4" in text
    # Each log line is whole on its own line (tqdm cleared the bar before writing it).
    lines = text.replace("\r", "\n").split("\n")
    assert [line for line in lines if line.startswith("step")] == [f"step {i}" for i in range(4)]
    assert "not on the console" not in text
    assert console.stream is terminal  # the handler has its own stream back


# ------------------------------------------------------------------------ one list of metrics
@pytest.fixture
def one_more_metric(monkeypatch):
    """utils.metrics.METRICS with 'rank20' added, and the modules that build their columns and
    panels from it at import reloaded; afterwards every name is put back as it was, so other
    tests keep the classes they imported."""
    import importlib
    import test as test_script

    import utils.metrics
    from processor import run_log
    monkeypatch.setattr(utils.metrics, "METRICS", utils.metrics.METRICS + ("rank20",))
    saved = {module: dict(vars(module)) for module in (run_log, plot_training)}
    for module in saved:
        importlib.reload(module)
    yield run_log, plot_training, test_script
    for module, names in saved.items():
        vars(module).clear()
        vars(module).update(names)


def test_a_metric_added_to_the_list_reaches_every_output(one_more_metric, tmp_path, caplog):
    run_log, plot, test_script = one_more_metric
    result = _result(mAP=0.4)
    expected = float(result.cmc[19])
    with caplog.at_level(logging.INFO, logger="transreid.test"):
        from processor.evaluation import log_result
        log_result(logging.getLogger("transreid.test"), result, "title")
    assert f"CMC curve, Rank-20 :{expected:.1%}" in caplog.text

    out = str(tmp_path / "run")
    with run_log.MetricsLog(out, iters_per_epoch=4) as log:
        log.log_eval(1, result)
    rows = read_metrics(metrics_path(out))
    assert float(rows[0]["rank20"]) == pytest.approx(expected)
    pytest.importorskip("tensorboard", reason="optional: pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(os.path.join(out, TENSORBOARD_DIR))
    events.Reload()
    assert [e.value for e in events.Scalars("val/rank20")] == [pytest.approx(expected)]

    from config import load_config
    cfg = load_config("", ["OUTPUT_DIR", out, "TEST.WEIGHT", "w.pth"])
    test_script.write_results(cfg, result, logging.getLogger("transreid.test"))
    with open(os.path.join(out, "test_results.json")) as handle:
        assert json.load(handle)["rank20"] == pytest.approx(expected)

    evaluation = [columns for title, _, columns in plot.PANELS if title == "Evaluation"][0]
    assert ("rank20", "Rank-20") in [(column, label) for column, _, _, label in evaluation]


def test_every_loss_part_is_a_metrics_column_and_a_plotted_line():
    from loss import LOSS_PARTS
    loss_lines = [column for column, *_ in plot_training.PANELS[0][2]]
    assert "center_loss" in LOSS_PARTS
    for part in LOSS_PARTS:
        assert part in COLUMNS and part in loss_lines
