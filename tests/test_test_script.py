"""test.py as a user runs it, on the CPU: cross-dataset models, test-only trees, empty splits,
SIE tables of other cameras, VehicleID trials; and tools/visualize_ranks.py on a test-only tree."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from config import load_config
from datasets import SyntheticSettings, ensure_synthetic_person, make_val_loader
from model import make_model
from processor import FeatureExtractor, evaluate
from tests.conftest import TINY_TRANSREID_OPTS
from tools import visualize_ranks
from utils.verification import verify

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CAMERAS = 3  # DATASETS.SYNTHETIC.NUM_CAMERAS of TINY_TRANSREID_OPTS
# A class count that is not the tiny synthetic set's 16 training identities: a model trained
# on another dataset.
OTHER_NUM_CLASSES = 7


def run_test_py(opts, out_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "test.py", *opts, "OUTPUT_DIR", str(out_dir)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def results_of(out_dir):
    with open(os.path.join(out_dir, "test_results.json")) as handle:
        return json.load(handle)


def save_model(cfg, path, num_classes, num_cameras):
    torch.manual_seed(0)
    model = make_model(cfg, num_class=num_classes, camera_num=num_cameras, view_num=1)
    torch.save(model.state_dict(), path)
    return model.eval()


class Setup:
    """The tiny synthetic set, and a model of OTHER_NUM_CLASSES classes saved as its weights."""

    def __init__(self, root: str, work: str):
        self.opts = TINY_TRANSREID_OPTS + ["DATASETS.ROOT_DIR", root]
        self.cfg = load_config("", self.opts)
        self.folder = ensure_synthetic_person(root, SyntheticSettings.from_cfg(self.cfg))
        self.weight = os.path.join(work, "other_dataset.pth")
        self.model = save_model(self.cfg, self.weight, OTHER_NUM_CLASSES, NUM_CAMERAS)
        self.work = work

    def expected(self):
        """mAP and CMC of the model, as evaluate() scores it on the full synthetic set."""
        val_loader, num_query = make_val_loader(self.cfg)
        return evaluate(self.cfg, self.model, val_loader, num_query, torch.device("cpu"))

    def test_only_tree(self, target: str, empty_query: bool = False) -> str:
        """Query and gallery of the synthetic set, without its training split, as a `folder`."""
        for split in ("query", "bounding_box_test"):
            if split == "query" and empty_query:
                os.makedirs(os.path.join(target, split))
            else:
                shutil.copytree(os.path.join(self.folder, split), os.path.join(target, split))
        return target


@pytest.fixture(scope="module")
def setup(synthetic_root, tmp_path_factory):
    return Setup(synthetic_root, str(tmp_path_factory.mktemp("work")))


@pytest.fixture(scope="module")
def expected(setup):
    return setup.expected()


def test_a_model_of_another_class_count_is_scored_as_evaluate_scores_it(setup, expected, tmp_path):
    result = run_test_py([*setup.opts, "TEST.WEIGHT", setup.weight], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Model of {OTHER_NUM_CLASSES} classes, as the checkpoint's classifier" in result.stdout
    scores = results_of(tmp_path)
    assert scores["mAP"] == pytest.approx(expected.mAP, abs=1e-6)
    assert scores["rank1"] == pytest.approx(float(expected.cmc[0]), abs=1e-6)
    # Verification figures of the same features, in a gallery's unit: the cosine distance of
    # the features, computed here by hand, not the evaluator's squared Euclidean distance.
    val_loader, num_query = make_val_loader(setup.cfg)
    extractor = FeatureExtractor(setup.cfg, setup.model, torch.device("cpu"))
    feats, pids, camids, _ = extractor.extract_loader(val_loader, show_progress=False)
    unit = torch.nn.functional.normalize(feats.double(), dim=1)
    cosine = (1 - unit[:num_query] @ unit[num_query:].T).float().numpy()
    verified = verify(cosine, pids[:num_query], pids[num_query:], camids[:num_query],
                      camids[num_query:], 1e-3)
    figures = scores["verification"]
    assert figures["distance"] == "cosine distance (1 - cos)"
    assert figures["eer"] == pytest.approx(verified.eer, abs=1e-6)
    assert figures["tar_at_far"]["0.001"] == pytest.approx(verified.tar_at_far[1e-3], abs=1e-6)
    assert figures["gallery_threshold"] == figures["threshold"]
    assert figures["threshold"] == pytest.approx(verified.threshold, abs=1e-6)
    for name in ("verification_roc.png", "verification_distances.png"):
        assert Image.open(tmp_path / name).size[0] > 0


def test_training_batch_rules_do_not_apply(setup, tmp_path):
    # 256 / NUM_INSTANCE 4 = 64 identities per batch, from a training split of 16: training
    # would refuse it, and testing builds no training batches.
    result = run_test_py([*setup.opts, "TEST.WEIGHT", setup.weight,
                          "SOLVER.IMS_PER_BATCH", "256"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a batch needs" not in result.stdout + result.stderr


def test_a_test_only_tree_is_scored_as_the_full_one(setup, expected, tmp_path):
    root = setup.test_only_tree(str(tmp_path / "mydata"))
    result = run_test_py([*setup.opts, "TEST.WEIGHT", setup.weight, "DATASETS.NAMES", "folder",
                          "DATASETS.ROOT_DIR", root], tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no training split in" in result.stdout
    assert results_of(tmp_path / "out")["mAP"] == pytest.approx(expected.mAP, abs=1e-6)


def test_an_empty_query_folder_stops_before_feature_extraction(setup, tmp_path):
    root = setup.test_only_tree(str(tmp_path / "mydata"), empty_query=True)
    result = run_test_py([*setup.opts, "TEST.WEIGHT", setup.weight, "DATASETS.NAMES", "folder",
                          "DATASETS.ROOT_DIR", root], tmp_path / "out")
    assert result.returncode == 1
    message = f"folder dataset: no query images in '{os.path.join(root, 'query')}'"
    assert result.stderr.startswith(f"error: {message}")
    with open(tmp_path / "out" / "test_log.txt") as log:
        assert f"ERROR: {message}" in log.read()  # the log file keeps the reason too
    assert "extracting features" not in result.stdout and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "test_results.json").exists()


def test_an_sie_table_of_other_cameras_is_refused_with_the_reason(setup, tmp_path):
    weight = str(tmp_path / "five_cameras.pth")
    save_model(setup.cfg, weight, OTHER_NUM_CLASSES, num_cameras=5)
    result = run_test_py([*setup.opts, "TEST.WEIGHT", weight], tmp_path / "out")
    assert result.returncode == 1
    assert (f"TEST.WEIGHT '{weight}' was trained with SIE for other cameras than those of "
            "synthetic persons (Market-1501 layout): its SIE table has 5 rows, one per camera of "
            "its training data, but synthetic persons (Market-1501 layout) has 3 cameras"
            ) in result.stderr
    assert "base.sie_embed: checkpoint (5, 1, 192) vs model (3, 1, 192)" in result.stderr
    # test.py sets PRETRAIN_CHOICE itself: the loader's advice for training would mislead.
    assert "finetune" not in result.stderr and "Traceback" not in result.stderr


def test_a_test_only_tree_with_fewer_cameras_uses_the_checkpoint_table(setup, tmp_path):
    # Query and gallery of cameras 1 and 2 only: they cannot tell that training had 3 cameras.
    root = tmp_path / "two_cameras"
    for split in ("query", "bounding_box_test"):
        os.makedirs(root / split)
        for name in os.listdir(os.path.join(setup.folder, split)):
            if "_c3" not in name:
                shutil.copy(os.path.join(setup.folder, split, name), root / split / name)
    result = run_test_py([*setup.opts, "TEST.WEIGHT", setup.weight, "DATASETS.NAMES", "folder",
                          "DATASETS.ROOT_DIR", str(root)], tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIE with 3 cameras" in result.stdout


def write_vehicleid_test_only_tree(base, vehicles=6, images_per_vehicle=3):
    """VehicleID_V1.0 with image/ and test_list_800.txt but no train_list.txt."""
    os.makedirs(base / "image")
    os.makedirs(base / "train_test_split")
    lines = []
    for vehicle in range(vehicles):
        colour = (40 * vehicle, 255 - 40 * vehicle, 128)
        for i in range(images_per_vehicle):
            name = f"{vehicle:03d}{i:04d}"
            Image.new("RGB", (32, 64), tuple(c + 5 * i for c in colour)).save(
                base / "image" / f"{name}.jpg")
            lines.append(f"{name} {100 + vehicle}")
    (base / "train_test_split" / "test_list_800.txt").write_text("\n".join(lines) + "\n")


def test_vehicleid_trials_are_averaged_on_a_test_only_tree(setup, tmp_path):
    write_vehicleid_test_only_tree(tmp_path / "VehicleID_V1.0")
    # VehicleID gives query images camera 0 and gallery images camera 1.
    weight = str(tmp_path / "vehicle.pth")
    save_model(setup.cfg, weight, OTHER_NUM_CLASSES, num_cameras=2)
    result = run_test_py([*TINY_TRANSREID_OPTS, "DATASETS.NAMES", "VehicleID",
                          "DATASETS.ROOT_DIR", str(tmp_path), "TEST.VEHICLEID_TRIALS", "2",
                          "TEST.WEIGHT", weight], tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    # Each trial's results through do_inference, then their mean.
    for title in ("Validation Results - trial 0", "Validation Results - trial 1",
                  "Validation Results (mean of 2 trials)"):
        assert result.stdout.count(f"INFO: {title}\n") == 1, title
    scores = results_of(tmp_path / "out")
    assert len(scores["trials"]) == 2
    assert scores["mAP"] == pytest.approx(sum(t["mAP"] for t in scores["trials"]) / 2)
    mean_block = result.stdout.split("(mean of 2 trials)")[1]
    assert f"mAP: {scores['mAP']:.1%}" in mean_block


def test_visualize_ranks_draws_a_test_only_tree(setup, tmp_path):
    root = setup.test_only_tree(str(tmp_path / "mydata"))
    out = tmp_path / "ranks"
    assert visualize_ranks.main(["--weight", setup.weight, "--query-index", "0",
                                 "--output-dir", str(out), *setup.opts,
                                 "DATASETS.NAMES", "folder", "DATASETS.ROOT_DIR", root,
                                 "SOLVER.IMS_PER_BATCH", "256"]) == 0
    assert sorted(os.listdir(out)) == ["query_00000.png", "summary.png"]
