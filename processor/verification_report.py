"""Verification figures of an evaluation (test.py): how well a distance threshold tells "same
identity" from "another", and the threshold a gallery should use for a false-accept rate.

The figures themselves are `utils.verification`'s; this logs them and says which of them a
gallery (`deploy.gallery`, cosine distances of unit features) can take as its threshold.
"""
from __future__ import annotations

import logging
from typing import Optional


from utils.verification import VerificationResult, verify

logger = logging.getLogger("transreid.verification")


def gallery_threshold(threshold: float, dist_metric: str, feat_norm: bool,
                      re_ranking: bool) -> Optional[float]:
    """`threshold` of test.py's distances as the cosine distance (1 - cos) a gallery uses, or
    None when they are not a function of the cosine (re-ranking, or unnormalised Euclidean)."""
    if re_ranking:
        return None
    if dist_metric == "cosine":
        return threshold
    # Squared Euclidean distance of unit rows: |q - g|^2 = 2 (1 - cos).
    return threshold / 2 if feat_norm else None


def verification_report(distmat, q_pids, g_pids, q_camids, g_camids,
                        target_far: float = 1e-3) -> VerificationResult:
    """Genuine and impostor pairs of a query x gallery distance matrix under the re-ID protocol,
    TAR at FAR 1e-2 / 1e-3 / 1e-4, the EER, the threshold for `target_far` and its FAR on
    held-out query identities; each logged in one line."""
    result = verify(distmat, q_pids, g_pids, q_camids, g_camids, target_far)
    logger.info("Verification: %d genuine and %d impostor pairs (%s counts)", result.num_genuine,
                result.num_impostor, "exact" if result.exact else "histogram")
    for far, tar in sorted(result.tar_at_far.items(), reverse=True):
        logger.info("TAR @ FAR %-6g: %.1f%% (threshold %.4f)", far, 100 * tar,
                    result.threshold_at_far[far])
    logger.info("EER: %.2f%% (threshold %.4f)", 100 * result.eer, result.eer_threshold)
    held = result.held_out
    if held is not None:
        logger.info("Threshold for FAR %g calibrated on half the query identities: FAR %.2g on "
                    "the other half (%.2fx the target)", held.target_far, held.measured_far,
                    held.ratio)
    return result
