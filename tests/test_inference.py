"""The inference layer: FeatureExtractor on every input kind, flip features, mINP against a plain
per-query oracle, one user-error type and the config checks done when the config loads."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from config import ConfigError, load_config, switches
from datasets import SyntheticSettings, ensure_synthetic_person, make_val_loader
from datasets.bases import DatasetError
from model import CheckpointMismatchError, WeightsNotFoundError, make_model
from model.trained import load_trained
from processor import FeatureExtractor, evaluate
from processor.checkpoint import ResumeError
from utils.errors import exits_on_user_error
from processor.processor import NonFiniteLossError
from tests.conftest import REPO_ROOT, TINY_TRANSREID_OPTS
from model.trained import check_same_model
from utils.errors import ToolError, UserError
from utils.metrics import R1_mAP_eval

NUM_CAMERAS = 3  # DATASETS.SYNTHETIC.NUM_CAMERAS of TINY_TRANSREID_OPTS


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    """The tiny synthetic set and a tiny SIE + JPM model saved as trained weights."""
    opts = TINY_TRANSREID_OPTS + ["DATASETS.ROOT_DIR", synthetic_root]
    cfg = load_config("", opts)
    folder = ensure_synthetic_person(synthetic_root, SyntheticSettings.from_cfg(cfg))
    weight = str(tmp_path_factory.mktemp("weights") / "tiny.pth")
    torch.manual_seed(0)
    model = make_model(cfg, num_class=16, camera_num=NUM_CAMERAS, view_num=1)
    torch.save(model.state_dict(), weight)
    query = os.path.join(folder, "query")
    paths = sorted(os.path.join(query, name) for name in os.listdir(query))[:5]
    return opts, cfg, weight, model.eval(), paths


def _old_extract_features(model, loader):
    """Training's evaluation features as extracted before the inference layer existed
    (processor.extract_features): the oracle of bit-identity."""
    feats = []
    with torch.no_grad():
        for img, _, _, camids_batch, viewids, _ in loader:
            feats.append(model(img, cam_label=camids_batch, view_label=viewids).float())
    return torch.cat(feats)


def test_evaluation_features_are_bit_identical_to_the_old_extraction(trained):
    _, cfg, _, model, _ = trained
    val_loader, _ = make_val_loader(cfg)
    feats, *_ = FeatureExtractor(cfg, model, torch.device("cpu")).extract_loader(
        val_loader, show_progress=False)
    assert torch.equal(feats, _old_extract_features(model, val_loader))


def test_paths_pil_images_and_arrays_give_the_same_features(trained):
    opts, _, weight, _, paths = trained
    extractor = FeatureExtractor.from_files("", weight, opts)
    pil = [Image.open(path).convert("RGB") for path in paths]
    rgb = [np.asarray(image) for image in pil]
    bgr = [array[..., ::-1].copy() for array in rgb]
    cameras = [1] * len(paths)
    by_path = extractor(paths, cameras=cameras)
    assert by_path.shape == (len(paths), 5 * 192)  # JPM: global + 4 local parts of deit_tiny
    assert torch.equal(extractor(pil, cameras=cameras), by_path)
    assert torch.equal(extractor(rgb, cameras=cameras), by_path)
    assert torch.equal(extractor(bgr, cameras=cameras, bgr=True), by_path)
    normalized = extractor(paths, cameras=cameras, normalize=True)
    torch.testing.assert_close(normalized.norm(dim=1), torch.ones(len(paths)))


def test_unknown_cameras_average_every_camera(trained):
    opts, _, weight, _, paths = trained
    extractor = FeatureExtractor.from_files("", weight, opts)
    per_camera = torch.stack([extractor(paths[:2], cameras=[c, c]) for c in range(NUM_CAMERAS)])
    torch.testing.assert_close(extractor(paths[:2]), per_camera.mean(0), rtol=1e-5, atol=1e-6)
    # One known camera and one unknown in the same call.
    mixed = extractor(paths[:2], cameras=[2, None])
    torch.testing.assert_close(mixed[0], per_camera[2, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[1], per_camera.mean(0)[1], rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_image(trained):
    opts, _, weight, _, paths = trained
    extractor = FeatureExtractor.from_files("", weight, opts)
    with pytest.raises(ToolError, match="image 1 is a ndarray of shape \\(8, 8\\) and dtype float32"):
        extractor([paths[0], np.zeros((8, 8), np.float32)])
    with pytest.raises(ToolError, match="camera 7 .* has no SIE embedding"):
        extractor(paths[:1], cameras=[7])
    with pytest.raises(ToolError, match="one label per image"):
        extractor(paths[:2], cameras=[0])


def test_flip_features_average_the_image_and_its_mirror(trained):
    opts, _, weight, model, paths = trained
    extractor = FeatureExtractor.from_files("", weight, opts + ["TEST.FLIP_FEATS", "True"])
    assert extractor.trained.provenance["TEST.FLIP_FEATS"] is True
    images = torch.stack([extractor.transform(Image.open(p).convert("RGB")) for p in paths])
    cams = torch.zeros(len(paths), dtype=torch.long)
    with torch.no_grad():
        expected = (model(images, cam_label=cams, view_label=cams)
                    + model(images.flip(3), cam_label=cams, view_label=cams)) / 2
    torch.testing.assert_close(extractor(paths, cameras=[0] * len(paths)), expected)


def test_bf16_features_stay_close_to_fp32_and_are_recorded(trained):
    opts, _, weight, _, paths = trained
    full = FeatureExtractor.from_files("", weight, opts)(paths, cameras=[0] * len(paths))
    bf16 = FeatureExtractor.from_files("", weight, opts + ["TEST.AMP_DTYPE", "bf16"])
    feats = bf16(paths, cameras=[0] * len(paths))
    assert feats.dtype == torch.float32 and not torch.equal(feats, full)  # really in bf16
    cosine = torch.nn.functional.cosine_similarity(feats, full, dim=1)
    assert cosine.min() > 0.999, cosine
    assert bf16.trained.provenance["TEST.AMP_DTYPE"] == "bf16"
    # fp16 has no fast CPU kernels: on the CPU it stays full precision.
    fp16 = FeatureExtractor.from_files("", weight, opts + ["TEST.AMP_DTYPE", "fp16"])
    assert torch.equal(fp16(paths, cameras=[0] * len(paths)), full)


def test_a_feature_record_without_the_flip_key_means_flip_off():
    current = {"weight": "w.pth", "weight_sha256": "ab", "TEST.FLIP_FEATS": False}
    check_same_model({"weight": "w.pth", "weight_sha256": "ab"}, current, "old.npy")
    with pytest.raises(ToolError, match="TEST.FLIP_FEATS False there, True here"):
        check_same_model({"weight": "w.pth", "weight_sha256": "ab"},
                         {**current, "TEST.FLIP_FEATS": True}, "old.npy")


def test_trained_model_is_sized_from_its_checkpoint(trained):
    opts, _, weight, model, _ = trained
    cfg = load_config("", opts + ["TEST.WEIGHT", weight, "MODEL.PRETRAIN_CHOICE", "none"])
    loaded = load_trained(cfg)
    assert loaded.counts.cameras == NUM_CAMERAS and loaded.model.num_classes == 16
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    with pytest.raises(CheckpointMismatchError, match="was not trained with this config"):
        load_trained(load_config("", opts + ["TEST.WEIGHT", weight, "MODEL.JPM", "False"]))


# ---------------------------------------------------------------------------------- mINP
def _plain_minp(distmat, q_pids, g_pids, q_camids, g_camids):
    """Ye et al.'s mINP written out per query: matches / (position of the hardest match + 1)
    among the gallery images left after removing the query's own identity-and-camera ones."""
    inps = []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        matches = (g_pids[order] == q_pids[i])[keep]
        if matches.any():
            inps.append(matches.sum() / (np.flatnonzero(matches)[-1] + 1))
    return float(np.mean(inps)), len(inps)


def test_minp_matches_a_plain_per_query_oracle():
    generator = torch.Generator().manual_seed(3)
    num_query, num_gallery = 12, 60
    # Query ids 8 and 9 have no gallery image (skipped); gallery ids 6 and 7 are distractors.
    q_pids = torch.cat([torch.randint(0, 6, (num_query - 2,), generator=generator),
                        torch.tensor([8, 9])])
    g_pids = torch.randint(0, 8, (num_gallery,), generator=generator)
    q_camids = torch.randint(0, 3, (num_query,), generator=generator)
    g_camids = torch.randint(0, 3, (num_gallery,), generator=generator)
    feats = torch.randn(num_query + num_gallery, 16, generator=generator)
    evaluator = R1_mAP_eval(num_query, feat_norm="yes")
    evaluator.update((feats, torch.cat([q_pids, g_pids]), torch.cat([q_camids, g_camids])))
    result = evaluator.evaluate()
    distmat = evaluator.compute()[2]
    expected, valid = _plain_minp(distmat, q_pids.numpy(), g_pids.numpy(), q_camids.numpy(),
                                  g_camids.numpy())
    assert result.mINP == pytest.approx(expected, rel=1e-12)
    assert (result.num_valid_queries, result.num_queries) == (valid, num_query)
    assert valid < num_query  # some queries are skipped, so the counts mean something


def test_minp_by_hand():
    # One query (pid 1, camera 0); gallery ranked by distance: other id, match, junk, match.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    evaluator = R1_mAP_eval(1, feat_norm="no")
    evaluator.feats, evaluator.pids, evaluator.camids = [torch.zeros(5, 2)], [1, 2, 1, 1, 1], \
        [0, 1, 1, 0, 1]
    evaluator._distance_chunks = lambda qf, gf: iter([(slice(0, 1), torch.from_numpy(distmat))])
    result = evaluator.evaluate()
    # Ranked without the junk image: [other, match, match]: 2 matches, hardest at rank 3.
    assert result.mINP == pytest.approx(2 / 3)
    assert result.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)


# ----------------------------------------------------------------------- one user-error type
@pytest.mark.parametrize("error, builtin", [
    (ConfigError, ValueError), (DatasetError, RuntimeError), (WeightsNotFoundError, FileNotFoundError),
    (CheckpointMismatchError, RuntimeError), (ResumeError, ValueError), (ToolError, RuntimeError),
    (NonFiniteLossError, FloatingPointError)])
def test_every_user_error_keeps_its_builtin_base(error, builtin):
    assert issubclass(error, UserError) and issubclass(error, builtin)


def test_user_errors_become_one_line_and_bugs_keep_their_traceback():
    @exits_on_user_error
    def refuses():
        raise ConfigError("SOLVER.BASE_LR -1 is not allowed")

    with pytest.raises(SystemExit) as info:
        refuses()
    assert str(info.value.code) == "error: SOLVER.BASE_LR -1 is not allowed"

    @exits_on_user_error
    def crashes():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        crashes()


def test_train_py_names_a_missing_resume_file_in_one_line(tmp_path):
    missing = tmp_path / "nowhere" / "last_checkpoint.pth"
    result = subprocess.run([sys.executable, "train.py", "--config_file",
                             "configs/Synthetic/vit_transreid_tiny.yml", "MODEL.RESUME", str(missing),
                             "OUTPUT_DIR", str(tmp_path / "out")], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint '{missing}' (MODEL.RESUME) does not exist; it is the "
        "'last_checkpoint.pth' that training writes to OUTPUT_DIR"]
    assert not (tmp_path / "out").exists()  # refused before anything was built or written


# -------------------------------------------------------------------- checks at load time
@pytest.mark.parametrize("key, value, rule", [
    ("SOLVER.BASE_LR", "-0.01", "a positive number"),
    ("SOLVER.WARMUP_EPOCHS", "-1", "a number >= 0"),
    ("DATALOADER.NUM_WORKERS", "-1", "an integer >= 0"),
    ("INPUT.PIXEL_STD", "[0.5, 0.0, 0.5]", "three non-zero numbers"),
    ("SOLVER.AMP_DTYPE", "fp8", "one of ['fp16', 'bf16', 'fp32']"),
    ("DATALOADER.SAMPLER", "random", "one of ['softmax', 'softmax_triplet']"),
    ("TEST.FEAT_NORM", "maybe", "'yes' or 'no'"),
    ("MODEL.TRANSFORMER_TYPE", "vit_huge", "one of ['vit_base_patch16_224_TransReID'"),
    ("INPUT.SIZE_TRAIN", "[12, 8]", "at least [16, 16] for a transformer"),
])
def test_values_that_cannot_work_are_refused_when_the_config_loads(key, value, rule):
    opts = ["MODEL.NAME", "transformer", "MODEL.TRANSFORMER_TYPE", "deit_tiny_patch16_224_TransReID",
            "INPUT.SIZE_TEST", "[12, 8]" if key == "INPUT.SIZE_TRAIN" else "[256, 128]", key, value]
    with pytest.raises(ConfigError, match=f"{key} .* is not allowed; it must be ") as info:
        load_config("", opts)
    assert rule in str(info.value)


def test_a_batch_that_does_not_hold_whole_identities_is_refused():
    with pytest.raises(ConfigError, match="SOLVER.IMS_PER_BATCH 30 is not a multiple of "
                                          "DATALOADER.NUM_INSTANCE 4"):
        load_config("", ["DATALOADER.SAMPLER", "softmax_triplet", "SOLVER.IMS_PER_BATCH", "30",
                         "DATALOADER.NUM_INSTANCE", "4"])


def test_switches_are_parsed_once_and_the_config_keeps_its_strings():
    cfg = load_config("", ["TEST.FEAT_NORM", "no", "MODEL.IF_LABELSMOOTH", "off"])
    assert switches(cfg).feat_norm is False and switches(cfg).label_smooth is False
    assert switches(cfg) is switches(cfg)
    assert cfg.TEST.FEAT_NORM == "no" and "FEAT_NORM: 'no'" in cfg.dump()


def test_loading_a_config_imports_neither_torch_nor_the_evaluation_code():
    code = ("import sys; from config import load_config; "
            "load_config('configs/Market/vit_transreid_stride.yml'); "
            "print(sorted(m for m in ('torch', 'utils.metrics', 'utils.reranking') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
