"""The tiny deployment every export test shares (one session-wide set of exports): the tiny
synthetic set, a model saved as weights, and its exports by tools/export.py."""
import os

import torch

from config import load_config
from datasets import SyntheticSettings, ensure_synthetic_person
from model import make_model
from tests.conftest import TINY_TRANSREID_OPTS
from tools import export

NUM_CAMERAS, NUM_CLASSES = 3, 16  # the tiny synthetic set's
# Flip on, so that every export must carry it in its graph; the 5-block tiny ViT of the
# quickstart keeps each export to a second or two.
OPTS = TINY_TRANSREID_OPTS + ["TEST.FLIP_FEATS", "True", "TEST.IMS_PER_BATCH", "64",
                              "MODEL.TRANSFORMER_TYPE", "vit_tiny5_patch16_224_TransReID"]
# A config's only business with an exported file here: no loader workers for six images.
NO_WORKERS = ["DATALOADER.NUM_WORKERS", "0"]


class Deployed:
    """The tiny synthetic set, a model saved as weights, and its exports."""

    def __init__(self, root: str, work: str) -> None:
        self.opts = OPTS + ["DATASETS.ROOT_DIR", root]
        self.cfg = load_config("", self.opts)
        folder = ensure_synthetic_person(root, SyntheticSettings.from_cfg(self.cfg))
        self.query = sorted(os.path.join(folder, "query", name)
                            for name in os.listdir(os.path.join(folder, "query")))[:6]
        torch.manual_seed(0)
        self.model = make_model(self.cfg, NUM_CLASSES, NUM_CAMERAS, 1).eval()
        self.weight = os.path.join(work, "tiny.pth")
        torch.save(self.model.state_dict(), self.weight)
        self.work = work
        self.files = {}

    def export(self, name: str, *args: str) -> str:
        output = os.path.join(self.work, name)
        argv = ["--weight", self.weight, "--output", output, "--check-size", "4",
                "--calibration-size", "16", *args, *self.opts]
        assert export.main(argv) == 0
        return output

    def export_all(self) -> "Deployed":
        self.files = {
            "onnx": self.export("fp32.onnx"),
            "onnx-int8": self.export("int8.onnx", "--precision", "int8"),
            "openvino": self.export("fp32.xml", "--format", "openvino"),
            "openvino-int8": self.export("int8.xml", "--format", "openvino", "--precision",
                                         "int8"),
            "portable": self.export("portable.onnx", "--form", "portable"),
        }
        return self
