"""Fixtures shared by the end-to-end tests: a tiny synthetic dataset and a tiny model config."""
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# A TransReID with every part on (overlapping patches, SIE camera, JPM) on the tiny backbone
# and inputs small enough for a CPU test.
TINY_TRANSREID_OPTS = [
    "MODEL.NAME", "transformer",
    "MODEL.TRANSFORMER_TYPE", "deit_tiny_patch16_224_TransReID",
    "MODEL.PRETRAIN_CHOICE", "none",
    "MODEL.STRIDE_SIZE", "[16, 16]",
    "MODEL.SIE_CAMERA", "True",
    "MODEL.JPM", "True",
    "MODEL.DEVICE", "cpu",
    "INPUT.SIZE_TRAIN", "[64, 32]",
    "INPUT.SIZE_TEST", "[64, 32]",
    "INPUT.PIXEL_MEAN", "[0.5, 0.5, 0.5]",
    "INPUT.PIXEL_STD", "[0.5, 0.5, 0.5]",
    "DATASETS.NAMES", "synthetic",
    "DATASETS.SYNTHETIC.NUM_IDS", "32",
    "DATASETS.SYNTHETIC.IMAGES_PER_ID", "6",
    "DATASETS.SYNTHETIC.NUM_CAMERAS", "3",
    "DATASETS.SYNTHETIC.IMAGE_SIZE", "[64, 32]",
    "DATALOADER.SAMPLER", "softmax_triplet",
    "DATALOADER.NUM_INSTANCE", "4",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.OPTIMIZER_NAME", "SGD",
    "SOLVER.BASE_LR", "0.01",
    "SOLVER.IMS_PER_BATCH", "16",
    "SOLVER.WARMUP_EPOCHS", "1",
    "SOLVER.LOG_PERIOD", "1",
    "TEST.IMS_PER_BATCH", "64",
    "TEST.NECK_FEAT", "before",
    "MODEL.NO_MARGIN", "True",
    "MODEL.IF_LABELSMOOTH", "off",
]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """One data folder for the whole session, so the tiny synthetic set renders once."""
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture
def tiny_opts(synthetic_root, tmp_path):
    return TINY_TRANSREID_OPTS + ["DATASETS.ROOT_DIR", synthetic_root,
                                  "OUTPUT_DIR", str(tmp_path / "out")]


@pytest.fixture(scope="session")
def deployed(synthetic_root, tmp_path_factory):
    """The tiny model and its exports (tests/deploy_setup.py), shared by the deploy tests."""
    for package in ("onnx", "onnxruntime", "openvino", "nncf"):
        pytest.importorskip(package)
    from tests.deploy_setup import Deployed
    return Deployed(synthetic_root, str(tmp_path_factory.mktemp("deploy"))).export_all()
