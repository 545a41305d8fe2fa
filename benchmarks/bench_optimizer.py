"""Optimizer step time: the reference's one param group per tensor against one per setting.

    python benchmarks/bench_optimizer.py [--config_file CONFIG] [--device cpu|cuda] [--repeats N]

Both optimizers get the same learning rate and weight decay for every tensor (solver's
`parameter_settings`, the reference's rules) and the same gradients; the script checks that
their updates are equal and prints the median step time of each.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import load_config  # noqa: E402
from model import make_model  # noqa: E402
from solver.make_optimizer import (build_param_groups, optimizer_class_and_defaults,  # noqa: E402
                                   parameter_settings)


def per_tensor_groups(cfg, model):
    """The reference's layout: one group per trainable tensor."""
    groups = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            lr, weight_decay = parameter_settings(cfg, name)
            groups.append({"params": [param], "lr": lr, "weight_decay": weight_decay})
    return groups


def median_step_seconds(optimizer, device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(cfg, device, groups_of, seed=0):
    torch.manual_seed(seed)
    model = make_model(cfg, num_class=751, camera_num=6, view_num=1).to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=generator).to(device) * 1e-3
    optimizer_class, defaults = optimizer_class_and_defaults(cfg)
    groups = groups_of(cfg, model)
    return model, optimizer_class(groups, **defaults), len(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_file", default="configs/Market/vit_transreid_stride.yml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    cfg = load_config(args.config_file, ["MODEL.PRETRAIN_CHOICE", "none"])
    device = torch.device(args.device)

    rows = []
    models = []
    for label, groups_of in (("one group per tensor (reference)", per_tensor_groups),
                             ("one group per setting (this repo)", build_param_groups)):
        model, optimizer, num_groups = build(cfg, device, groups_of)
        optimizer.step()  # warm-up: creates the momentum / moment buffers
        rows.append((label, num_groups, median_step_seconds(optimizer, device, args.repeats)))
        models.append(model)

    same = all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters()))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    print(f"device: {name}; {cfg.SOLVER.OPTIMIZER_NAME} on {args.config_file} "
          f"({sum(p.numel() for p in models[0].parameters()) / 1e6:.1f}M parameters); "
          f"median of {args.repeats} steps")
    print(f"{'layout':<36}{'groups':>8}{'step ms':>10}")
    for label, num_groups, seconds in rows:
        print(f"{label:<36}{num_groups:>8}{1000 * seconds:>10.2f}")
    print(f"speed-up {rows[0][2] / rows[1][2]:.2f}x; identical updates: {same}")


if __name__ == "__main__":
    main()
