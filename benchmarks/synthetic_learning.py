"""Does training learn? mAP/CMC of the random-init model, then of the trained one.

    python benchmarks/synthetic_learning.py --config_file configs/Synthetic/vit_transreid_tiny.yml

Builds everything as train.py does (same seed), evaluates before training, trains per the
config (its OUTPUT_DIR receives the usual logs and checkpoints) and prints both results with
the wall time of each stage.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from processor import do_train, evaluate  # noqa: E402
from processor.checkpoint import ResumeError, check_output_dir_is_free  # noqa: E402
from config.cli import base_parser, load_cli_config  # noqa: E402
from processor.cli import start_run  # noqa: E402
from utils.errors import exits_on_user_error  # noqa: E402
from utils.seed import set_seed
from train import build_training  # noqa: E402
from utils.device import select_device  # noqa: E402


@exits_on_user_error
def main() -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    cfg = load_cli_config(args.config_file, args.opts)
    try:
        check_output_dir_is_free(cfg)
    except ResumeError as err:
        sys.exit(f"error: {err}")
    start_run(cfg, args.config_file, if_train=True)
    set_seed(cfg.SOLVER.SEED)

    start = time.perf_counter()
    parts = build_training(cfg)
    built = time.perf_counter()
    untrained = evaluate(cfg, parts["model"], parts["val_loader"], parts["num_query"],
                         select_device(cfg.MODEL.DEVICE))
    evaluated = time.perf_counter()
    trained = do_train(cfg, **parts, local_rank=0)
    finished = time.perf_counter()

    print(f"\nconfig: {args.config_file} {' '.join(args.opts)}")
    print(f"{'model':<22}{'mAP':>8}{'Rank-1':>8}{'Rank-5':>8}")
    for name, result in (("random init", untrained), (f"trained, {cfg.SOLVER.MAX_EPOCHS} epochs", trained)):
        print(f"{name:<22}{100 * result.mAP:>7.1f}%{100 * result.cmc[0]:>7.1f}%{100 * result.cmc[4]:>7.1f}%")
    print(f"data + model {built - start:.0f} s, first evaluation {evaluated - built:.0f} s, "
          f"training with evaluation {finished - evaluated:.0f} s")


if __name__ == "__main__":
    main()
