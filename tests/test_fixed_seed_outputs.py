"""A fixed-seed run gives the same features, checkpoint and metrics.csv values as the recorded
one (tests/fixtures/fixed_seed_run.json, written before the package layout was reorganised).

Regenerate only when a change is meant to alter training: python -m tests.test_fixed_seed_outputs
"""
import csv
import json
import os
import sys

import pytest
import torch

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "fixed_seed_run.json")
# Two epochs with center loss and an evaluation after each: every part of the loop runs.
OPTS = ["SOLVER.MAX_EPOCHS", "2", "SOLVER.EVAL_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "2",
        "MODEL.METRIC_LOSS_TYPE", "triplet_center", "SOLVER.CENTER_LOSS_WEIGHT", "0.0005"]
# The columns the recorded run had; a column added since is new information, not a change.
RECORDED_COLUMNS = ("epoch", "iteration", "loss", "id_loss", "triplet_loss", "accuracy", "lr", "mAP",
                    "rank1", "mINP")


def run_fixed_seed(opts) -> dict:
    """Train the tiny model twice an epoch with one thread; what its outputs are."""
    from processor import FeatureExtractor, do_train
    from tests.test_pipeline import build

    torch.set_num_threads(1)
    cfg, parts = build(opts + OPTS)
    result = do_train(cfg, **parts)
    state = torch.load(os.path.join(cfg.OUTPUT_DIR, "transformer_2.pth"), map_location="cpu",
                       weights_only=True)
    extractor = FeatureExtractor(cfg, parts["model"], torch.device("cpu"))
    feats, _, _, _ = extractor.extract_loader(parts["val_loader"], show_progress=False)
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.csv"), newline="") as handle:
        rows = [{key: row[key] for key in RECORDED_COLUMNS if key in row}
                for row in csv.DictReader(handle)]
    return {
        "mAP": result.mAP,
        "weights": {key: [float(value.double().sum()), float(value.double().norm())]
                    for key, value in state.items() if value.is_floating_point()},
        "features": feats[:6].tolist(),
        "metrics_csv": [{key: value for key, value in row.items() if key != "img_per_s"}
                        for row in rows],
    }


def close(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return abs(float(a) - float(b)) <= 1e-4 * max(1.0, abs(float(b)))
    except ValueError:
        return False


def test_a_fixed_seed_run_reproduces_the_recorded_outputs(tiny_opts):
    with open(FIXTURE) as handle:
        recorded = json.load(handle)
    now = run_fixed_seed(tiny_opts)
    assert now["mAP"] == pytest.approx(recorded["mAP"], abs=1e-4)
    assert now["weights"].keys() == recorded["weights"].keys()
    for key, values in recorded["weights"].items():
        assert now["weights"][key] == pytest.approx(values, rel=1e-4, abs=1e-5), key
    torch.testing.assert_close(torch.tensor(now["features"]), torch.tensor(recorded["features"]),
                               rtol=1e-4, atol=1e-5)
    assert len(now["metrics_csv"]) == len(recorded["metrics_csv"])
    for row, old in zip(now["metrics_csv"], recorded["metrics_csv"]):
        assert all(close(row[key], value) for key, value in old.items()), (row, old)


if __name__ == "__main__":
    import tempfile

    from tests.conftest import TINY_TRANSREID_OPTS
    with tempfile.TemporaryDirectory() as tmp:
        out = run_fixed_seed(TINY_TRANSREID_OPTS + ["DATASETS.ROOT_DIR", os.path.join(tmp, "data"),
                                                    "OUTPUT_DIR", os.path.join(tmp, "out")])
    with open(FIXTURE, "w") as handle:
        json.dump(out, handle, indent=1)
    sys.stdout.write(f"wrote {FIXTURE}\n")
