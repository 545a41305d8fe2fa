"""End to end on a tiny synthetic set, on the CPU: train, test, resume, NaN stop, two processes."""
import itertools
import json
import logging
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import processor.processor as processor_module
from config import load_config
from processor import do_train, evaluate
from processor.checkpoint import LAST_CHECKPOINT, ResumeError, check_output_dir_is_free
from utils.seed import set_seed
from processor.processor import NonFiniteLossError, Trainer
from solver.scheduler_factory import create_scheduler
from tests.test_run_log import check_metrics_csv
from train import build_training

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(opts, config_file=""):
    """Everything train.py builds, seeded as train.py seeds it."""
    cfg = load_config(config_file, opts)
    set_seed(cfg.SOLVER.SEED)
    return cfg, dict(build_training(cfg), local_rank=0)


def train(cfg, parts):
    return do_train(cfg, **parts)


def test_quickstart_recipe_raises_map_well_above_the_untrained_model(tmp_path):
    # The quickstart config on a smaller synthetic set: 400 iterations, about 90 s on 2 cores.
    opts = ["DATASETS.ROOT_DIR", str(tmp_path / "data"), "OUTPUT_DIR", str(tmp_path / "out"),
            "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
            "DATASETS.SYNTHETIC.NUM_IDS", "80", "DATASETS.SYNTHETIC.IMAGES_PER_ID", "8",
            "SOLVER.IMS_PER_BATCH", "32", "SOLVER.WARMUP_EPOCHS", "2",
            "SOLVER.MAX_EPOCHS", "40", "SOLVER.EVAL_PERIOD", "40", "SOLVER.CHECKPOINT_PERIOD", "40"]
    cfg, parts = build(opts, os.path.join(REPO_ROOT, "configs/Synthetic/vit_transreid_tiny.yml"))
    untrained = evaluate(cfg, parts["model"], parts["val_loader"], parts["num_query"],
                         torch.device("cpu"))
    trained = train(cfg, parts)
    assert trained.mAP > untrained.mAP + 0.10, (untrained.mAP, trained.mAP)
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "transformer_40.pth"))
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "transformer_best.pth"))


class StopAtEpoch(Exception):
    pass


def failing_loss(parts, epoch_to_fail, make_failure):
    """The loss of `parts`, made to fail on the first iteration of `epoch_to_fail`."""
    loss_fn, calls = parts["loss_fn"], itertools.count()
    failing_call = (epoch_to_fail - 1) * len(parts["train_loader"])

    def wrapped(score, feat, target, target_cam):
        loss = loss_fn(score, feat, target, target_cam)
        wrapped.last_parts = loss_fn.last_parts  # the trainer logs the parts of the real loss
        return make_failure(loss) if next(calls) == failing_call else loss
    return wrapped


def raise_stop(loss):
    raise StopAtEpoch()


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_and_resumed_training_ends_with_the_same_weights(tiny_opts, tmp_path, workers):
    # With workers, their augmentation seeds must come from the restored random state too.
    # CHECKPOINT_PERIOD = MAX_EPOCHS as in the reference's configs: the resume state must
    # still be written every epoch.
    schedule = ["SOLVER.MAX_EPOCHS", "3", "SOLVER.EVAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "3",
                "DATALOADER.NUM_WORKERS", str(workers)]
    cfg, parts = build(tiny_opts + schedule + ["OUTPUT_DIR", str(tmp_path / "straight")])
    train(cfg, parts)
    uninterrupted = parts["model"].state_dict()

    cfg, parts = build(tiny_opts + schedule + ["OUTPUT_DIR", str(tmp_path / "interrupted")])
    parts["loss_fn"] = failing_loss(parts, 3, raise_stop)
    with pytest.raises(StopAtEpoch):
        train(cfg, parts)

    checkpoint = str(tmp_path / "interrupted" / LAST_CHECKPOINT)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    assert not os.path.exists(tmp_path / "interrupted" / "transformer_2.pth")
    cfg, parts = build(tiny_opts + schedule + ["OUTPUT_DIR", str(tmp_path / "interrupted"),
                                               "MODEL.RESUME", checkpoint])
    train(cfg, parts)
    resumed = parts["model"].state_dict()
    assert uninterrupted.keys() == resumed.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(tensor, resumed[name]), name
    # metrics.csv: the resumed run appends epoch 3 once, and its numbers are the straight run's.
    expected = check_metrics_csv(str(tmp_path / "straight"), [1, 2, 3], cfg.SOLVER.LOG_PERIOD,
                                 eval_epochs=[2, 3], weights=parts["loss_fn"].weights)
    rows = check_metrics_csv(str(tmp_path / "interrupted"), [1, 2, 3], cfg.SOLVER.LOG_PERIOD,
                             eval_epochs=[2, 3], weights=parts["loss_fn"].weights)
    numbers = lambda row: {k: v for k, v in row.items() if k != "img_per_s"}  # noqa: E731
    assert [numbers(row) for row in rows] == [numbers(row) for row in expected]


def test_the_number_of_loader_workers_does_not_change_the_trained_weights(tiny_opts, tmp_path):
    weights = []
    for workers in (0, 2):
        cfg, parts = build(tiny_opts + ["SOLVER.MAX_EPOCHS", "2", "DATALOADER.NUM_WORKERS",
                                        str(workers), "OUTPUT_DIR", str(tmp_path / str(workers))])
        train(cfg, parts)
        weights.append(parts["model"].state_dict())
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_opts):
    cfg, parts = build(tiny_opts + ["SOLVER.MAX_EPOCHS", "3", "SOLVER.EVAL_PERIOD", "10",
                                    "SOLVER.CHECKPOINT_PERIOD", "1"])
    parts["loss_fn"] = failing_loss(parts, 2, lambda loss: loss * float("nan"))
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 2, iteration 1"):
        train(cfg, parts)
    state = torch.load(os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT), weights_only=True)
    assert state["epoch"] == 1
    # The failed step never reached the optimizer: the parameters are those of epoch 1
    # (BatchNorm's running statistics did move in that step's forward pass).
    for name, tensor in parts["model"].named_parameters():
        assert torch.equal(tensor, state["model"][name]), name


def test_a_failing_evaluation_keeps_the_weights_of_its_epoch(tiny_opts, monkeypatch):
    cfg, parts = build(tiny_opts + ["SOLVER.MAX_EPOCHS", "1"])

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(processor_module, "evaluate", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(cfg, parts)
    weights = os.path.join(cfg.OUTPUT_DIR, "transformer_1.pth")
    saved = torch.load(weights, weights_only=True)
    for name, tensor in parts["model"].state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_a_failing_evaluation_keeps_the_resume_state_of_its_epoch(tiny_opts, monkeypatch):
    # Evaluation at epoch 1, model files only at epoch 2: the resume state must not wait.
    cfg, parts = build(tiny_opts + ["SOLVER.MAX_EPOCHS", "2", "SOLVER.EVAL_PERIOD", "1",
                                    "SOLVER.CHECKPOINT_PERIOD", "2"])

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(processor_module, "evaluate", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(cfg, parts)
    state = torch.load(os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT), weights_only=True)
    assert state["epoch"] == 1
    for name, tensor in parts["model"].state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name


def test_the_resume_state_records_the_best_map_of_its_epoch(tiny_opts):
    cfg, parts = build(tiny_opts + ["SOLVER.MAX_EPOCHS", "1"])
    result = train(cfg, parts)
    state = torch.load(os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT), weights_only=True)
    assert state["best_mAP"] == result.mAP > 0


def learning_rates(parts):
    """Wrap the loss to record the learning rate of every step."""
    loss_fn, optimizer, seen = parts["loss_fn"], parts["optimizer"], []

    def recording(*args):
        seen.append(optimizer.param_groups[0]["lr"])
        return loss_fn(*args)
    parts["loss_fn"] = recording
    return seen


def test_resuming_with_more_epochs_follows_the_new_schedule(tiny_opts, caplog):
    cfg, parts = build(tiny_opts + ["SOLVER.MAX_EPOCHS", "1"])
    train(cfg, parts)
    longer = tiny_opts + ["SOLVER.MAX_EPOCHS", "3", "MODEL.RESUME",
                          os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT)]
    cfg, parts = build(longer)
    seen = learning_rates(parts)
    with caplog.at_level(logging.WARNING, logger="transreid.train"):
        train(cfg, parts)
    assert "SOLVER.MAX_EPOCHS 1 -> 3" in caplog.text
    fresh = create_scheduler(cfg, parts["optimizer"])
    per_epoch = len(seen) // 2
    assert seen[0] == pytest.approx(fresh._get_lr(2)[0]) and seen[-1] == pytest.approx(fresh._get_lr(3)[0])
    assert seen[0] > 10 * cfg.SOLVER.BASE_LR * 0.002  # not the floor of the 1-epoch schedule
    assert len(set(seen[:per_epoch])) == 1


def test_resuming_with_another_model_names_the_changed_key(tiny_opts):
    cfg, parts = build(tiny_opts + ["SOLVER.MAX_EPOCHS", "1"])
    train(cfg, parts)
    cfg, parts = build(tiny_opts + ["SOLVER.MAX_EPOCHS", "2", "MODEL.JPM", "False", "MODEL.RESUME",
                                    os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT)])
    with pytest.raises(ResumeError, match="MODEL.JPM True -> False") as raised:
        train(cfg, parts)
    assert "SOLVER.MAX_EPOCHS 1 -> 2" in str(raised.value)


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tiny_opts, caplog):
    cfg, parts = build(tiny_opts + ["SOLVER.MAX_EPOCHS", "1"])
    train(cfg, parts)
    cfg, parts = build(tiny_opts + ["SOLVER.MAX_EPOCHS", "1", "MODEL.RESUME",
                                    os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT)])
    with caplog.at_level(logging.WARNING, logger="transreid.train"):
        assert train(cfg, parts) is None
    assert "Nothing to train: the run is at epoch 1 and SOLVER.MAX_EPOCHS is 1" in caplog.text


def test_a_new_run_refuses_an_output_dir_holding_a_resume_state(tiny_opts, tmp_path):
    cfg = load_config("", tiny_opts)
    check_output_dir_is_free(cfg)  # nothing there yet
    os.makedirs(cfg.OUTPUT_DIR)
    path = os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT)
    torch.save({"epoch": 3}, path)
    with pytest.raises(ResumeError, match=f"continue it with MODEL.RESUME {path}"):
        check_output_dir_is_free(cfg)
    check_output_dir_is_free(load_config("", tiny_opts + ["MODEL.RESUME", path]))
    result = run_script(["train.py", *tiny_opts])
    assert result.returncode != 0 and "holds the resume state of an earlier run" in result.stderr
    assert torch.load(path, weights_only=True) == {"epoch": 3}
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "config.yaml"))


def test_resuming_with_another_process_count_warns_and_goes_on(tiny_opts, caplog):
    schedule = ["SOLVER.MAX_EPOCHS", "2", "SOLVER.EVAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "1"]
    cfg, parts = build(tiny_opts + schedule)
    parts["loss_fn"] = failing_loss(parts, 2, raise_stop)
    with pytest.raises(StopAtEpoch):
        train(cfg, parts)
    path = os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT)
    state = torch.load(path, weights_only=True)
    assert len(state["rng"]) == 1  # one entry per process
    state["rng"] = state["rng"] * 2  # as if two processes had written it
    torch.save(state, path)

    cfg, parts = build(tiny_opts + schedule + ["MODEL.RESUME", path])
    with caplog.at_level(logging.WARNING, logger="transreid.train"):
        result = train(cfg, parts)
    assert "written by 2 process(es), this run has 1" in caplog.text
    assert 0.0 < result.mAP <= 1.0


def run_script(args, timeout=300, extra_env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(extra_env or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_test_py_scores_a_reference_format_state_dict(tiny_opts, tmp_path):
    cfg, parts = build(tiny_opts)
    model = parts["model"]
    # The reference saves DataParallel/DDP models with 'module.' prefixes.
    weights = str(tmp_path / "transformer_120.pth")
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, weights)
    expected = evaluate(cfg, model, parts["val_loader"], parts["num_query"], torch.device("cpu"))

    out_dir = str(tmp_path / "test_out")
    result = run_script(["test.py", *tiny_opts, "TEST.WEIGHT", weights, "OUTPUT_DIR", out_dir])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mAP:" in result.stdout and "Rank-1" in result.stdout
    with open(os.path.join(out_dir, "test_results.json")) as handle:
        scores = json.load(handle)
    assert scores["mAP"] == pytest.approx(expected.mAP, abs=1e-6)
    assert scores["rank1"] == pytest.approx(float(expected.cmc[0]), abs=1e-6)
    # The saved config is the one that ran: no ImageNet initialisation under trained weights.
    saved = load_config(os.path.join(out_dir, "test_config.yaml"))
    assert saved.MODEL.PRETRAIN_CHOICE == "none" and saved.TEST.WEIGHT == weights


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_train_an_epoch_and_save_a_loadable_checkpoint(tiny_opts, tmp_path):
    out_dir = str(tmp_path / "ddp")
    opts = tiny_opts + ["MODEL.DIST_TRAIN", "True", "SOLVER.MAX_EPOCHS", "1",
                        "SOLVER.EVAL_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1",
                        "OUTPUT_DIR", out_dir]
    result = run_script(["-m", "torch.distributed.run", "--nproc_per_node=2",
                         f"--master_port={free_port()}", "train.py", *opts], timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(os.path.join(out_dir, "train_log.txt")) as log:
        text = log.read()
    assert "x 2 processes" in text and "Validation Results - Epoch: 1" in text

    cfg, parts = build(tiny_opts)
    parts["model"].load_param(os.path.join(out_dir, "transformer_1.pth"))


def center_step_on_rank(rank: int, world_size: int, port: int, opts, result_file: str) -> None:
    """One training step of rank `rank`; rank 0 saves every rank's centers afterwards."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        cfg = load_config("", opts)
        set_seed(cfg.SOLVER.SEED + rank)  # as train.py: each rank draws its own centers
        parts = build_training(cfg)
        initial = parts["center_criterion"].centers.detach().clone()
        trainer = Trainer(cfg, **parts, local_rank=rank)
        trainer.train_step(next(iter(parts["train_loader"])), epoch=1, n_iter=1)
        centers = trainer.center_criterion.centers.detach()
        gathered = [torch.zeros_like(centers) for _ in range(world_size)]
        dist.all_gather(gathered, centers)
        if rank == 0:
            torch.save({"initial": initial, "after_step": gathered}, result_file)
    finally:
        dist.destroy_process_group()


def test_center_loss_centers_stay_equal_across_ddp_ranks(tiny_opts, tmp_path):
    opts = tiny_opts + ["MODEL.DIST_TRAIN", "True", "MODEL.METRIC_LOSS_TYPE", "triplet_center"]
    result_file = str(tmp_path / "centers.pth")
    torch.multiprocessing.spawn(center_step_on_rank, args=(2, free_port(), opts, result_file),
                                nprocs=2)
    result = torch.load(result_file, weights_only=True)
    rank0, rank1 = result["after_step"]
    assert torch.equal(rank0, rank1)
    assert not torch.equal(rank0, result["initial"])


def test_sie_over_camera_and_view_trains_and_evaluates_on_synthetic_vehicles(synthetic_root, tmp_path):
    opts = ["DATASETS.ROOT_DIR", synthetic_root, "OUTPUT_DIR", str(tmp_path / "vehicle"),
            "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_EPOCHS", "1",
            "DATASETS.SYNTHETIC.NUM_IDS", "16", "DATASETS.SYNTHETIC.IMAGES_PER_ID", "6",
            "DATASETS.SYNTHETIC.NUM_CAMERAS", "3", "DATASETS.SYNTHETIC.IMAGE_SIZE", "[32, 32]",
            "INPUT.SIZE_TRAIN", "[32, 32]", "INPUT.SIZE_TEST", "[32, 32]",
            "SOLVER.IMS_PER_BATCH", "16", "TEST.IMS_PER_BATCH", "64"]
    cfg, parts = build(opts, os.path.join(REPO_ROOT, "configs/Synthetic/vit_transreid_vehicle_tiny.yml"))
    base = parts["model"].base
    assert base.cam_num == 3 and base.view_num > 1
    # One learned embedding per (camera, view) pair, as the reference's camera x view SIE.
    assert base.sie_embed.shape[0] == base.cam_num * base.view_num
    result = train(cfg, parts)
    assert 0.0 < result.mAP <= 1.0


def test_evaluation_leaves_the_training_random_state_untouched(tiny_opts):
    cfg, parts = build(tiny_opts)
    before = torch.get_rng_state()
    evaluate(cfg, parts["model"], parts["val_loader"], parts["num_query"], torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)
