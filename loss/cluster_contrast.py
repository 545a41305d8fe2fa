"""Training without labels (MODEL.TRAIN_MODE 'usl', 'uda'): cluster-contrast's epoch, as
TransReID-SSL's `cluster-contrast-reid/examples/cluster_contrast_train_usl.py` runs it. Before
each epoch the training images' features are extracted in evaluation mode (the BN neck's output,
L2-normalised, as their ViT returns it), clustered into pseudo-identities (`utils.clustering`),
and a cluster memory is started from the clusters' mean features; the epoch then trains the
memory's loss on the BN neck's training-mode output (their trainer's
`self.memory(self.encoder(inputs), labels)`). The memory is rebuilt every epoch, so nothing of
it needs saving between epochs. UDA starts from a model trained with labels on another dataset,
its BN necks afresh (`restart_bn_necks`).
"""
from __future__ import annotations

import logging
import time
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.clustering import (ClusterStats, cluster_centroids, cluster_statistics, pseudo_labels,
                              track_statistics)
from utils.errors import ConfigError
from utils.options import yes_no

from .cluster_memory import ClusterMemory

logger = logging.getLogger("transreid.train")


def restart_bn_necks(model: nn.Module) -> None:
    """UDA's start: the source model's BN necks begin afresh (weight 1, bias 0, no running
    statistics), as their loader skips every 'bottleneck' key of a TransReID checkpoint."""
    for name, module in model.named_modules():
        if name.split(".")[-1].startswith("bottleneck") and isinstance(module, nn.BatchNorm1d):
            module.reset_parameters()
            logger.info("UDA: %s starts afresh", name)


class ClusterContrast:
    """The loss of USL training, called as `ReIDLoss` (score, feat, target, target_cam), and its
    per-epoch clustering (`start_epoch`). `train_loader` is a `datasets.PseudoLabelLoader`,
    `feature_loader` the training images with the evaluation transforms."""

    def __init__(self, cfg, train_loader, feature_loader) -> None:
        self.cfg, self.train_loader, self.feature_loader = cfg, train_loader, feature_loader
        self.memory: Optional[ClusterMemory] = None
        self.last_parts: Dict[str, torch.Tensor] = {}
        self._neck_output: Optional[torch.Tensor] = None
        self._hooked: Optional[nn.Module] = None
        self.last_accuracy = torch.zeros(())
        # The true identities, where the data has them: only for the purity and NMI in the log.
        pids = np.array([pid for _, pid, _, _ in train_loader.samples])
        self.true_labels = pids if len(pids) and (pids >= 0).all() else None
        tracks = getattr(train_loader, "tracks", None)
        self.tracks = None if tracks is None else np.asarray(tracks, dtype=np.int64)

    def attach(self, model: nn.Module) -> None:
        """Read the BN neck's output of every forward of `model` (the unwrapped ReIDModel)."""
        if self._hooked is not model:
            model.bottleneck.register_forward_hook(self._keep_neck_output)
            self._hooked = model

    def _keep_neck_output(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._neck_output = output

    @torch.no_grad()
    def extract(self, model: nn.Module, device: torch.device) -> torch.Tensor:
        """L2-normalised BN-neck features (float32) of the training images, in their order."""
        self.attach(model)
        was_training = model.training
        model.eval()
        feats = []
        try:
            for img, _, _, cams, views, _ in self.feature_loader:
                model(img.to(device), cam_label=cams.to(device), view_label=views.to(device))
                feats.append(F.normalize(self._neck_output.float(), dim=1))
        finally:
            model.train(was_training)
        return torch.cat(feats)

    def cluster(self, feats: torch.Tensor) -> np.ndarray:
        """The pseudo-labels of the training images from their features: DBSCAN over the
        Jaccard distance, tracks joined (CLUSTER.*). benchmarks/usl_synthetic.py replaces it on
        an instance by the true identities, to measure what the recipe gains from perfect
        clusters."""
        cfg = self.cfg.CLUSTER
        return pseudo_labels(feats, cfg.EPS, cfg.MIN_SAMPLES, cfg.K1, cfg.K2, tracks=self.tracks)

    def start_epoch(self, model: nn.Module, device: torch.device, epoch: int) -> ClusterStats:
        """Cluster the training images with `model`, start the memory, relabel the loader."""
        cfg, start = self.cfg.CLUSTER, time.perf_counter()
        feats = self.extract(model, device)
        labels = self.cluster(feats)
        stats = cluster_statistics(labels, self.true_labels)
        tracks = ("" if self.tracks is None
                  else f"; {track_statistics(labels, self.tracks).describe()}")
        logger.info("Epoch %d pseudo-labels (%.1f s): %s%s", epoch, time.perf_counter() - start,
                    stats.describe(), tracks)
        if stats.num_clusters == 0:
            raise ConfigError(
                f"clustering the {len(labels)} training images gave no cluster (every image "
                f"has fewer than CLUSTER.MIN_SAMPLES {cfg.MIN_SAMPLES} neighbours within "
                f"CLUSTER.EPS {cfg.EPS}); raise CLUSTER.EPS or lower CLUSTER.MIN_SAMPLES")
        self.memory = ClusterMemory.from_centroids(
            cluster_centroids(feats, labels), cfg.TEMPERATURE, cfg.MEMORY_MOMENTUM,
            yes_no(cfg.HARD_MEMORY, 'CLUSTER.HARD_MEMORY'))
        self.train_loader.relabel(labels.tolist())
        return stats

    def __call__(self, score, feat, target: torch.Tensor, target_cam: torch.Tensor
                 ) -> torch.Tensor:
        if self.memory is None or self._neck_output is None:
            raise RuntimeError("ClusterContrast: start_epoch and attach must come before the loss")
        loss = self.memory(self._neck_output, target)
        with torch.no_grad():  # the share of crops whose nearest memory row is their cluster's
            nearest = (self._neck_output.float() @ self.memory.features.t()).argmax(1)
            self.last_accuracy = (nearest == target).float().mean()
        self._neck_output = None  # read once: a stale output must never stand in for the next
        return loss
