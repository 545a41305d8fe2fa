"""Pseudo-identities for training without labels, as cluster-contrast makes them each epoch
(its examples/cluster_contrast_train_usl.py): DBSCAN over the k-reciprocal Jaccard distance
(`utils.jaccard`), un-clustered images labelled −1 and left out of the epoch, and the mean
feature of each cluster to start the cluster memory (`loss.cluster_memory`).

DBSCAN reads the sparse graph of pairs within eps, which gives the labels that their dense N×N
matrix gives (a pair farther than eps is never a neighbour) without holding N×N numbers.

Tracks (crops a tracker or the user knows to show one person) join the labels afterwards
(`join_tracks`): every crop of a track takes the track's most frequent cluster, so tracks whose
crops mostly fall in one cluster merge there (that is how tracks of different cameras merge).
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
                  k2: int = 6, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                  tracks: Optional[np.ndarray] = None) -> np.ndarray:
    """DBSCAN labels (0 … clusters − 1, −1 for outliers) of the images whose `features` are given,
    over their Jaccard distance. Their defaults: eps 0.6 (0.7 for MSMT17), min_samples 4, k1 30,
    k2 6. `tracks` (an int per image, −1 for none) joins each track's crops (`join_tracks`)."""
    if not 0 < eps < 1:
        raise ConfigError(f"DBSCAN eps={eps} must lie between 0 and 1: the Jaccard distance is "
                          f"at most 1 (their scripts use 0.6 for Market-1501, 0.7 for MSMT17)")
    if min_samples < 1:
        raise ConfigError(f"DBSCAN min_samples={min_samples} must be at least 1 (theirs is 4)")
    graph = jaccard_distance_graph(features, k1, k2, max_distance=eps, chunk_bytes=chunk_bytes)
    graph = sort_graph_by_row_values(graph, copy=False, warn_when_not_sorted=False)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)
    return labels if tracks is None else join_tracks(labels, tracks)


def join_tracks(labels: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """`labels` with every crop of a track (`tracks` ≥ 0) given its track's pseudo-identity:

    * the cluster that most of the track's clustered crops fall in (the lowest label on a tie),
      so two tracks whose crops mostly fall in one cluster merge;
    * a track of two or more crops, none clustered, becomes a new cluster of its own (it is
      one person); a track of one outlier crop stays an outlier;
    * crops without a track (−1) keep their label, outliers included.

    Clusters left without a crop are dropped and the labels renumbered 0 … C − 1 in the order
    of the old labels, the new clusters after them in track order."""
    labels, tracks = np.asarray(labels, dtype=np.int64), np.asarray(tracks, dtype=np.int64)
    if tracks.shape != labels.shape:
        raise ValueError(f"{len(tracks)} track ids for {len(labels)} images")
    tracked = tracks >= 0
    track_ids, track_of = np.unique(tracks[tracked], return_inverse=True)
    votes = tracked.copy()
    votes[tracked] = labels[tracked] != OUTLIER
    # (track, cluster) pairs of the clustered crops, then per track its most frequent cluster.
    pairs, counts = np.unique(np.stack([track_of[votes[tracked]], labels[votes]]), axis=1,
                              return_counts=True)
    order = np.lexsort((pairs[1], -counts, pairs[0]))
    voted, first = np.unique(pairs[0, order], return_index=True)
    cluster_of_track = np.full(len(track_ids), OUTLIER, dtype=np.int64)
    cluster_of_track[voted] = pairs[1, order][first]
    # A lone crop says nothing more than DBSCAN did: an outlier it stays, as in their code.
    orphans = (cluster_of_track == OUTLIER) & (np.bincount(track_of) > 1)
    cluster_of_track[orphans] = labels.max(initial=OUTLIER) + 1 + np.arange(orphans.sum())
    joined = labels.copy()
    joined[tracked] = cluster_of_track[track_of]
    kept = joined != OUTLIER
    joined[kept] = np.unique(joined[kept], return_inverse=True)[1]
    return joined


@dataclass(frozen=True)
class TrackStats:
    """Tracks of one epoch's clustering: how many, and how many clusters join several."""

    num_tracks: int
    merged_clusters: int

    def describe(self) -> str:
        return (f"{self.num_tracks} tracks, {self.merged_clusters} clusters join two or more "
                f"tracks")


def track_statistics(labels: np.ndarray, tracks: np.ndarray) -> TrackStats:
    """The number of tracks, and of clusters holding crops of at least two tracks."""
    labels, tracks = np.asarray(labels), np.asarray(tracks)
    tracked = (tracks >= 0) & (labels != OUTLIER)
    pairs = np.unique(np.stack([labels[tracked], tracks[tracked]]), axis=1)
    tracks_per_cluster = np.bincount(pairs[0]) if pairs.size else np.zeros(0, dtype=np.int64)
    return TrackStats(num_tracks=len(np.unique(tracks[tracks >= 0])),
                      merged_clusters=int((tracks_per_cluster >= 2).sum()))


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
