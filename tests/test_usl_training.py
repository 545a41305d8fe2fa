"""Training without labels (MODEL.TRAIN_MODE 'usl') end to end on the tiny synthetic set: the
per-epoch clustering, its log, resume between epochs, and the errors of bad cluster settings."""
import logging
import re

import numpy as np
import pytest
import torch

from config import ConfigError, load_config
from datasets.cluster_sampler import IterationSampler, RandomMultipleGallerySampler
from datasets.make_dataloader import PseudoLabelLoader
from processor.checkpoint import LAST_CHECKPOINT
from tests.test_pipeline import build, train
from tests.test_run_log import check_metrics_csv

# Small neighbourhoods for the 96 training images of the tiny set; 2 iterations an epoch; their
# ViT has no JPM; 5 blocks.
USL_OPTS = ["MODEL.TRAIN_MODE", "usl", "MODEL.JPM", "False",
            "MODEL.TRANSFORMER_TYPE", "vit_tiny5_patch16_224_TransReID", "CLUSTER.K1", "10", "CLUSTER.K2", "3",
            "CLUSTER.ITERS_PER_EPOCH", "2", "SOLVER.MAX_EPOCHS", "2", "SOLVER.EVAL_PERIOD", "2",
            "SOLVER.CHECKPOINT_PERIOD", "2"]
CLUSTER_LINE = re.compile(r"Epoch (\d) pseudo-labels \([\d.]+ s\): (\d+) clusters, (\d+) of 96 "
                          r"images un-clustered, purity ([\d.]+), NMI ([\d.]+)")


class StopAtEpoch(Exception):
    pass


def cluster_lines(caplog):
    return [CLUSTER_LINE.search(record.getMessage()).groups() for record in caplog.records
            if CLUSTER_LINE.search(record.getMessage())]


def test_usl_trains_on_clusters_logs_them_and_resumes_between_epochs(tiny_opts, tmp_path,
                                                                      caplog):
    caplog.set_level(logging.INFO, logger="transreid.train")
    cfg, parts = build(tiny_opts + USL_OPTS + ["OUTPUT_DIR", str(tmp_path / "straight")])
    labels_seen = []
    relabel = parts["train_loader"].relabel
    parts["train_loader"].relabel = lambda labels: (labels_seen.append(labels), relabel(labels))
    start = {k: v.clone() for k, v in parts["model"].state_dict().items()}
    train(cfg, parts)
    straight = parts["model"].state_dict()
    lines = cluster_lines(caplog)
    assert [line[0] for line in lines] == ["1", "2"]
    for (_, clusters, outliers, purity, nmi), labels in zip(lines, labels_seen):
        labels = np.array(labels)
        assert int(clusters) == len(set(labels[labels >= 0].tolist())) > 0
        assert int(outliers) == int((labels < 0).sum())
        assert 0 < float(purity) <= 1 and 0 <= float(nmi) <= 1
    assert not torch.equal(start["base.cls_token"], straight["base.cls_token"])
    rows = check_metrics_csv(str(tmp_path / "straight"), [1, 2], cfg.SOLVER.LOG_PERIOD, eval_epochs=[2],
                             clustered=True)
    logged = [(row["epoch"], row["clusters"], row["outliers"], row["purity"], row["nmi"]) for row in rows
              if row["clusters"]]
    assert [(e, int(float(c)), int(float(o)), float(p), float(n)) for e, c, o, p, n in logged] == [
        (e, int(c), int(o), pytest.approx(float(p), abs=5e-4), pytest.approx(float(n), abs=5e-4))
        for e, c, o, p, n in lines]

    # Stopped as epoch 2 clusters, then resumed: the memory is rebuilt, the rest restored.
    caplog.clear()
    cfg, parts = build(tiny_opts + USL_OPTS + ["OUTPUT_DIR", str(tmp_path / "stopped")])
    start_epoch, calls = parts["loss_fn"].start_epoch, []

    def stop_at_second(model, device, epoch):
        calls.append(epoch)
        if epoch == 2:
            raise StopAtEpoch()
        return start_epoch(model, device, epoch)
    parts["loss_fn"].start_epoch = stop_at_second
    with pytest.raises(StopAtEpoch):
        train(cfg, parts)
    checkpoint = str(tmp_path / "stopped" / LAST_CHECKPOINT)
    cfg, parts = build(tiny_opts + USL_OPTS + ["OUTPUT_DIR", str(tmp_path / "stopped"),
                                               "MODEL.RESUME", checkpoint])
    train(cfg, parts)
    assert cluster_lines(caplog) == lines
    resumed = parts["model"].state_dict()
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name


def test_usl_that_finds_no_cluster_stops_with_a_message(tiny_opts):
    cfg, parts = build(tiny_opts + USL_OPTS + ["CLUSTER.MIN_SAMPLES", "500"])
    with pytest.raises(ConfigError, match="gave no cluster.*raise CLUSTER.EPS or lower "
                                          "CLUSTER.MIN_SAMPLES"):
        train(cfg, parts)


def test_pseudo_label_batches_hold_only_clustered_images_by_their_cluster(tiny_opts):
    cfg = load_config("", tiny_opts + USL_OPTS + ["SOLVER.IMS_PER_BATCH", "8",
                                                  "DATALOADER.NUM_INSTANCE", "2"])
    samples = [(f"img{i}.jpg", 100 + i % 5, i % 3, 0) for i in range(40)]
    labels = [i % 4 if i % 10 else -1 for i in range(40)]  # images 0, 10, 20, 30: outliers
    loader = PseudoLabelLoader(cfg, samples)
    loader.relabel(labels)
    indices = list(loader.sampler.sampler)
    assert len(loader) == 2 and len(indices) == 2 * 8
    kept = [i for i in range(40) if labels[i] >= 0]
    clustered = loader.loader.dataset.samples
    assert [sample[1] for sample in clustered] == [labels[i] for i in kept]
    assert [sample[2] for sample in clustered] == [samples[i][2] for i in kept]
    for batch_start in range(0, 16, 8):
        pids = [clustered[i][1] for i in indices[batch_start:batch_start + 8]]
        assert all(pids.count(pid) == 2 for pid in pids)  # P clusters x K crops


def test_iteration_sampler_repeats_passes_per_epoch_and_refuses_short_passes():
    samples = [("x", i % 3, i % 2, 0) for i in range(12)]  # 3 clusters of 4, two cameras
    sampler = IterationSampler(RandomMultipleGallerySampler(samples, 4, seed=5), 8, 5)
    # A pass gives 3 x 4 = 12 indices, one whole batch of 8: the other 4 are dropped.
    assert sampler.batches_per_pass == 1
    first = list(sampler)
    assert len(first) == 40
    sampler.set_epoch(0)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    with pytest.raises(ConfigError, match="fewer than SOLVER.IMS_PER_BATCH 16"):
        IterationSampler(RandomMultipleGallerySampler(samples, 4, seed=5), 16, 5)


@pytest.mark.parametrize("key, value", [
    ("CLUSTER.EPS", "0.0"), ("CLUSTER.EPS", "1.0"), ("CLUSTER.MIN_SAMPLES", "0"),
    ("CLUSTER.K2", "31"), ("CLUSTER.K2", "0"), ("CLUSTER.HARD_MEMORY", "'maybe'"),
    ("CLUSTER.ITERS_PER_EPOCH", "0"), ("MODEL.TRAIN_MODE", "'semi'"), ("MODEL.NECK", "'no'"),
    ("MODEL.ID_LOSS_TYPE", "'arcface'"), ("MODEL.DIST_TRAIN", "True")])
def test_bad_usl_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config("", ["MODEL.TRAIN_MODE", "usl", key, value])


def test_uda_needs_the_source_model_to_finetune_from():
    with pytest.raises(ConfigError, match="MODEL.PRETRAIN_CHOICE 'none'.*'finetune' with "
                                          "MODEL.TRAIN_MODE 'uda'"):
        load_config("", ["MODEL.TRAIN_MODE", "uda", "MODEL.PRETRAIN_CHOICE", "none"])


def test_uda_starts_from_the_source_model_with_fresh_bn_necks(tiny_opts, tmp_path):
    # The source model: supervised weights, its BN neck moved away from the fresh one.
    _, source = build(tiny_opts + USL_OPTS[2:] + ["OUTPUT_DIR", str(tmp_path / "source")])
    state = source["model"].state_dict()
    state["bottleneck.weight"] += 0.5
    state["bottleneck.running_mean"] += 0.25
    torch.save(state, tmp_path / "source.pth")
    cfg, parts = build(tiny_opts + USL_OPTS + ["MODEL.TRAIN_MODE", "uda",
                                               "MODEL.PRETRAIN_CHOICE", "finetune",
                                               "MODEL.PRETRAIN_PATH", str(tmp_path / "source.pth")])
    target = parts["model"].state_dict()
    for name, tensor in state.items():
        if not name.startswith("bottleneck."):
            assert torch.equal(target[name], tensor), name
    assert torch.equal(target["bottleneck.weight"], torch.ones_like(state["bottleneck.weight"]))
    assert torch.equal(target["bottleneck.running_mean"],
                       torch.zeros_like(state["bottleneck.running_mean"]))
    assert not target["bottleneck.bias"].any() and target["bottleneck.running_var"].eq(1).all()
    assert not parts["model"].bottleneck.bias.requires_grad  # still the frozen-bias neck


def test_usl_settings_of_their_scripts_load():
    cfg = load_config("", ["MODEL.TRAIN_MODE", "usl", "CLUSTER.EPS", "0.7",
                           "CLUSTER.HARD_MEMORY", "no"])
    assert (cfg.CLUSTER.EPS, cfg.CLUSTER.K1, cfg.CLUSTER.K2) == (0.7, 30, 6)
    # what USL refuses stays allowed with labels
    load_config("", ["MODEL.NECK", "no", "MODEL.ID_LOSS_TYPE", "arcface"])


def test_an_epoch_starts_from_whatever_labels_cluster_gives(tiny_opts):
    # benchmarks/usl_synthetic.py measures the recipe with perfect clusters by replacing
    # `cluster`; the memory and the loader must then follow those labels.
    cfg, parts = build(tiny_opts + USL_OPTS)
    loss_fn, model = parts["loss_fn"], parts["model"]
    _, truth = np.unique(loss_fn.true_labels, return_inverse=True)
    loss_fn.cluster = lambda feats: truth.copy()
    stats = loss_fn.start_epoch(model, torch.device("cpu"), 1)
    assert (stats.num_clusters, stats.num_outliers, stats.purity) == (truth.max() + 1, 0, 1.0)
    feats = loss_fn.extract(model, torch.device("cpu"))
    means = torch.stack([feats[torch.from_numpy(truth == k)].mean(0) for k in range(truth.max() + 1)])
    torch.testing.assert_close(loss_fn.memory.features, means / means.norm(dim=1, keepdim=True))
    assert [sample[1] for sample in parts["train_loader"].loader.dataset.samples] == truth.tolist()
