"""A training run's numbers on disk: OUTPUT_DIR/metrics.csv and, when the `tensorboard` package
is installed, TensorBoard event files in OUTPUT_DIR/tb/.

`MetricsLog` takes plain Python numbers that the trainer has already read from the device (it
reads its accumulators once per SOLVER.LOG_PERIOD), so logging never adds a device sync.
Each row of metrics.csv is one moment of the run:

* a progress row every LOG_PERIOD iterations (`log_progress`): running averages of the epoch;
* an epoch row at the end of each epoch (`log_epoch`), whose iteration is the epoch's batch
  count;
* an evaluation row after each evaluation (`log_eval`): utils.metrics.METRICS;
* without labels (MODEL.TRAIN_MODE usl / uda), a clustering row before each epoch
  (`log_clusters`, iteration 0): clusters, outliers and, where the data has identities, the
  pseudo-labels' purity and NMI.

Columns a row does not measure are left empty. On resume the rows of the epochs the run is
about to train again are dropped first, so an epoch never appears twice. A damaged metrics.csv
(a truncated row, junk, another header) never stops a run: it is kept as
`metrics.csv.damaged-<n>`, which the log names, and a new one is begun.
"""
from __future__ import annotations

import csv
import logging
import numbers
import os
from typing import Dict, List, Mapping, Optional, Tuple

from loss import LOSS_PARTS
from utils.errors import UserError
from utils.files import atomic_output, move_aside
from utils.metrics import METRICS, EvalResult

logger = logging.getLogger("transreid.run_log")

METRICS_NAME = "metrics.csv"
TENSORBOARD_DIR = "tb"
TRAIN_COLUMNS = ("loss", *LOSS_PARTS, "accuracy", "lr", "img_per_s")
EVAL_COLUMNS = METRICS
CLUSTER_COLUMNS = ("clusters", "outliers", "purity", "nmi")
COLUMNS = ("epoch", "iteration") + TRAIN_COLUMNS + EVAL_COLUMNS + CLUSTER_COLUMNS

Row = Dict[str, str]


class MetricsFileError(UserError, ValueError):
    """OUTPUT_DIR/metrics.csv is not a whole file that this module wrote: damaged, truncated
    or foreign."""


def metrics_path(output_dir: str) -> str:
    return os.path.join(output_dir, METRICS_NAME)


def read_metrics(path: str) -> List[Row]:
    """The rows of a metrics.csv as dicts of strings ('' where a column was not measured); a
    file that is not a whole one raises a MetricsFileError naming it and what is wrong."""
    try:
        return _read_table(path)[1]
    except MetricsFileError as err:
        raise MetricsFileError(f"{err}; repair or remove it (a resumed run keeps it aside as "
                               f"{METRICS_NAME}.damaged-<n> and begins a new one)") from None


def _read_table(path: str) -> Tuple[Tuple[str, ...], List[Row]]:
    """(header, rows) of the metrics.csv `path`, every cell checked."""
    try:
        with open(path, newline="") as handle:
            table = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as err:
        raise _damaged(path, f"it is not a text CSV file ({err})") from None
    if not table:
        return (), []  # created, then killed before its header was written
    header = tuple(table[0])
    if header[:2] != COLUMNS[:2]:
        raise _damaged(path, f"its header starts {list(header[:3])}, not {list(COLUMNS[:3])}")
    rows = []
    for line, cells in enumerate(table[1:], start=2):
        if not cells:  # a blank line, which csv.DictReader skips too
            continue
        if len(cells) != len(header):
            raise _damaged(path, f"line {line} has {len(cells)} cells, not {len(header)} (a "
                                 "truncated or damaged row)")
        row = dict(zip(header, cells))
        bad = _bad_cell(row)
        if bad:
            raise _damaged(path, f"line {line}: {bad[0]} {bad[1]!r} is not "
                                 f"{'an integer' if bad[0] in COLUMNS[:2] else 'a number'}")
        rows.append(row)
    return header, rows


def _bad_cell(row: Row) -> Optional[Tuple[str, str]]:
    """The first (column, value) of `row` that this module cannot have written."""
    for column, value in row.items():
        try:
            if column == "epoch" or (column == "iteration" and value):
                int(value)
            elif value:
                float(value)
        except ValueError:
            return column, value
    return None


def _damaged(path: str, problem: str) -> MetricsFileError:
    return MetricsFileError(f"'{path}' is not a whole metrics.csv of train.py: {problem}")


class MetricsLog:
    """Appends a run's rows to OUTPUT_DIR/metrics.csv and mirrors them to TensorBoard.

    `iters_per_epoch` (len of the train loader) places iterations on TensorBoard's step axis:
    step = (epoch - 1) × iters_per_epoch + iteration. `start_epoch` is the first epoch this run
    trains (1, or the resume epoch): rows of that epoch and later ones are dropped from an
    existing file. With `enabled` False (ranks other than 0) every method does nothing.
    """

    def __init__(self, output_dir: str, iters_per_epoch: int, start_epoch: int = 1,
                 enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.iters_per_epoch = max(1, int(iters_per_epoch))
        self.path = metrics_path(output_dir)
        self._last_iteration: Dict[int, int] = {}
        self._handle = None
        self._writer = None
        if not enabled:
            return
        _keep_epochs_before(self.path, start_epoch)
        new_file = not os.path.isfile(self.path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._handle = open(self.path, "a", newline="")
        self._csv = csv.DictWriter(self._handle, fieldnames=COLUMNS)
        if new_file:
            self._csv.writeheader()
            self._handle.flush()
        if tensorboard:
            # Events of the epochs trained again are hidden: those from start_epoch's first
            # iteration on (epoch start_epoch - 1 ends, and is evaluated, a step before).
            self._writer = _tensorboard_writer(os.path.join(output_dir, TENSORBOARD_DIR),
                                               purge_step=self._step(start_epoch, 1))

    # ------------------------------------------------------------------ what the trainer calls
    def log_progress(self, epoch: int, iteration: int, values: Mapping[str, float]) -> None:
        """Running averages at `iteration` (1-based) of `epoch`: any of TRAIN_COLUMNS."""
        self._write(epoch, iteration, _checked(values, TRAIN_COLUMNS))

    def log_epoch(self, epoch: int, iterations: int, values: Mapping[str, float]) -> None:
        """The end of `epoch` after `iterations` batches: the epoch's averages and speed."""
        self._write(epoch, iterations, _checked(values, TRAIN_COLUMNS))

    def log_eval(self, epoch: int, result: EvalResult) -> None:
        """An evaluation after `epoch`; its row has the epoch's last logged iteration."""
        self._write(epoch, self._last_iteration.get(epoch), result.metrics())

    def log_clusters(self, epoch: int, stats) -> None:
        """The pseudo-identities `epoch` trains on (a utils.clustering.ClusterStats)."""
        values = {"clusters": stats.num_clusters, "outliers": stats.num_outliers}
        if stats.purity is not None:
            values.update(purity=stats.purity, nmi=stats.nmi)
        self._write(epoch, 0, _checked(values, CLUSTER_COLUMNS))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _step(self, epoch: int, iteration: int) -> int:
        # The identity sampler's length is an estimate: an epoch that runs longer must not
        # reach into the next one's steps.
        return (epoch - 1) * self.iters_per_epoch + min(iteration, self.iters_per_epoch)

    def _write(self, epoch: int, iteration: Optional[int], values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        if iteration is not None:
            self._last_iteration[epoch] = iteration
        row = {"epoch": str(epoch), "iteration": "" if iteration is None else str(iteration)}
        row.update((name, repr(value)) for name, value in values.items())
        self._csv.writerow(row)
        # Flushed per row (one every LOG_PERIOD), so plot_training can follow a running job.
        self._handle.flush()
        if self._writer is not None:
            step = self._step(epoch, self.iters_per_epoch if iteration is None else iteration)
            for name, value in values.items():
                section = ("val" if name in EVAL_COLUMNS else
                           "clustering" if name in CLUSTER_COLUMNS else "train")
                self._writer.add_scalar(f"{section}/{name}", value, step)
            self._writer.flush()


def _checked(values: Mapping[str, float], allowed: tuple) -> Dict[str, float]:
    """`values` as floats; a name outside `allowed` or a tensor is a caller's bug."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"MetricsLog: unknown column(s) {unknown}; allowed here: {list(allowed)}")
    for name, value in values.items():
        # A tensor here would mean a device read per logged row, hidden in the logger.
        if not isinstance(value, numbers.Real):
            raise TypeError(f"MetricsLog: '{name}' is a {type(value).__name__}; pass a Python "
                            "number the trainer has already read from the device")
    return {name: float(value) for name, value in values.items()}


def _keep_epochs_before(path: str, start_epoch: int) -> None:
    """Drop the rows of epochs >= `start_epoch` from `path` (the epochs this run trains again);
    a file with other columns (an older version) is rewritten with the current ones. A damaged
    file never stops the run: it is moved aside, named in the log, and a fresh one begun."""
    if not os.path.isfile(path):
        return
    try:
        header, rows = _read_table(path)
    except MetricsFileError as err:
        logger.warning("%s; kept it as '%s' and starting a new %s", err, move_aside(path),
                       METRICS_NAME)
        return
    kept = [row for row in rows if int(row["epoch"]) < start_epoch]
    if len(kept) == len(rows) and header == COLUMNS:
        return
    if len(kept) < len(rows):
        logger.info("%s: dropped %d row(s) of epoch %d and later, which this run trains again",
                    path, len(rows) - len(kept), start_epoch)
    with atomic_output(path) as tmp_path, open(tmp_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)


def _tensorboard_writer(log_dir: str, purge_step: int):
    """A SummaryWriter on `log_dir`, or None without the tensorboard package (silently: it is
    optional). `purge_step` hides events a resumed run writes again."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.debug("tensorboard is not installed: no TensorBoard files (pip install tensorboard)")
        return None
    writer = SummaryWriter(log_dir=log_dir, purge_step=purge_step)
    logger.info("TensorBoard event files in %s; view them with: tensorboard --logdir %s",
                log_dir, log_dir)
    return writer
