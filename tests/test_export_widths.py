"""An export's metadata tells the truth about its output: `feature_dim` is the width of one
image's row, and an empty batch has that width too, for every backbone family (JPM concatenates
the global and its local features)."""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from config import load_config  # noqa: E402
from deploy.calibration import random_check_set  # noqa: E402
from deploy.export import ExportPlan, export_model  # noqa: E402
from deploy.metadata import read_metadata  # noqa: E402
from model import make_model  # noqa: E402
from model.trained import load_trained  # noqa: E402
from processor import FeatureExtractor  # noqa: E402
from tests.conftest import TINY_TRANSREID_OPTS  # noqa: E402
from tests.deploy_setup import NO_WORKERS  # noqa: E402

TINY5 = ["MODEL.TRANSFORMER_TYPE", "vit_tiny5_patch16_224_TransReID"]
# (family, its overrides, the width of one image's feature: counted here, not asked of the code)
FAMILIES = [
    ("vit+jpm", TINY5 + ["MODEL.DEVIDE_LENGTH", "4"], 192 * (1 + 4)),
    ("vit", TINY5 + ["MODEL.JPM", "False"], 192),
    ("resnet50", ["MODEL.NAME", "resnet50", "MODEL.JPM", "False", "MODEL.SIE_CAMERA", "False",
                  "INPUT.PIXEL_MEAN", "[0.485, 0.456, 0.406]",
                  "INPUT.PIXEL_STD", "[0.229, 0.224, 0.225]"], 2048),
]


@pytest.mark.parametrize("family,opts,width", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_feature_dim_and_the_empty_batch_match_the_output_width(family, opts, width, tmp_path):
    cfg = load_config("", TINY_TRANSREID_OPTS + opts)
    torch.manual_seed(0)
    weight = str(tmp_path / "model.pth")
    torch.save(make_model(cfg, 4, 3, 1).state_dict(), weight)
    cfg = load_config("", TINY_TRANSREID_OPTS + opts + ["TEST.WEIGHT", weight])
    trained = load_trained(cfg)
    output = str(tmp_path / "model.onnx")
    export_model(trained, ExportPlan(), output, random_check_set(cfg, trained.counts, 2))
    extractor = FeatureExtractor.from_files(weight=output, opts=NO_WORKERS)
    feats = extractor([np.full((64, 32, 3), 128, np.uint8)])
    assert feats.shape == (1, width)
    assert read_metadata(output).feature_dim == width
    assert extractor([]).shape == (0, width)
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.pth"]  # no work folder left
