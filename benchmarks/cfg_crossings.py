"""Follow the config through one `do_train` call and count where it crosses between packages
(the architecture issue's measure: 26 crossings, 13 of them climbing back up, before it).

    python benchmarks/cfg_crossings.py                    # one epoch of the tiny synthetic config
    python benchmarks/cfg_crossings.py --list             # and each crossing, caller -> callee
    python benchmarks/cfg_crossings.py --any-call         # every call between packages

A crossing is one call site, a function of one project package calling a function of another
while handing it the config (the root `cfg` or one of its sections, as any argument). Each call
site counts once however often it runs (`--any-call`: every call site between packages, with
or without the config). It climbs when the callee's package sits on a higher
floor than the caller's (docs/architecture.md: utils < config < model, datasets, solver < loss
< processor < tools): a lower package calling back up. The data, model, losses, optimizers and
schedule are built with the reference's public functions, untraced, so the same script runs on
any revision of the repository.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from typing import Dict, Optional, Set, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from yacs.config import CfgNode  # noqa: E402

FLOORS = {"utils": 0, "config": 1, "model": 2, "datasets": 2, "solver": 2, "loss": 3,
          "processor": 4, "tools": 5}
Site = Tuple[str, str, str, str]  # caller module, caller function, callee module, callee


def module_of(filename: str) -> Optional[str]:
    """A source file's path in the repository when it is in a project package, else None."""
    path = os.path.relpath(os.path.abspath(filename), REPO_ROOT)
    return path if path.split(os.sep)[0] in FLOORS else None


def package_of(module: str) -> str:
    return module.split(os.sep)[0]


def config_nodes(cfg: CfgNode) -> Set[int]:
    """ids of the config and of every section in it."""
    found, stack = set(), [cfg]
    while stack:
        node = stack.pop()
        found.add(id(node))
        stack.extend(value for value in node.values() if isinstance(value, CfgNode))
    return found


def trace_crossings(cfg: CfgNode, call, any_call: bool = False) -> Counter:
    """Call sites (caller module, caller, callee module, callee) that hand the config (or,
    with `any_call`, anything) across packages while `call()` runs, with how often each ran."""
    nodes, sites = config_nodes(cfg), Counter()

    def on_event(frame, event, arg):
        if event != "call":
            return
        callee = module_of(frame.f_code.co_filename)
        caller = frame.f_back
        if callee is None or caller is None:
            return
        source = module_of(caller.f_code.co_filename)
        if source is None or package_of(source) == package_of(callee):
            return
        code = frame.f_code
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if any_call or any(id(frame.f_locals.get(name)) in nodes for name in names):
            sites[(source, caller.f_code.co_qualname, callee, code.co_qualname)] += 1

    sys.setprofile(on_event)
    try:
        call()
    finally:
        sys.setprofile(None)
    return sites


def tiny_run_config(output_dir: str, data_dir: str, epochs: int) -> CfgNode:
    from config import cfg as defaults
    cfg = defaults.clone()
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "Synthetic", "vit_transreid_tiny.yml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "OUTPUT_DIR", output_dir,
                         "DATASETS.ROOT_DIR", data_dir, "DATALOADER.NUM_WORKERS", 0,
                         "SOLVER.MAX_EPOCHS", epochs, "SOLVER.EVAL_PERIOD", epochs,
                         "SOLVER.CHECKPOINT_PERIOD", epochs, "SOLVER.LOG_PERIOD", 1000])
    cfg.freeze()
    return cfg


def run(cfg: CfgNode, any_call: bool) -> Counter:
    from datasets import make_dataloader
    from loss import make_loss
    from model import make_model
    from processor import do_train
    from solver import create_scheduler, make_optimizer

    train_loader, _, val_loader, num_query, num_classes, cameras, views = make_dataloader(cfg)
    model = make_model(cfg, num_class=num_classes, camera_num=cameras, view_num=views)
    loss_fn, center = make_loss(cfg, num_classes=num_classes)
    optimizer, optimizer_center = make_optimizer(cfg, model, center)
    scheduler = create_scheduler(cfg, optimizer)
    return trace_crossings(cfg, lambda: do_train(
        cfg, model, center, train_loader, val_loader, optimizer, optimizer_center, scheduler,
        loss_fn, num_query, 0), any_call)


def report(sites: Counter, listing: bool, what: str) -> Dict[str, int]:
    climbs = [site for site in sites
              if FLOORS[package_of(site[2])] > FLOORS[package_of(site[0])]]
    entered = Counter(site[2] for site in sites)
    if listing:
        for site, times in sorted(sites.items()):
            mark = "  climbs" if site in climbs else ""
            print(f"  {site[0]}:{site[1]} -> {site[2]}:{site[3]}  (x{times}){mark}")
    print(f"crossings: {len(sites)} call sites {what} another package, {len(climbs)} of them "
          "climbing back up")
    print("modules entered most: " + ", ".join(f"{name} {count}"
                                               for name, count in entered.most_common(5)))
    return {"crossings": len(sites), "climbs": len(climbs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data", default=None, help="synthetic data folder (default: temporary)")
    parser.add_argument("--list", action="store_true", help="print each crossing")
    parser.add_argument("--any-call", action="store_true",
                        help="count every call between packages, not only those given the config")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cfg_crossings_") as folder:
        cfg = tiny_run_config(os.path.join(folder, "run"), args.data or folder, args.epochs)
        report(run(cfg, args.any_call), args.list,
               "call into" if args.any_call else "hand the config to")


if __name__ == "__main__":
    main()
