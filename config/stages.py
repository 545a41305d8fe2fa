"""CLIP-ReID's second stage in this repository's keys.

CLIP-ReID's configs give their stage-2 optimizer, schedule, batch and periods under
`SOLVER.STAGE2.*`, where TransReID's give them under `SOLVER.*`. Stage 2 is this repository's
`do_train` (with one more loss part), so for the CLIP-ReID models (`MODEL.NAME` 'ViT-B-16' /
'RN50') `load_config` copies each `SOLVER.STAGE2.X` onto `SOLVER.X`: the data loader, the
optimizer, the schedule, the checkpoints and the evaluation then read what their stage 2 reads.
Stage 1 reads `SOLVER.STAGE1.*` itself (processor/clipreid_stage1.py).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

from yacs.config import CfgNode

from utils.errors import ConfigError

from .choices import CLIP_MODEL_NAMES

# SOLVER.X <- SOLVER.STAGE2.Y, as their stage-2 code reads them (train_clipreid.py,
# make_optimizer_2stage, processor_clipreid_stage2.py).
STAGE2_KEYS: Dict[str, str] = {
    key: key for key in ('IMS_PER_BATCH', 'OPTIMIZER_NAME', 'MAX_EPOCHS', 'BASE_LR', 'LARGE_FC_LR',
                         'BIAS_LR_FACTOR', 'MOMENTUM', 'CENTER_LR', 'CENTER_LOSS_WEIGHT', 'WEIGHT_DECAY',
                         'WEIGHT_DECAY_BIAS', 'GAMMA', 'STEPS', 'WARMUP_FACTOR', 'WARMUP_METHOD',
                         'CHECKPOINT_PERIOD', 'LOG_PERIOD', 'EVAL_PERIOD')
}
# Their WarmupMultiStepLR is stepped once per epoch, so its WARMUP_ITERS counts epochs.
STAGE2_KEYS['WARMUP_EPOCHS'] = 'WARMUP_ITERS'


def is_clipreid(cfg: CfgNode) -> bool:
    return cfg.MODEL.NAME in CLIP_MODEL_NAMES


def _same(a: Any, b: Any) -> bool:
    return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b


def apply_stage2_solver(cfg: CfgNode, defaults: CfgNode, where: str) -> Tuple[str, ...]:
    """Copy SOLVER.STAGE2.* onto SOLVER.* for a CLIP-ReID model (in place; `cfg` not frozen);
    returns the keys copied. A `SOLVER.X` set to something else than its default and than
    its stage-2 value would be silently replaced: that is refused, naming the key to set."""
    if not is_clipreid(cfg):
        return ()
    solver, stage2 = cfg.SOLVER, cfg.SOLVER.STAGE2
    for key, stage2_key in STAGE2_KEYS.items():
        given, wanted = solver[key], stage2[stage2_key]
        if not _same(given, defaults.SOLVER[key]) and not _same(given, wanted):
            raise ConfigError(
                f"SOLVER.{key} {given!r} is not read for CLIP-ReID (MODEL.NAME '{cfg.MODEL.NAME}'): its "
                f"second stage takes SOLVER.STAGE2.{stage2_key} ({wanted!r}); set that instead ({where})")
        solver[key] = type(defaults.SOLVER[key])(wanted) if isinstance(wanted, list) else wanted
    return tuple(STAGE2_KEYS)
