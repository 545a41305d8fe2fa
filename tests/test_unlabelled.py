"""A user's own unlabelled crops (DATASETS.NAMES 'unlabelled') and tracks as supervision
(CLUSTER.TRACKS): reading the folder, joining tracks in the pseudo-labels, and a toy USL run
without evaluation whose checkpoint then extracts features as any trained model."""
import logging
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from config import ConfigError, load_config
from datasets.bases import DatasetError
from datasets.image_list import collect_images
from datasets.make_dataloader import load_eval_dataset, training_tracks
from datasets.unlabelled import UnlabelledDataset
from processor.inference import FeatureExtractor
from tests.conftest import TINY_TRANSREID_OPTS
from tests.test_pipeline import build, train
from tests.test_usl_training import USL_OPTS
from utils.clustering import join_tracks, pseudo_labels, track_statistics

# Four colours of "person", one per track; tracks of the same colour are one person.
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def write_crop(path, colour, seed):
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 12, (64, 32, 3)), 0, 255)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def test_cameras_come_from_market_names_or_first_level_folders(tmp_path):
    for name in ("0002_c3s1_000451_00.jpg", "0007_c1s1_000002_00.jpg", "sub/0000_c2s1_1_00.png"):
        write_crop(str(tmp_path / "named" / name), COLOURS[0], 0)
    for name in ("cam2/a.jpg", "C1/deep/b.jpg", "c4/c.jpg"):
        write_crop(str(tmp_path / "folders" / name), COLOURS[1], 1)
    named = UnlabelledDataset(str(tmp_path / "named"), tracks='names')
    assert [(os.path.relpath(p, tmp_path / "named"), pid, cam) for p, pid, cam, _ in named.train] \
        == [("0002_c3s1_000451_00.jpg", -1, 2), ("0007_c1s1_000002_00.jpg", -1, 0),
            ("sub/0000_c2s1_1_00.png", -1, 1)]
    # The name's number is the track within its camera; 0 (a distractor's) is none.
    assert named.train_tracks == [0, 1, -1]
    assert (named.query, named.gallery, named.num_cameras) == ([], [], 3)
    folders = UnlabelledDataset(str(tmp_path / "folders"))
    assert [cam for _, _, cam, _ in folders.train] == [0, 3, 1]  # C1/deep/b, c4/c, cam2/a
    assert folders.train_tracks is None
    # Only C1/deep/ is a track folder: the others are camera folders.
    assert UnlabelledDataset(str(tmp_path / "folders"), tracks='folders').train_tracks == [0, -1, -1]


def test_bad_unlabelled_folders_are_refused_in_one_line(tmp_path):
    os.makedirs(tmp_path / "empty" / "sub")
    with pytest.raises(DatasetError, match=f"no images .* under '{re.escape(str(tmp_path))}/empty'"):
        UnlabelledDataset(str(tmp_path / "empty"))
    write_crop(str(tmp_path / "mixed" / "c1" / "a.jpg"), COLOURS[0], 0)
    write_crop(str(tmp_path / "mixed" / "b.jpg"), COLOURS[0], 0)
    with pytest.raises(DatasetError, match=r"mixed/b.jpg' \(and 0 more\) has no camera"):
        UnlabelledDataset(str(tmp_path / "mixed"))
    with pytest.raises(DatasetError, match="CLUSTER.TRACKS 'folders': no crop .* has a track"):
        UnlabelledDataset(str(tmp_path / "mixed" / "c1"), tracks='folders')
    evaluation = load_config("", ["DATASETS.NAMES", "unlabelled",
                                  "DATASETS.ROOT_DIR", str(tmp_path / "mixed" / "c1")])
    with pytest.raises(DatasetError, match="have no query or gallery to evaluate on"):
        load_eval_dataset(evaluation)
    # Tracks asked of unlabelled crops read without them.
    with pytest.raises(ConfigError, match="CLUSTER.TRACKS is 'dataset' but DATASETS.NAMES "
                                          "'unlabelled' gives no tracks"):
        training_tracks(load_config("", ["DATASETS.NAMES", "unlabelled",
                                         "CLUSTER.TRACKS", "dataset"]),
                        UnlabelledDataset(str(tmp_path / "mixed" / "c1")))


def clusters(points, spread, per_point, seed):
    """`per_point` unit vectors scattered by `spread` around each of `points`."""
    rng = np.random.default_rng(seed)
    feats = np.repeat(np.array(points, dtype=np.float32), per_point, axis=0)
    feats += rng.normal(0, spread, feats.shape).astype(np.float32)
    return torch.nn.functional.normalize(torch.from_numpy(feats), dim=1)


def test_tracks_rejoin_split_tracks_give_outliers_their_own_cluster_and_merge():
    # Groups A (0-5), B (6-11), C (12-17) on three axes; two lone crops (18, 19) far from all.
    eye = np.eye(8)
    feats = torch.cat([clusters(eye[:3], 0.02, 6, 0), clusters(eye[3:5], 0.02, 1, 1)])
    plain = pseudo_labels(feats, eps=0.5, min_samples=3, k1=5, k2=2)
    groups = [plain[0:6], plain[6:12], plain[12:18]]
    # By hand: three clusters, the lone crops outliers.
    assert all(len(set(g)) == 1 and g[0] >= 0 for g in groups)
    assert len({g[0] for g in groups}) == 3 and (plain[18:] == -1).all()
    tracks = np.full(20, -1)
    tracks[[0, 1, 2, 6]] = 0      # mostly in A, one crop in B: re-joined in A
    tracks[[18, 19]] = 1          # outliers only: one cluster of their own
    tracks[[12, 13]] = 2          # two tracks in C ...
    tracks[[14, 15, 16]] = 3      # ... merge there
    joined = pseudo_labels(feats, eps=0.5, min_samples=3, k1=5, k2=2, tracks=tracks)
    a, b, c = joined[0], joined[7], joined[12]
    assert len({a, b, c}) == 3
    assert (joined[[0, 1, 2, 3, 4, 5, 6]] == a).all() and (joined[7:12] == b).all()
    assert (joined[12:18] == c).all()
    assert joined[18] == joined[19] and joined[18] not in (a, b, c, -1)
    assert sorted(set(joined.tolist())) == [0, 1, 2, 3]
    stats = track_statistics(joined, tracks)
    assert (stats.num_tracks, stats.merged_clusters) == (4, 1)  # C joins tracks 2 and 3


def test_join_tracks_ties_go_to_the_lower_cluster_and_empty_clusters_renumber():
    labels = np.array([0, 0, 1, 1, 2, 2, -1])
    tracks = np.array([-1, -1, 4, 4, 4, 4, -1])  # 1 and 2 tie: 1; cluster 2 empties
    assert join_tracks(labels, tracks).tolist() == [0, 0, 1, 1, 1, 1, -1]
    labels = np.array([0, 0, 2, 2, 1, -1])
    tracks = np.array([3, 3, -1, -1, -1, 3])  # track 3 owns cluster 0; label 2 stays
    assert join_tracks(labels, tracks).tolist() == [0, 0, 2, 2, 1, 0]
    labels = np.array([0, 0, 0, -1, -1, -1])
    tracks = np.array([-1, -1, -1, 1, 2, 2])  # a lone outlier stays one; a pair is a cluster
    assert join_tracks(labels, tracks).tolist() == [0, 0, 0, -1, 1, 1]
    with pytest.raises(ValueError, match="2 track ids for 3 images"):
        join_tracks(np.zeros(3), np.zeros(2))


def test_join_tracks_matches_a_plain_loop_over_tracks():
    rng = np.random.default_rng(3)
    labels, tracks = rng.integers(-1, 30, 400), rng.integers(-1, 60, 400)
    labels[tracks % 10 == 0] = -1         # tracks 0, 10, ... wholly un-clustered
    tracks[labels.argmin()] = 99          # and a track of one outlier crop
    expected, next_label = labels.copy(), labels.max() + 1
    for track in np.unique(tracks[tracks >= 0]):
        crops = tracks == track
        votes = labels[crops][labels[crops] >= 0]
        if len(votes):
            counts = np.bincount(votes)
            expected[crops] = np.flatnonzero(counts == counts.max())[0]
        elif crops.sum() > 1:
            expected[crops], next_label = next_label, next_label + 1
    kept = expected >= 0
    expected[kept] = np.unique(expected[kept], return_inverse=True)[1]
    assert join_tracks(labels, tracks).tolist() == expected.tolist()


def write_tracks(root):
    """Two cameras, two tracks each (the same two people seen by both), 4 crops a track; and
    two crops without a track, directly in a camera folder."""
    for cam in (1, 2):
        for track in range(2):
            person = track
            for k in range(4):
                write_crop(os.path.join(root, f"c{cam}", f"t{track}", f"{k}.jpg"),
                           COLOURS[person], seed=100 * cam + 10 * track + k)
        write_crop(os.path.join(root, f"c{cam}", "loose.jpg"), COLOURS[0], seed=cam)


def test_usl_on_unlabelled_tracks_trains_without_evaluation_then_extracts(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    root = str(tmp_path / "crops")
    write_tracks(root)
    opts = (TINY_TRANSREID_OPTS + USL_OPTS + [
        "DATASETS.NAMES", "unlabelled", "DATASETS.ROOT_DIR", root, "CLUSTER.TRACKS", "folders",
        "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_EPOCHS", "1", "SOLVER.EVAL_PERIOD", "1",
        "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.IMS_PER_BATCH", "8", "CLUSTER.K1", "4",
        "CLUSTER.K2", "2", "CLUSTER.MIN_SAMPLES", "2", "INPUT.SIZE_TRAIN", "[32, 16]",
        "INPUT.SIZE_TEST", "[32, 16]"])
    cfg, parts = build(opts)
    # c1/loose.jpg, c1/t0/0-3.jpg, c1/t1/0-3.jpg, then the same under c2/
    assert parts["train_loader"].tracks == [-1] + [0] * 4 + [1] * 4 + [-1] + [2] * 4 + [3] * 4
    assert parts["num_query"] == 0
    start = {k: v.clone() for k, v in parts["model"].state_dict().items()}
    assert train(cfg, parts) is None
    messages = [record.getMessage() for record in caplog.records]
    assert sum("Evaluation skipped" in m for m in messages) == 1
    line = next(m for m in messages if "pseudo-labels" in m)
    assert re.search(r"of 18 images un-clustered; 4 tracks, \d clusters join two or more tracks$",
                     line), line
    assert "purity" not in line
    weights = str(tmp_path / "out" / "transformer_1.pth")
    extractor = FeatureExtractor.from_config(load_config("", opts + ["TEST.WEIGHT", weights]))
    trained = parts["model"].state_dict()
    loaded = extractor.trained.model.state_dict()
    assert all(torch.equal(loaded[k], trained[k].cpu()) for k in trained)
    assert not torch.equal(trained["base.cls_token"], start["base.cls_token"])
    records = collect_images(root)
    features = extractor.extract_records(records, show_progress=False)
    assert features.shape == (18, extractor.backend.feature_dim) and features.isfinite().all()


def test_unlabelled_crops_need_usl_and_tracks_come_as_the_dataset_gives_them(tmp_path, tiny_opts):
    root = str(tmp_path / "crops")
    write_tracks(root)
    with pytest.raises(ConfigError, match="unlabelled crops have no identities .* set "
                                          "MODEL.TRAIN_MODE 'usl'"):
        build(tiny_opts + ["DATASETS.NAMES", "unlabelled", "DATASETS.ROOT_DIR", root])
    # A labelled dataset: its own tracks with 'dataset', the unlabelled readers' values refused.
    labelled = SimpleNamespace(labelled=True, train=[("a.jpg", 0, 0, 1)] * 3,
                               train_tracks=[0, -1, 0], display_name="labelled")
    assert training_tracks(load_config("", ["CLUSTER.TRACKS", "dataset"]), labelled) == [0, -1, 0]
    with pytest.raises(ConfigError, match="CLUSTER.TRACKS 'names' is how DATASETS.NAMES "
                                          "'unlabelled' reads tracks.* set CLUSTER.TRACKS 'dataset'"):
        training_tracks(load_config("", ["CLUSTER.TRACKS", "names"]), labelled)
    assert training_tracks(load_config("", []), labelled) is None
    with pytest.raises(ConfigError, match="CLUSTER.TRACKS"):
        load_config("", ["CLUSTER.TRACKS", "'tracker'"])
