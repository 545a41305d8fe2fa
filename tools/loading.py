"""How a tool opens its config and its model, after parsing its arguments: the config from
--config_file (or the run folder's), the overrides and the flags; the model of TEST.WEIGHT
through `processor.FeatureExtractor`, whatever its format; and where default outputs go."""
from __future__ import annotations

import argparse
import os
from typing import Sequence

from config.cli import load_cli_config, run_config_file, weight_in
from deploy.metadata import given_keys
from processor.inference import FeatureExtractor
from utils.device import apply_visible_devices
from utils.errors import ToolError
from utils.files import fresh_folder


def load_tool_config(args: argparse.Namespace, extra_opts: Sequence[str] = ()):
    """Frozen config from --config_file (left out: the run folder's config.yaml beside the
    weights), the KEY VALUE overrides and the flags that set keys."""
    opts = list(args.opts or []) + list(extra_opts)
    if args.weight:
        opts += ["TEST.WEIGHT", args.weight]
    # TEST.WEIGHT replaces every weight: ImageNet initialisation would only cost time (or fail
    # where the ImageNet file is absent).
    opts += ["MODEL.PRETRAIN_CHOICE", "none"]
    args.run_config = run_config_file(args.config_file, weight_in(opts))
    cfg = load_cli_config(args.run_config, opts)
    if not cfg.TEST.WEIGHT:
        raise ToolError("no trained model given; pass --weight PATH (or TEST.WEIGHT PATH)")
    apply_visible_devices(cfg.MODEL.DEVICE_ID)
    return cfg


def load_extractor(args: argparse.Namespace, cfg, dataset=None, **kwargs) -> FeatureExtractor:
    """The FeatureExtractor of TEST.WEIGHT (`FeatureExtractor.from_config`): PyTorch weights
    built by `cfg` (and checked for `dataset`, when one is evaluated), or an exported file under
    `cfg` fitted to it (its `cfg` is then the one to use)."""
    return FeatureExtractor.from_config(
        cfg, dataset, chosen=given_keys(args.config_file, args.opts or []),
        num_cameras=getattr(args, "num_cameras", None), num_views=getattr(args, "num_views", None),
        **kwargs)


def default_folder(cfg, name: str) -> str:
    """A tool's default output folder: `name` in OUTPUT_DIR, or without one beside the weights,
    under a fresh name where an earlier run's results are (utils.files.fresh_folder)."""
    base = cfg.OUTPUT_DIR or os.path.dirname(os.path.abspath(cfg.TEST.WEIGHT))
    return fresh_folder(os.path.join(base, name))
