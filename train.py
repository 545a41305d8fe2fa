"""Train a TransReID model: python train.py --config_file configs/... [KEY VALUE ...]"""
import contextlib
import logging
import signal
from datetime import timedelta
from typing import Iterator

import torch.distributed as dist

from datasets import make_dataloader
from loss import make_loss
from loss.cluster_contrast import ClusterContrast, restart_bn_necks
from model import make_model
from processor import do_train
from processor.clipreid_stage1 import do_train_stage1, resumes_stage1
from processor.checkpoint import claim_output_dir, load_checkpoint, resume_hint
from config.choices import UNLABELLED_MODES
from config.stages import is_clipreid
from config.cli import base_parser, load_cli_config
from processor.cli import env_int, start_run
from utils.errors import exits_on_user_error
from solver import make_optimizer
from solver.make_optimizer import make_optimizer_1stage
from solver.scheduler_factory import create_scheduler, create_scheduler_1stage
from utils.device import select_device, uses_gpu
from utils.seed import set_seed

# Rank 0 evaluates while the others wait at a barrier; evaluating MSMT17 can outlast
# NCCL's default 10-minute timeout.
DIST_TIMEOUT = timedelta(hours=2)

def init_distributed(cfg, local_rank: int) -> None:
    on_gpu = uses_gpu(cfg.MODEL.DEVICE)
    if on_gpu:
        # Before the process group starts, so that NCCL's first collective (a barrier while
        # the dataset loads) runs on this process's GPU and not on a guessed one.
        select_device(cfg.MODEL.DEVICE, local_rank)
    dist.init_process_group(backend="nccl" if on_gpu else "gloo", init_method="env://",
                            timeout=DIST_TIMEOUT)


def build_training(cfg) -> dict:
    """Data, model, loss, optimizers and schedule of `cfg`: do_train's arguments but the rank."""
    (train_loader, train_features_loader, val_loader, num_query, num_classes, camera_num,
     view_num) = make_dataloader(cfg)
    model = make_model(cfg, num_class=num_classes, camera_num=camera_num, view_num=view_num)
    loss_fn, center_criterion = make_loss(cfg, num_classes=num_classes)
    if cfg.MODEL.TRAIN_MODE in UNLABELLED_MODES:
        # Without labels the loss is cluster-contrast's alone (the classifier goes untrained).
        loss_fn = ClusterContrast(cfg, train_loader, train_features_loader)
    if cfg.MODEL.TRAIN_MODE == 'uda':
        restart_bn_necks(model)
    if is_clipreid(cfg):
        # Stage 2 fine-tunes the image side alone; stage 1 trains the prompts by its own optimizer.
        model.freeze_text_side()
    optimizer, optimizer_center = make_optimizer(cfg, model, center_criterion)
    scheduler = create_scheduler(cfg, optimizer)
    parts = dict(model=model, center_criterion=center_criterion, train_loader=train_loader,
                 val_loader=val_loader, optimizer=optimizer, optimizer_center=optimizer_center,
                 scheduler=scheduler, loss_fn=loss_fn, num_query=num_query)
    if is_clipreid(cfg) and cfg.SOLVER.STAGE1.MAX_EPOCHS > 0:  # 0: stage 2 alone, from untrained prompts
        prompt_optimizer = make_optimizer_1stage(cfg, model)
        parts['stage1'] = (train_features_loader, prompt_optimizer,
                           create_scheduler_1stage(cfg, prompt_optimizer))
    return parts


def run_training(cfg, parts: dict, local_rank: int):
    """`do_train` on `build_training`'s parts; for CLIP-ReID, after its stage 1 unless
    MODEL.RESUME is a state of stage 2."""
    stage1 = parts.pop('stage1', None)
    if stage1 is not None and not (cfg.MODEL.RESUME and not resumes_stage1(cfg)):
        do_train_stage1(cfg, parts['model'], *stage1, local_rank)
        cfg = cfg.clone()  # stage 2 starts afresh, from the learnt prompts
        cfg.defrost()
        cfg.MODEL.RESUME = ''
        cfg.freeze()
    return do_train(cfg, **parts, local_rank=local_rank)


class Terminated(BaseException):
    """SIGTERM, which schedulers send before they kill a job: raised in the main thread like
    KeyboardInterrupt (and, like it, not an Exception, so no `except Exception` swallows it)."""


# The shell's convention: 128 + the signal's number.
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM


STOP_EXCEPTIONS = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}


@contextlib.contextmanager
def stop_signals_raise_once(logger: logging.Logger) -> Iterator[None]:
    """Inside the block SIGINT raises KeyboardInterrupt and SIGTERM `Terminated` in the main
    thread, once: later ones are logged and ignored, so that a second signal cannot cut short
    the wait for the checkpoint writes in flight, and the resume hint names the epoch that is
    really on disk. Checkpoints are written by a background thread
    (utils/background_writer.py), which signals never interrupt."""
    stopping = []

    def on_signal(signum: int, frame) -> None:
        if stopping:
            logger.warning("%s again: already stopping once the checkpoint writes in flight are "
                           "done", signal.Signals(signum).name)
            return
        stopping.append(signum)
        raise STOP_EXCEPTIONS[signum]()

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_EXCEPTIONS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@exits_on_user_error
def main() -> None:
    parser = base_parser("Train TransReID")
    # torch.distributed.launch passes --local_rank (old) or --local-rank (new); torchrun sets LOCAL_RANK.
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        default=env_int("LOCAL_RANK", 0), help="set by the launcher")
    args = parser.parse_args()
    cfg = load_cli_config(args.config_file, args.opts)
    if cfg.MODEL.RESUME:
        load_checkpoint(cfg.MODEL.RESUME, mmap=True)  # named now if bad, before anything is built
    # Global rank 0 alone writes OUTPUT_DIR; it locks it before the others even meet.
    run_lock = claim_output_dir(cfg) if env_int("RANK", 0) == 0 else None
    try:
        train(cfg, args)
    finally:
        if run_lock is not None:
            run_lock.release()


def train(cfg, args) -> None:
    """Everything after rank 0 has claimed OUTPUT_DIR: the process group, training."""
    if cfg.MODEL.DIST_TRAIN:
        init_distributed(cfg, args.local_rank)
    rank = dist.get_rank() if cfg.MODEL.DIST_TRAIN else 0
    logger = start_run(cfg, args.config_file, if_train=True, rank=rank,
                       distributed=cfg.MODEL.DIST_TRAIN)
    # Ranks draw different augmentations; the identity schedule is shared through the sampler.
    set_seed(cfg.SOLVER.SEED + rank)

    try:
        with stop_signals_raise_once(logger):
            train_until_stopped(cfg, args, logger)
    finally:
        if cfg.MODEL.DIST_TRAIN and dist.is_initialized():
            dist.destroy_process_group()


def train_until_stopped(cfg, args, logger: logging.Logger) -> None:
    try:
        run_training(cfg, build_training(cfg), args.local_rank)
    except (KeyboardInterrupt, Terminated) as stop:
        # do_train has waited for the checkpoint writes in flight: the hint names the last one.
        what, code = (("Terminated (SIGTERM)", EXIT_TERMINATED) if isinstance(stop, Terminated)
                      else ("Interrupted", EXIT_INTERRUPTED))
        logger.warning("%s. %s", what, resume_hint(cfg.OUTPUT_DIR))
        raise SystemExit(code) from None


if __name__ == "__main__":
    main()
