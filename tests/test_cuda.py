"""The same work on the GPU as on the CPU: AMP training, features, mAP/CMC, re-ranking, NCCL, tools.

Skipped where no GPU is present. TRANSREID_TEST_ACCELERATOR names the device under test
(default 'cuda'); setting it to 'cpu' runs these tests' own logic on a machine without a GPU.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

from config import load_config
from datasets import SyntheticSettings, ensure_synthetic_person
from processor import do_train
from processor.checkpoint import LAST_CHECKPOINT
from utils.seed import set_seed
from tools import extract_features
from train import build_training
from utils.metrics import R1_mAP_eval
from utils.reranking import re_ranking

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def accelerator() -> torch.device:
    device = torch.device(os.environ.get("TRANSREID_TEST_ACCELERATOR", "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return device


@pytest.fixture
def exact_fp32():
    """TF32 off for the duration of a test, so that GPU float32 matches the CPU to ~1e-6."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def build(opts):
    cfg = load_config("", opts)
    set_seed(cfg.SOLVER.SEED)
    return cfg, dict(build_training(cfg), local_rank=0)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float().cpu() - expected).norm() / expected.norm())


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_training_updates_the_weights_and_saves_a_cpu_loadable_checkpoint(
        tiny_opts, accelerator, amp):
    opts = tiny_opts + ["MODEL.DEVICE", accelerator.type, "SOLVER.AMP_DTYPE", amp,
                        "SOLVER.MAX_EPOCHS", "2", "SOLVER.EVAL_PERIOD", "2",
                        "SOLVER.CHECKPOINT_PERIOD", "2"]
    cfg, parts = build(opts)
    model = parts["model"]
    before = {name: value.clone() for name, value in model.state_dict().items()}
    result = do_train(cfg, **parts)

    after = model.state_dict()
    assert all(value.device.type == accelerator.type for value in after.values())
    assert all(torch.isfinite(value).all() for value in after.values()
               if value.is_floating_point())
    for name in ("base.blocks.0.attn.qkv.weight", "base.sie_embed", "classifier.weight",
                 "classifier_1.weight", "bottleneck.running_mean"):
        assert not torch.equal(before[name], after[name].cpu()), name
    assert 0.0 < result.mAP <= 1.0
    state = torch.load(os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT), map_location="cpu",
                       weights_only=True)
    # Only fp16 on a GPU scales the loss; the scaler's state says whether it ran.
    assert bool(state["scaler"]) == (amp == "fp16" and accelerator.type == "cuda")
    cpu_cfg, cpu_parts = build(tiny_opts)
    cpu_parts["model"].load_param(os.path.join(cfg.OUTPUT_DIR, "transformer_2.pth"))


def tiny_model_and_inputs(tiny_opts):
    cfg, parts = build(tiny_opts)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 64, 32, generator=generator)
    cameras = torch.randint(0, 3, (8,), generator=generator)
    return parts["model"].eval(), images, cameras


@torch.no_grad()
def test_eval_features_on_the_gpu_match_the_cpu(tiny_opts, accelerator, exact_fp32):
    model, images, cameras = tiny_model_and_inputs(tiny_opts)
    expected = model(images, cam_label=cameras)
    model.to(accelerator)
    actual = model(images.to(accelerator), cam_label=cameras.to(accelerator))
    assert actual.shape == expected.shape == (8, 192 * 5)
    assert relative_error(actual, expected) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_autocast_features_stay_close_to_float32(tiny_opts, accelerator, exact_fp32, dtype):
    """Under autocast attention runs in SDPA's half-precision kernels."""
    model, images, cameras = tiny_model_and_inputs(tiny_opts)
    model.to(accelerator)
    images, cameras = images.to(accelerator), cameras.to(accelerator)
    expected = model(images, cam_label=cameras).cpu()
    with torch.autocast(accelerator.type, dtype=dtype, enabled=accelerator.type == "cuda"):
        actual = model(images, cam_label=cameras)
    assert torch.isfinite(actual).all()
    assert relative_error(actual, expected) < 2e-2


def integer_features(num: int, seed: int) -> torch.Tensor:
    """Small integers: every distance is exact in float32 on any device, ties included."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (num, 6), generator=generator).float()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_map_and_cmc_on_the_gpu_equal_the_cpu(accelerator, metric):
    num_query, num = 60, 460
    feats = integer_features(num, seed=1)
    generator = torch.Generator().manual_seed(2)
    pids = torch.randint(0, 30, (num,), generator=generator).tolist()
    camids = torch.randint(0, 4, (num,), generator=generator).tolist()

    def scores(device):
        evaluator = R1_mAP_eval(num_query, max_rank=20, feat_norm=False, dist_metric=metric,
                                chunk_bytes=40 * 17 * 400)  # several query chunks
        evaluator.update((feats.to(device), pids, camids))
        return evaluator.compute()[:2]

    cmc, mean_ap = scores(accelerator)
    expected_cmc, expected_map = scores(torch.device("cpu"))
    # Euclidean distances are exact integers, so ties are real and both devices break them
    # alike; cosine divides by norms, which the devices may round differently.
    if metric == "euclidean":
        np.testing.assert_array_equal(cmc, expected_cmc)
        assert mean_ap == pytest.approx(expected_map, abs=1e-6)
    else:
        np.testing.assert_allclose(cmc, expected_cmc, atol=2 / num_query)
        assert mean_ap == pytest.approx(expected_map, abs=2e-2)


def test_re_ranking_on_the_gpu_matches_the_cpu(accelerator, exact_fp32):
    generator = torch.Generator().manual_seed(3)
    centres = torch.randn(40, 32, generator=generator)
    ids = torch.randint(0, 40, (500,), generator=generator)
    feats = centres[ids] + 0.8 * torch.randn(500, 32, generator=generator)
    query, gallery = feats[:100], feats[100:]
    expected = re_ranking(query, gallery, k1=20, k2=6, lambda_value=0.3)
    actual = re_ranking(query.to(accelerator), gallery.to(accelerator), k1=20, k2=6,
                        lambda_value=0.3)
    assert actual.shape == expected.shape == (100, 400)
    # Rounding may swap two neighbours at the k1 boundary of a few rows; everything else agrees.
    difference = np.abs(actual - expected)
    assert np.quantile(difference, 0.99) < 1e-4
    assert difference.max() < 5e-2


@pytest.mark.skipif(not dist.is_nccl_available(), reason="needs NCCL")
def test_nccl_training_under_torchrun_saves_a_loadable_checkpoint(tiny_opts, accelerator,
                                                                   tmp_path):
    if accelerator.type != "cuda":
        pytest.skip("NCCL runs on CUDA GPUs; test_pipeline covers gloo on the CPU")
    processes = min(2, torch.cuda.device_count())
    out_dir = str(tmp_path / "nccl")
    opts = tiny_opts + ["MODEL.DEVICE", "cuda", "MODEL.DIST_TRAIN", "True",
                        "SOLVER.MAX_EPOCHS", "1", "OUTPUT_DIR", out_dir]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
         "--standalone", "train.py", *opts],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(os.path.join(out_dir, "train_log.txt")) as log:
        text = log.read()
    assert f"on cuda:0 x {processes} processes" in text
    assert "Validation Results - Epoch: 1" in text
    cfg, parts = build(tiny_opts)
    parts["model"].load_param(os.path.join(out_dir, "transformer_1.pth"))


def test_extract_features_tool_on_the_gpu_matches_the_cpu(tiny_opts, accelerator, exact_fp32,
                                                          tmp_path):
    cfg, parts = build(tiny_opts)
    weight = str(tmp_path / "tiny.pth")
    torch.save(parts["model"].state_dict(), weight)
    dataset = ensure_synthetic_person(cfg.DATASETS.ROOT_DIR, SyntheticSettings.from_cfg(cfg))
    query_dir = os.path.join(dataset, "query")

    def features(device):
        output = str(tmp_path / f"{device}.npy")
        code = extract_features.main(["--weight", weight, "--images", query_dir,
                                      "--output", output, *tiny_opts, "MODEL.DEVICE", device])
        assert code == 0
        return np.load(output)

    expected = features("cpu")
    actual = features(accelerator.type)
    assert actual.shape == expected.shape and len(actual) > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
