"""Evaluation: features of a query-then-gallery loader (through `FeatureExtractor`) scored by
`utils.metrics.R1_mAP_eval` into one `EvalResult`, with verification figures on request, and
the reference's result lines. Evaluators see features, never models.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from config import switches
from utils.metrics import EvalResult, R1_mAP_eval, query_gallery_distance
from utils.verification import NoVerificationPairs

from .inference import FeatureExtractor
from .verification_report import verification_report

logger = logging.getLogger("transreid.evaluation")

# The false-accept rate whose threshold test.py reports (and a gallery can take).
VERIFICATION_FAR = 1e-3


def make_evaluator(cfg, num_query: int) -> R1_mAP_eval:
    flags = switches(cfg)
    return R1_mAP_eval(num_query, max_rank=50, feat_norm=flags.feat_norm,
                       reranking=flags.re_ranking, dist_metric=cfg.TEST.DIST_METRIC,
                       k1=cfg.TEST.RE_RANKING_K1, k2=cfg.TEST.RE_RANKING_K2,
                       lambda_value=cfg.TEST.RE_RANKING_LAMBDA)


def distance_matrix(cfg, query_feats: torch.Tensor, gallery_feats: torch.Tensor) -> np.ndarray:
    """Query x gallery distances as the evaluator ranks them (TEST.FEAT_NORM, then re-ranking
    or TEST.DIST_METRIC), for features of a few queries or of images outside a benchmark."""
    flags = switches(cfg)
    return query_gallery_distance(query_feats, gallery_feats, flags.feat_norm,
                                  cfg.TEST.DIST_METRIC, flags.re_ranking, cfg.TEST.RE_RANKING_K1,
                                  cfg.TEST.RE_RANKING_K2, cfg.TEST.RE_RANKING_LAMBDA).numpy()


def evaluate(cfg, model: nn.Module, val_loader, num_query: int, device: torch.device,
             verification: bool = False) -> EvalResult:
    """mAP, CMC and mINP of `model` on a query-then-gallery loader (`evaluate_features` of its
    FeatureExtractor on `device`)."""
    return evaluate_features(cfg, FeatureExtractor(cfg, model, device), val_loader, num_query,
                             verification)


def evaluate_features(cfg, extractor: FeatureExtractor, val_loader, num_query: int,
                      verification: bool = False) -> EvalResult:
    """mAP, CMC and mINP of the extractor's features of a query-then-gallery loader; with
    `verification`, also the verification figures of its distances (`EvalResult.verification`).

    The loader draws its seed from the global RNG; forking it keeps training randomness
    independent of when and how often evaluation runs (so a resumed run matches an
    uninterrupted one).
    """
    device = extractor.device
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        feats, pids, camids, _ = extractor.extract_loader(val_loader, desc="extracting features")
    evaluator = make_evaluator(cfg, num_query)
    evaluator.update((feats, pids, camids))
    if not verification:
        return evaluator.evaluate()
    result, distmat = evaluator.evaluate_with_distances()
    if distmat is None:
        logger.warning("No verification figures: the %d x %d distance matrix is over 2 GiB",
                       num_query, len(pids) - num_query)
        return result
    distmat = cosine_distances(cfg, distmat, feats[:num_query], feats[num_query:])
    try:
        result.verification = verification_report(distmat, pids[:num_query], pids[num_query:],
                                                  camids[:num_query], camids[num_query:],
                                                  VERIFICATION_FAR)
    except NoVerificationPairs as err:  # one identity, or none seen by two cameras
        logger.warning("No verification figures: %s", err)
        result.extra["verification"] = {"unavailable": str(err)}
    return result


def cosine_distances(cfg, distmat: np.ndarray, qf: torch.Tensor, gf: torch.Tensor) -> np.ndarray:
    """The evaluator's distances as the cosine distance 1 - cos of the features, the one unit
    of every distance shown to a user and of a gallery's threshold: the same numbers for
    TEST.DIST_METRIC cosine, half of them for the squared Euclidean distance of L2-normalised
    features, computed anew otherwise (re-ranking, unnormalised features)."""
    flags = switches(cfg)
    if not flags.re_ranking and cfg.TEST.DIST_METRIC == "cosine":
        return distmat
    if not flags.re_ranking and flags.feat_norm:
        return np.multiply(distmat, 0.5, out=distmat)  # |q - g|^2 = 2 (1 - cos) of unit rows
    return query_gallery_distance(qf, gf, feat_norm=True, dist_metric="cosine").numpy()


def log_result(logger_: logging.Logger, result: EvalResult, title: str) -> None:
    """The reference's result lines ('mAP: ..', 'CMC curve, Rank-1  :..'), one per METRICS."""
    logger_.info(title)
    for name, value in result.metrics().items():
        if name.startswith("rank"):
            if int(name[len("rank"):]) <= len(result.cmc):
                logger_.info("CMC curve, Rank-{:<3}:{:.1%}".format(name[len("rank"):], value))
        else:
            logger_.info("{}: {:.1%}".format(name, value))
    skipped = f", {result.num_skipped_queries} skipped without a valid match" \
        if result.num_skipped_queries else ""
    logger_.info("Scored %d of %d queries%s", result.num_valid_queries, result.num_queries, skipped)
