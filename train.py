"""Train a TransReID model: python train.py --config_file configs/... [KEY VALUE ...]"""
from datetime import timedelta

import torch
import torch.distributed as dist

from datasets import make_dataloader
from loss import make_loss
from model import make_model
from processor import do_train
from solver import make_optimizer
from solver.scheduler_factory import create_scheduler
from utils.cli import base_parser, env_int, load_config_or_exit, set_seed, start_run

# Rank 0 evaluates while the others wait at a barrier; evaluating MSMT17 can outlast
# NCCL's default 10-minute timeout.
DIST_TIMEOUT = timedelta(hours=2)


def init_distributed(cfg) -> None:
    backend = "nccl" if cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", timeout=DIST_TIMEOUT)


def build_training(cfg) -> dict:
    """Data, model, loss, optimizers and schedule of `cfg`: do_train's arguments but the rank."""
    train_loader, _, val_loader, num_query, num_classes, camera_num, view_num = make_dataloader(cfg)
    model = make_model(cfg, num_class=num_classes, camera_num=camera_num, view_num=view_num)
    loss_fn, center_criterion = make_loss(cfg, num_classes=num_classes)
    optimizer, optimizer_center = make_optimizer(cfg, model, center_criterion)
    scheduler = create_scheduler(cfg, optimizer)
    return dict(model=model, center_criterion=center_criterion, train_loader=train_loader,
                val_loader=val_loader, optimizer=optimizer, optimizer_center=optimizer_center,
                scheduler=scheduler, loss_fn=loss_fn, num_query=num_query)


def main() -> None:
    parser = base_parser("Train TransReID")
    # torch.distributed.launch passes --local_rank (old) or --local-rank (new); torchrun sets LOCAL_RANK.
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        default=env_int("LOCAL_RANK", 0), help="set by the launcher")
    args = parser.parse_args()
    cfg = load_config_or_exit(args.config_file, args.opts)

    if cfg.MODEL.DIST_TRAIN:
        init_distributed(cfg)
    rank = dist.get_rank() if cfg.MODEL.DIST_TRAIN else 0
    logger = start_run(cfg, args.config_file, if_train=True, rank=rank,
                       distributed=cfg.MODEL.DIST_TRAIN)
    # Ranks draw different augmentations; the identity schedule is shared through the sampler.
    set_seed(cfg.SOLVER.SEED + rank)

    try:
        do_train(cfg, **build_training(cfg), local_rank=args.local_rank)
    except FloatingPointError as err:
        logger.error("%s", err)
        raise SystemExit(1)
    finally:
        if cfg.MODEL.DIST_TRAIN and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
