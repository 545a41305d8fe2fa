"""Verification figures (utils/verification.py) against a plain numpy oracle, and the held-out
FAR check of a calibrated threshold on features with a known genuine / impostor structure."""
import numpy as np
import pytest
import torch

from utils.verification import split_queries, verify


def oracle_pairs(distmat, q_pids, g_pids, q_cams, g_cams):
    """Genuine and impostor distances, pair by pair, as the CMC protocol reads them."""
    genuine, impostor = [], []
    for i in range(len(q_pids)):
        for j in range(len(g_pids)):
            if q_pids[i] == g_pids[j] and q_cams[i] == g_cams[j]:
                continue
            (genuine if q_pids[i] == g_pids[j] else impostor).append(float(distmat[i, j]))
    return np.array(genuine), np.array(impostor)


def oracle_threshold(impostor, far):
    """The largest impostor distance whose FAR is within `far`, by trying each one."""
    ok = [t for t in np.unique(impostor) if np.mean(impostor <= t) <= far]
    return max(ok) if ok else None


def oracle_eer(genuine, impostor):
    best = None
    for t in np.unique(np.concatenate([genuine, impostor])):
        far, frr = np.mean(impostor <= t), np.mean(genuine > t)
        if best is None or abs(far - frr) < best[0]:
            best = (abs(far - frr), (far + frr) / 2, t)
    return best[1], best[2]


def small_problem(seed=0, num_q=40, num_g=120, ids=15):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, ids, num_q), rng.integers(0, ids, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    # Distances on a coarse grid, so ties occur and must be counted right.
    distmat = np.round(rng.random((num_q, num_g)) + 0.4 * (q_pids[:, None] != g_pids[None]), 2)
    return distmat.astype(np.float32), q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("chunk_rows", [7, 256])
def test_tar_far_threshold_and_eer_equal_the_oracle(chunk_rows):
    distmat, q_pids, g_pids, q_cams, g_cams = small_problem()
    genuine, impostor = oracle_pairs(distmat, q_pids, g_pids, q_cams, g_cams)
    result = verify(distmat, q_pids, g_pids, q_cams, g_cams, target_far=0.05,
                    check_held_out=False, chunk_rows=chunk_rows)
    assert result.exact and (result.num_genuine, result.num_impostor) == (len(genuine), len(impostor))
    for far in (0.05, 1e-2, 1e-3, 1e-4):
        expected = oracle_threshold(impostor, far)
        threshold = result.threshold_at_far[far]
        if expected is None:  # nothing may be accepted: below every impostor distance
            assert threshold < impostor.min() and np.mean(impostor <= threshold) == 0
        else:
            assert threshold == pytest.approx(expected)
        assert result.tar_at_far[far] == pytest.approx(np.mean(genuine <= threshold))
    assert result.threshold == result.threshold_at_far[0.05]
    eer, eer_threshold = oracle_eer(genuine, impostor)
    assert (result.eer, result.eer_threshold) == (pytest.approx(eer), pytest.approx(eer_threshold))


def test_the_roc_curve_is_monotone_and_its_points_are_exact():
    distmat, q_pids, g_pids, q_cams, g_cams = small_problem(seed=1)
    genuine, impostor = oracle_pairs(distmat, q_pids, g_pids, q_cams, g_cams)
    result = verify(distmat, q_pids, g_pids, q_cams, g_cams, check_held_out=False)
    assert np.all(np.diff(result.roc_far) >= 0) and np.all(np.diff(result.roc_tar) >= 0)
    assert result.roc_far[-1] == 1.0 and result.roc_tar[-1] == 1.0
    # Each point is (FAR, TAR) at one threshold: the pair is one of the oracle's.
    below_all = np.nextafter(impostor.min(), -np.inf)
    oracle_points = {(np.mean(impostor <= t), np.mean(genuine <= t))
                     for t in [below_all, *np.unique(impostor)]}
    for far, tar in zip(result.roc_far, result.roc_tar):
        assert min(abs(far - f) + abs(tar - t) for f, t in oracle_points) < 1e-12


def test_histogram_counts_stay_within_a_bin_of_the_exact_ones_and_take_tensors():
    distmat, q_pids, g_pids, q_cams, g_cams = small_problem(seed=2)
    exact = verify(distmat, q_pids, g_pids, q_cams, g_cams, check_held_out=False)
    binned = verify(torch.from_numpy(distmat), q_pids, g_pids, q_cams, g_cams, check_held_out=False,
                    max_exact_pairs=0, bins=4096, chunk_rows=5)
    _, impostor = oracle_pairs(distmat, q_pids, g_pids, q_cams, g_cams)
    width = (distmat.max() - distmat.min()) / 4096
    assert not binned.exact and binned.num_impostor == exact.num_impostor
    for far in (1e-2, 1e-3):
        # The binned threshold never accepts more than the target, and is at most a bin below
        # the exact one (it may lie above it, short of the next impostor distance).
        assert np.mean(impostor <= binned.threshold_at_far[far]) <= far
        assert binned.threshold_at_far[far] >= exact.threshold_at_far[far] - width
    assert binned.eer == pytest.approx(exact.eer, abs=0.01)


def test_bad_input_is_refused():
    distmat, q_pids, g_pids, q_cams, g_cams = small_problem()
    with pytest.raises(ValueError, match="shape"):
        verify(distmat[:, 1:], q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match="0 genuine"):
        verify(distmat, q_pids, g_pids + 100, q_cams, g_cams, check_held_out=False)
    with pytest.raises(ValueError, match="between 0 and 1"):
        verify(distmat, q_pids, g_pids, q_cams, g_cams, target_far=0)


def test_halves_of_the_queries_share_no_identity():
    q_pids = np.repeat(np.arange(30), 3)
    first, second = split_queries(q_pids, seed=4)
    assert len(first) + len(second) == len(q_pids)
    assert not set(q_pids[first]) & set(q_pids[second]) and len(set(q_pids[first])) == 15


def reid_like_features(num_ids, views, dim, cameras, rng, noise=0.4):
    centres = rng.normal(size=(num_ids, dim))
    pids = np.repeat(np.arange(num_ids), views)
    feats = centres[pids] + noise * rng.normal(size=(len(pids), dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats.astype(np.float32), pids, rng.integers(0, cameras, len(pids))


def test_a_threshold_for_far_1e_3_holds_within_2x_on_held_out_identities():
    """The goal of issue 23 on synthetic features: calibrated on half the query identities, the
    FAR 1e-3 threshold gives a FAR within a factor 2 of 1e-3 on the other half's pairs."""
    rng = np.random.default_rng(0)
    gallery, g_pids, g_cams = reid_like_features(400, 4, 32, 4, rng)
    queries = (gallery[::4] + 0.1 * rng.normal(size=(400, 32))).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    q_pids, q_cams = g_pids[::4], rng.integers(0, 4, 400)
    distmat = 1.0 - queries @ gallery.T  # 640k pairs: 1e-3 of the impostors is ~300 per half
    result = verify(distmat, q_pids, g_pids, q_cams, g_cams, target_far=1e-3)
    assert result.num_impostor > 600_000
    assert 0.5 <= result.held_out.ratio <= 2.0, result.held_out
    assert result.held_out.threshold == pytest.approx(result.threshold, abs=0.02)
    assert result.tar_at_far[1e-3] > 0.5  # the structure is there, not chance


def test_the_report_draws_the_roc_and_the_histograms(tmp_path, caplog):
    from PIL import Image
    from processor.verification_report import verification_report
    from tools.verification_plots import save_verification_plots
    distmat, q_pids, g_pids, q_cams, g_cams = small_problem(num_q=60)
    with caplog.at_level("INFO", logger="transreid.verification"):
        result = verification_report(distmat, q_pids, g_pids, q_cams, g_cams, target_far=1e-2)
    assert "TAR @ FAR 0.01" in caplog.text and "EER" in caplog.text and result.held_out
    paths = save_verification_plots(result, str(tmp_path / "out"))
    for path in paths.values():
        picture = np.asarray(Image.open(path).convert("L"))
        assert picture.shape == (480, 640) and picture.min() < 100 < 200 < picture.max()


def test_thresholds_of_test_py_distances_become_cosine_distances():
    from processor.verification_report import gallery_threshold
    rng = np.random.default_rng(3)
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in rng.normal(size=(2, 50, 8)))
    squared_euclidean = ((a - b) ** 2).sum(1)
    cosine = 1 - (a * b).sum(1)
    t = np.median(squared_euclidean)
    converted = gallery_threshold(t, "euclidean", feat_norm=True, re_ranking=False)
    assert np.array_equal(squared_euclidean <= t, cosine <= converted + 1e-12)
    assert gallery_threshold(0.3, "cosine", True, False) == 0.3
    assert gallery_threshold(0.3, "euclidean", False, False) is None
    assert gallery_threshold(0.3, "cosine", True, True) is None
