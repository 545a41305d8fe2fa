"""Pseudo-identities for training without labels, as cluster-contrast makes them each epoch
(its examples/cluster_contrast_train_usl.py): DBSCAN over the k-reciprocal Jaccard distance
(`utils.jaccard`), un-clustered images labelled −1 and left out of the epoch, and the mean
feature of each cluster to start the cluster memory (`loss.cluster_memory`).

DBSCAN reads the sparse graph of pairs within eps, which gives the labels that their dense N×N
matrix gives (a pair farther than eps is never a neighbour) without holding N×N numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from sklearn.cluster import DBSCAN
from sklearn.metrics import normalized_mutual_info_score
from sklearn.neighbors import sort_graph_by_row_values

from utils.errors import ConfigError
from utils.jaccard import DEFAULT_CHUNK_BYTES, jaccard_distance_graph

OUTLIER = -1


@torch.no_grad()
def pseudo_labels(features: torch.Tensor, eps: float = 0.6, min_samples: int = 4, k1: int = 30,
                  k2: int = 6, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> np.ndarray:
    """DBSCAN labels (0 … clusters − 1, −1 for outliers) of the images whose `features` are given,
    over their Jaccard distance. Their defaults: eps 0.6 (0.7 for MSMT17), min_samples 4, k1 30,
    k2 6."""
    if not 0 < eps < 1:
        raise ConfigError(f"DBSCAN eps={eps} must lie between 0 and 1: the Jaccard distance is "
                          f"at most 1 (their scripts use 0.6 for Market-1501, 0.7 for MSMT17)")
    if min_samples < 1:
        raise ConfigError(f"DBSCAN min_samples={min_samples} must be at least 1 (theirs is 4)")
    graph = jaccard_distance_graph(features, k1, k2, max_distance=eps, chunk_bytes=chunk_bytes)
    graph = sort_graph_by_row_values(graph, copy=False, warn_when_not_sorted=False)
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)


def cluster_centroids(features: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """The mean feature of each cluster, row c for label c (outliers left out), unnormalised."""
    labels = torch.as_tensor(np.asarray(labels), device=features.device).long()
    kept = labels != OUTLIER
    if not kept.any():
        raise ValueError("no image was clustered: every label is -1")
    num_clusters = int(labels.max()) + 1
    sums = torch.zeros(num_clusters, features.shape[1], device=features.device,
                       dtype=features.dtype).index_add_(0, labels[kept], features[kept])
    counts = torch.bincount(labels[kept], minlength=num_clusters)
    if (counts == 0).any():
        raise ValueError(f"labels skip cluster(s) {(counts == 0).nonzero().flatten().tolist()}: "
                         f"they must run 0 … {num_clusters - 1}")
    return sums / counts[:, None].to(sums.dtype)


@dataclass(frozen=True)
class ClusterStats:
    """One epoch's clustering: its size, and its agreement with the true identities if known."""

    num_clusters: int
    num_outliers: int
    num_images: int
    purity: Optional[float] = None
    nmi: Optional[float] = None

    def describe(self) -> str:
        text = (f"{self.num_clusters} clusters, {self.num_outliers} of {self.num_images} images "
                f"un-clustered")
        if self.purity is not None:
            text += f", purity {self.purity:.3f}, NMI {self.nmi:.3f}"
        return text


def cluster_statistics(labels: np.ndarray, true_labels: Optional[np.ndarray] = None,
                       ) -> ClusterStats:
    """Counts, and over the clustered images (outliers have no pseudo-identity):

    * purity: the share of clustered images whose true identity is their cluster's most frequent;
    * NMI: normalised mutual information of clusters and true identities (arithmetic mean of the
      two entropies, scikit-learn's default).
    """
    labels = np.asarray(labels)
    kept = labels != OUTLIER
    num_clusters = len(np.unique(labels[kept]))
    stats = dict(num_clusters=num_clusters, num_outliers=int((~kept).sum()),
                 num_images=len(labels))
    if true_labels is None or not kept.any():
        return ClusterStats(**stats)
    true_labels = np.asarray(true_labels)
    if true_labels.shape != labels.shape:
        raise ValueError(f"{len(true_labels)} true labels for {len(labels)} pseudo-labels")
    clusters, truth = labels[kept], np.unique(true_labels[kept], return_inverse=True)[1]
    counts = np.zeros((clusters.max() + 1, truth.max() + 1), dtype=np.int64)
    np.add.at(counts, (clusters, truth), 1)
    purity = counts.max(1).sum() / kept.sum()
    nmi = normalized_mutual_info_score(truth, clusters)
    return ClusterStats(**stats, purity=float(purity), nmi=float(nmi))
