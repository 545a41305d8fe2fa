"""Deployment on the tiny config: tools/export.py's files run by ONNX Runtime and OpenVINO
through FeatureExtractor, test.py and the tools, against PyTorch; the portable form fed as a
tracker feeds it; and each error case. One export of each kind is shared by the session
(tests/deploy_setup.py)."""
import logging
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("nncf")  # OpenVINO's int8

from config import load_config  # noqa: E402
from deploy.backends import ExportedModel  # noqa: E402
from deploy.gallery import Gallery  # noqa: E402
from deploy.metadata import read_metadata  # noqa: E402
from processor import FeatureExtractor  # noqa: E402
from tests.deploy_setup import NO_WORKERS  # noqa: E402
from tests.test_checkpoint_faults import load_test_script  # noqa: E402
from tools import export, extract_features, search  # noqa: E402
from tools import gallery as gallery_tool  # noqa: E402
from utils.errors import ToolError, UserError  # noqa: E402

HEIGHT, WIDTH = 64, 32
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def reference(deployed):
    """FeatureExtractor's PyTorch features of the query images (each its own camera)."""
    extractor = FeatureExtractor.from_files("", deployed.weight, deployed.opts)
    return extractor(deployed.query)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


# ------------------------------------------------------------------------- FeatureExtractor
@pytest.mark.parametrize("kind", ["onnx", "openvino"])
def test_fp32_exports_give_pytorch_features_through_feature_extractor(deployed, reference, kind):
    # The exported file alone: no config, its metadata sets size, normalisation and flip.
    extractor = FeatureExtractor.from_files(weight=deployed.files[kind], opts=NO_WORKERS)
    feats = extractor(deployed.query)
    assert feats.dtype == torch.float32 and feats.shape == reference.shape
    assert feats.device.type == "cpu"
    assert cosine(feats, reference).min() >= 0.9999
    torch.testing.assert_close(feats, reference, atol=1e-4, rtol=1e-3)
    # The file first, as a config file would be; normalize= and a fixed camera as for PyTorch.
    fixed = FeatureExtractor.from_files(deployed.files[kind], opts=NO_WORKERS, camera=1)(
        deployed.query, normalize=True)
    expected = FeatureExtractor.from_files("", deployed.weight, deployed.opts, camera=1)(
        deployed.query, normalize=True)
    torch.testing.assert_close(fixed, expected, atol=1e-4, rtol=1e-3)
    assert torch.allclose(fixed.norm(dim=1), torch.ones(len(fixed)))


@pytest.mark.parametrize("kind", ["onnx-int8", "openvino-int8"])
def test_int8_features_stay_close_to_fp32(deployed, reference, kind):
    metadata = read_metadata(deployed.files[kind])
    assert metadata.precision == "int8"
    feats = FeatureExtractor.from_files(deployed.files[kind], opts=NO_WORKERS)(deployed.query)
    assert feats.dtype == torch.float32
    assert cosine(feats, reference).min() >= 0.99


def test_flip_is_computed_inside_the_graph(deployed):
    """The file fed by hand (no FeatureExtractor) gives the mean of the image's and its
    mirror's PyTorch features, which differs from the plain feature."""
    import onnxruntime

    image = Image.open(deployed.query[0]).convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR)
    x = (torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None] - 0.5) / 0.5
    cam = torch.tensor([2])
    with torch.no_grad():
        plain = deployed.model(x, cam_label=cam, view_label=cam * 0)
        mirrored = deployed.model(x.flip(3), cam_label=cam, view_label=cam * 0)
    session = onnxruntime.InferenceSession(deployed.files["onnx"], providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy(), "cam_label": cam.numpy()})[0]
    np.testing.assert_allclose(got, ((plain + mirrored) / 2).numpy(), atol=1e-4, rtol=1e-3)
    assert not np.allclose(got, plain.numpy(), atol=1e-3)
    assert read_metadata(deployed.files["onnx"]).flip is True


# ------------------------------------------------------------------------- the portable form
def linear_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize(image, (width, height)) (INTER_LINEAR: half-pixel centres, no antialiasing),
    rounded back to uint8 as OpenCV returns it."""
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    y = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear",
                                        align_corners=False, antialias=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).numpy().astype(np.uint8)


def test_the_portable_form_fed_as_a_tracker_feeds_it_matches_feature_extractor(deployed):
    """boxmot's convention: only the first input, BGR crops resized by OpenCV to the graph's
    static size, turned RGB, ImageNet mean/std, L2-normalised first output."""
    import onnxruntime

    session = onnxruntime.InferenceSession(deployed.files["portable"],
                                           providers=["CPUExecutionProvider"])
    assert len(session.get_inputs()) == 1 and len(session.get_outputs()) == 1
    height, width = session.get_inputs()[0].shape[2:]
    # Crops as a detector cuts them from a frame: larger than the input, BGR.
    crops = [np.repeat(np.repeat(np.asarray(Image.open(p).convert("RGB"))[..., ::-1], 2, 0), 2, 1)
             for p in deployed.query]
    batch = np.stack([(linear_resize(c, height, width)[..., ::-1] / 255.0 - IMAGENET_MEAN)
                      / IMAGENET_STD for c in crops]).transpose(0, 3, 1, 2).astype(np.float32)
    first = session.get_inputs()[0].name
    feats = torch.from_numpy(session.run(None, {first: batch})[0])
    feats = torch.nn.functional.normalize(feats, dim=1)
    expected = FeatureExtractor.from_files("", deployed.weight, deployed.opts, camera="mean")(
        crops, bgr=True, normalize=True)
    assert cosine(feats, expected).min() >= 0.999


def test_the_averaged_embedding_costs_cosine_that_the_export_prints(deployed, capsys):
    output = deployed.export("averaged.onnx", "--form", "portable", "--camera-mode", "averaged")
    printed = capsys.readouterr().out
    assert "averaged SIE embedding vs the exact camera mean" in printed
    metadata = read_metadata(output)
    assert metadata.camera_mode == "averaged" and metadata.camera_pairs == [[0, 0]]
    assert metadata.pixel_mean == pytest.approx(list(IMAGENET_MEAN))


# ------------------------------------------------------------------------- test.py, tools
@pytest.fixture(scope="module")
def pth_result(deployed):
    """test.py's result on the .pth."""
    cfg = load_config("", deployed.opts + ["TEST.WEIGHT", deployed.weight])
    return load_test_script().run_evaluation(cfg, logging.getLogger("test_deploy"))


@pytest.mark.parametrize("kind,tolerance", [("onnx", 1e-3), ("openvino-int8", 1e-2)])
def test_test_py_scores_an_exported_file_as_the_pth(deployed, pth_result, kind, tolerance):
    cfg = load_config("", deployed.opts + ["TEST.WEIGHT", deployed.files[kind]])
    got = load_test_script().run_evaluation(cfg, logging.getLogger("test_deploy"))
    assert abs(got.mAP - pth_result.mAP) <= tolerance
    assert abs(got.cmc[0] - pth_result.cmc[0]) <= 10 * tolerance


def test_test_py_refuses_a_config_that_would_feed_the_file_wrongly(deployed):
    script = load_test_script()
    cfg = load_config("", deployed.opts + ["TEST.WEIGHT", deployed.files["onnx"],
                                           "TEST.FLIP_FEATS", "False"])
    with pytest.raises(UserError, match="TEST.FLIP_FEATS"):
        script.run_evaluation(cfg, logging.getLogger("test_deploy"))


def test_tools_take_an_exported_file_and_check_its_provenance(deployed, tmp_path):
    gallery = str(tmp_path / "gallery.npy")
    images = os.path.dirname(deployed.query[0])
    # extract_features with only the file: no config.
    assert extract_features.main(["--weight", deployed.files["onnx"], "--images", images,
                                  "--output", gallery, *NO_WORKERS]) == 0
    onnx_feats = np.load(gallery)
    torch_out = str(tmp_path / "torch.npy")
    assert extract_features.main(["--weight", deployed.weight, "--images", images, "--output",
                                  torch_out, *deployed.opts]) == 0
    np.testing.assert_allclose(onnx_feats, np.load(torch_out), atol=1e-4, rtol=1e-3)
    query = deployed.query[0]
    # fp32 features are PyTorch's: a gallery of the .pth serves the .onnx ...
    assert search.main(["--weight", deployed.files["onnx"], "--query", query, "--gallery",
                        torch_out, "--output-dir", str(tmp_path / "s"), *deployed.opts]) == 0
    # ... but int8 ones differ, and saved features of fp32 are refused.
    with pytest.raises(SystemExit, match="precision 'fp32' there, 'int8' here"):
        search.main(["--weight", deployed.files["onnx-int8"], "--query", query, "--gallery",
                     gallery, "--output-dir", str(tmp_path / "s8"), *deployed.opts])


def test_a_gallery_enrols_through_an_exported_file(deployed, tmp_path):
    images = os.path.dirname(deployed.query[0])
    folders = {kind: str(tmp_path / kind) for kind in ("pth", "onnx")}
    for kind, weight in (("pth", deployed.weight), ("onnx", deployed.files["onnx"])):
        opts = deployed.opts if kind == "pth" else NO_WORKERS
        assert gallery_tool.main(["build", "--gallery", folders[kind], "--images", images,
                                  "--weight", weight, *opts]) == 0
    built = {kind: Gallery.open(folder) for kind, folder in folders.items()}
    assert [e.path for e in built["onnx"].entries] == [e.path for e in built["pth"].entries]
    np.testing.assert_allclose(built["onnx"].matrix.rows, built["pth"].matrix.rows, atol=1e-4)
    # int8 features are not the fp32 gallery's: adding them is refused, naming the precision.
    with pytest.raises(SystemExit, match="precision 'fp32' there, 'int8' here"):
        gallery_tool.main(["add", "--gallery", folders["onnx"], "--images", images,
                           "--weight", deployed.files["onnx-int8"], *NO_WORKERS])
    assert len(Gallery.open(folders["onnx"])) == len(built["onnx"])


# ------------------------------------------------------------------------- errors
def test_an_unknown_file_type_is_named(deployed, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"x")
    with pytest.raises(ToolError, match=r"model.tflite' is neither .*\.onnx.*\.xml"):
        FeatureExtractor.from_files(weight=str(path))


def test_a_missing_runtime_names_the_pip_command(deployed, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(ToolError, match="pip install openvino$"):
        ExportedModel(deployed.files["openvino"])


def test_an_onnx_file_made_elsewhere_is_refused(tmp_path):
    path = str(tmp_path / "foreign.onnx")
    torch.onnx.export(torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),), path, dynamo=False)
    with pytest.raises(ToolError, match="no transreid_deploy metadata: it was not exported by"):
        FeatureExtractor.from_files(weight=path)


def test_export_refuses_outputs_it_must_not_write_before_any_work(deployed, tmp_path):
    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"keep")
    cases = [(["--output", str(existing)], "exists; pass --overwrite"),
             (["--output", deployed.weight], "is an input of this command"),
             (["--output", str(tmp_path / "m.xml")], "does not end in .onnx"),
             (["--output", str(tmp_path / "m.onnx"), "--precision", "int8",
               "--calibration-size", "0"], "calibration needs at least one image"),
             (["--output", str(tmp_path / "m.onnx"), "--precision", "bf16"],
              "use --format openvino")]
    for args, message in cases:
        with pytest.raises(SystemExit, match=message):
            export.main(["--weight", deployed.weight, *args, *deployed.opts])
    assert existing.read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path)) == ["existing.onnx"]
    assert os.path.getsize(deployed.weight) > 1000


def test_an_empty_calibration_set_is_refused_and_nothing_written(deployed, tmp_path):
    """A tree with query and gallery but no training split: nothing to calibrate on."""
    source = os.path.dirname(os.path.dirname(deployed.query[0]))
    tree = tmp_path / "test_only"
    for split in ("query", "bounding_box_test"):
        shutil.copytree(os.path.join(source, split), tree / split)
    output = tmp_path / "m.onnx"
    with pytest.raises(SystemExit, match="int8 calibration set is empty: folder under"):
        export.main(["--weight", deployed.weight, "--output", str(output), "--precision", "int8",
                     *deployed.opts, "DATASETS.NAMES", "folder", "DATASETS.ROOT_DIR", str(tree)])
    assert sorted(os.listdir(tmp_path)) == ["test_only"]
