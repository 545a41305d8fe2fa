"""Checkpoints under real faults: resuming into another run's folder, a full disk (a real
tmpfs), SIGINT/SIGTERM to a real training process while it writes, and the background writer's
order and failure rules."""
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch import nn

from config import load_config
from processor import EvalResult
from processor.checkpoint import (LAST_CHECKPOINT, Checkpointer, CheckpointWriteError, ResumeError,
                                  TrainingObjects, check_output_dir_is_free)
from utils.files import DiskFullError, atomic_save, is_disk_full

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_test_script():
    """test.py as a module (the name `test` is also the standard library's test package)."""
    spec = importlib.util.spec_from_file_location("transreid_test_script",
                                                  os.path.join(REPO_ROOT, "test.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- helpers
def small_checkpointer(output_dir: str, width: int = 64) -> Checkpointer:
    """A Checkpointer of a small model with SGD momentum (one step taken, so the optimizer has
    state), writing to `output_dir`."""
    torch.manual_seed(0)
    model, centers = nn.Linear(width, width), nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()
    cfg = load_config("", ["OUTPUT_DIR", output_dir])
    optimizer_center = torch.optim.SGD(centers.parameters(), lr=0.5)
    return Checkpointer(cfg, TrainingObjects(model, optimizer, optimizer_center, centers,
                                             torch.amp.GradScaler("cpu", enabled=False)))


def write_state(output_dir: str, epoch: int) -> str:
    with small_checkpointer(output_dir) as checkpointer:
        checkpointer.save_state(epoch, 0.0, [])
    return checkpointer.last_path


def resume_cfg(resume: str, output_dir: str):
    return load_config("", ["MODEL.RESUME", resume, "OUTPUT_DIR", output_dir])


def run_script(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs of the given size (a real file system that fills up); unmounted after."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> str:
        folder = str(tmp_path / f"tmpfs{len(mounted)}")
        os.makedirs(folder)
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", folder],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill up (needs root): {done.stderr.strip()}")
        mounted.append(folder)
        return folder
    yield mount
    for folder in mounted:
        subprocess.run(["umount", folder], check=False)


def fill_up(folder: str, leave: int) -> None:
    """Fill the file system of `folder` up to about `leave` free bytes."""
    filler = os.path.join(folder, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError as err:
        assert is_disk_full(err)
    finally:
        os.close(fd)
    os.truncate(filler, max(os.path.getsize(filler) - leave, 0))


def temp_files(folder: str):
    return [name for name in os.listdir(folder) if name.startswith(".tmp_")]


# ---------------------------------------------------------------- 1. resume into another folder
def test_resuming_into_another_runs_folder_is_refused(tmp_path):
    run_a, run_b = str(tmp_path / "a"), str(tmp_path / "b")
    state_a, state_b = write_state(run_a, 5), write_state(run_b, 7)
    with pytest.raises(ResumeError, match=f"MODEL.RESUME '{state_a}' is the state of another run "
                                          f"than the one in OUTPUT_DIR '{run_b}'") as raised:
        check_output_dir_is_free(resume_cfg(state_a, run_b))
    assert f"continue that folder's own run with MODEL.RESUME {state_b}" in str(raised.value)


def test_resuming_into_its_own_or_a_new_folder_is_allowed(tmp_path):
    run_a = str(tmp_path / "a")
    state_a = write_state(run_a, 5)
    check_output_dir_is_free(resume_cfg(state_a, run_a))
    # The same folder spelt another way: relative with '..', and through a symbolic link.
    os.symlink(run_a, tmp_path / "link")
    check_output_dir_is_free(resume_cfg(state_a, str(tmp_path / "link")))
    check_output_dir_is_free(resume_cfg(os.path.relpath(state_a), os.path.join(run_a, "..", "a")))
    # A copy kept in the run's folder (to roll back): the state records the folder it came from.
    backup = os.path.join(run_a, "epoch5_backup.pth")
    shutil.copy(state_a, backup)
    check_output_dir_is_free(resume_cfg(backup, run_a))
    # A new folder, and an existing one without a resume state: the run continues there.
    check_output_dir_is_free(resume_cfg(state_a, str(tmp_path / "new")))
    os.makedirs(tmp_path / "empty")
    check_output_dir_is_free(resume_cfg(state_a, str(tmp_path / "empty")))


def test_train_py_refuses_to_resume_into_another_runs_folder(tiny_opts, tmp_path):
    run_a, run_b = str(tmp_path / "a"), str(tmp_path / "b")
    state_a, state_b = write_state(run_a, 5), write_state(run_b, 7)
    before = os.stat(state_b).st_mtime_ns
    result = run_script(["train.py", *tiny_opts, "SOLVER.MAX_EPOCHS", "1", "OUTPUT_DIR", run_b,
                         "MODEL.RESUME", state_a])
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.startswith("error: MODEL.RESUME") and "Traceback" not in result.stderr
    assert os.stat(state_b).st_mtime_ns == before
    assert torch.load(state_b, weights_only=True)["epoch"] == 7


# ---------------------------------------------------------------- 2. full disk
def test_a_full_disk_stops_training_naming_the_state_to_resume(tmpfs):
    folder = tmpfs("4m")
    checkpointer = small_checkpointer(folder, width=256)  # a state of about 0.5 MB
    checkpointer.save_state(1, 0.0, [])
    checkpointer.writer.wait()
    fill_up(folder, leave=os.path.getsize(checkpointer.last_path) // 2)
    checkpointer.save_state(2, 0.0, [])  # returns: the write fails in the background
    with pytest.raises(DiskFullError) as raised:
        checkpointer.close()
    message = str(raised.value)
    assert message.startswith(f"the disk is full: no space left in '{folder}' to write "
                              f"'{LAST_CHECKPOINT}'")
    assert (f"Continue from the last saved epoch (1) with MODEL.RESUME "
            f"{os.path.join(folder, LAST_CHECKPOINT)}") in message
    assert torch.load(checkpointer.last_path, weights_only=True)["epoch"] == 1
    assert temp_files(folder) == []


def test_train_py_on_a_full_disk_prints_one_error_line_and_logs_it(tiny_opts, tmpfs):
    # 2 MiB: room for the log and config, not for the tiny model's 25 MB weights.
    folder = tmpfs("2m")
    result = run_script(["train.py", *tiny_opts, "SOLVER.MAX_EPOCHS", "1", "OUTPUT_DIR", folder])
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0])
    line = errors[0]
    assert line.startswith(
        f"error: the disk is full: no space left in '{folder}' to write 'transformer_1.pth'")
    assert "nothing to resume" in line
    with open(os.path.join(folder, "train_log.txt")) as log:
        assert line[len("error: "):] in log.read()
    assert temp_files(folder) == [] and not os.path.exists(os.path.join(folder, LAST_CHECKPOINT))


def test_test_py_results_on_a_full_disk_keep_the_previous_file(tmpfs):
    folder = tmpfs("1m")
    cfg = load_config("", ["OUTPUT_DIR", folder, "TEST.WEIGHT", "model.pth"])
    result = EvalResult(mAP=0.5, cmc=[0.5] * 50, mINP=0.25, num_valid_queries=2, num_queries=2)
    logger = logging.getLogger("transreid.test_faults")
    test_script = load_test_script()
    test_script.write_results(cfg, result, logger)
    path = os.path.join(folder, "test_results.json")
    with open(path) as handle:
        first = handle.read()
    fill_up(folder, leave=0)
    with pytest.raises(DiskFullError, match="the disk is full: no space left in .* to write "
                                            "'test_results.json'"):
        test_script.write_results(cfg, result, logger)
    with open(path) as handle:
        assert handle.read() == first and json.loads(first)["mAP"] == 0.5
    assert [name for name in os.listdir(folder) if os.path.getsize(os.path.join(folder, name)) == 0
            and name != "filler"] == []


# ---------------------------------------------------------------- 3. signals during a write
# Runs train.py with torch.save slowed down inside torch's writer (in the file's write(), which
# torch's C++ serializer calls) for the first training state, and prints a line when that
# write is midway: the test sends its signal then. (A KeyboardInterrupt there used to come out
# of torch as "RuntimeError: unexpected pos", a traceback and exit status 1.)
SLOW_WRITE_DRIVER = """
import runpy, signal, sys, time, torch
# A shell without job control starts background jobs with SIGINT ignored, which the child would
# inherit (and Python then keeps): give it the default Ctrl-C, as a terminal would.
signal.signal(signal.SIGINT, signal.default_int_handler)
real_save = torch.save
class SlowFile:
    def __init__(self, handle):
        self.handle, self.calls = handle, 0
    def write(self, data):
        self.calls += 1
        if self.calls == 3:  # some bytes are out: torch's writer cannot end the file cleanly
            print("STATE WRITE STARTED", flush=True)
            time.sleep(3)
        return self.handle.write(data)
    def flush(self):
        return self.handle.flush()
slowed = []
def slow_save(obj, f, *args, **kwargs):
    if not slowed and isinstance(obj, dict) and "optimizer" in obj:
        slowed.append(True)
        f = SlowFile(f)
    return real_save(obj, f, *args, **kwargs)
torch.save = slow_save
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def signal_during_state_write(tiny_opts, tmp_path, signals):
    """Run the slowed train.py, send `signals` ((signal, seconds to wait before it), ...) once
    the first state write is midway; its (returncode, stdout, stderr, OUTPUT_DIR)."""
    driver = tmp_path / "slow_write_train.py"
    driver.write_text(SLOW_WRITE_DRIVER)
    out = str(tmp_path / "out")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=REPO_ROOT)
    proc = subprocess.Popen([sys.executable, str(driver), *tiny_opts, "SOLVER.MAX_EPOCHS", "3",
                             "OUTPUT_DIR", out], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if "STATE WRITE STARTED" in line or time.monotonic() > deadline:
                break
        time.sleep(0.3)  # inside the slowed write
        for signum, wait in signals:
            time.sleep(wait)
            proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, stdout, stderr, out


@pytest.mark.parametrize("signum, exit_code, said", [
    (signal.SIGINT, 130, "Interrupted."), (signal.SIGTERM, 143, "Terminated (SIGTERM).")])
@pytest.mark.parametrize("repeated", [False, True])
def test_a_signal_during_a_checkpoint_write_exits_with_the_resume_command(tiny_opts, tmp_path,
                                                                          signum, exit_code, said,
                                                                          repeated):
    # More signals 20 ms and 300 ms after the first used to cut short the wait for the write
    # in flight, so the hint named the epoch before the one that then landed. (Python runs one
    # handler for signals that arrive together: the one at 300 ms is surely seen apart.)
    returncode, stdout, stderr, out = signal_during_state_write(
        tiny_opts, tmp_path, [(signum, 0.0)] + ([(signum, 0.02), (signum, 0.3)] if repeated else []))
    assert returncode == exit_code, stdout[-2000:] + stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    path = os.path.join(out, LAST_CHECKPOINT)
    with open(os.path.join(out, "train_log.txt")) as log:
        text = log.read()
    epoch = torch.load(path, weights_only=True)["epoch"]
    assert epoch == 1
    assert f"{said} Continue from the last saved epoch ({epoch}) with MODEL.RESUME {path}" in text
    assert ("again: already stopping" in text) == repeated
    assert temp_files(out) == []


# ---------------------------------------------------------------- 4. the background writer
def test_save_state_returns_before_the_write_and_copies_the_state_first(tmp_path, monkeypatch):
    checkpointer = small_checkpointer(str(tmp_path))
    weight = checkpointer.objects.model.weight
    expected = weight.detach().clone()
    started, release = threading.Event(), threading.Event()

    def blocked_save(obj, path):
        started.set()
        assert release.wait(10)
        atomic_save(obj, path)
    monkeypatch.setattr("utils.background_writer.atomic_save", blocked_save)
    checkpointer.save_state(1, 0.0, [])
    assert started.wait(10) and not os.path.exists(checkpointer.last_path)
    with torch.no_grad():
        weight.add_(1.0)  # training goes on while the file is written
    release.set()
    checkpointer.close()
    assert torch.equal(torch.load(checkpointer.last_path, weights_only=True)["model"]["weight"],
                       expected)


def test_a_failed_write_stops_the_next_save_and_drops_the_writes_queued_behind_it(tmp_path,
                                                                                  monkeypatch):
    checkpointer = small_checkpointer(str(tmp_path))
    checkpointer.save_state(1, 0.0, [])
    checkpointer.writer.wait()

    def broken_state_write(obj, path):
        if path.endswith(LAST_CHECKPOINT):
            raise PermissionError(13, "Permission denied", path)
        atomic_save(obj, path)
    monkeypatch.setattr("utils.background_writer.atomic_save", broken_state_write)
    # A new best: the state is queued before the best weights, which must not land without it.
    checkpointer.save_state(2, 0.9, [])
    best = checkpointer.path(f"{checkpointer.cfg.MODEL.NAME}_best.pth")
    with contextlib.suppress(CheckpointWriteError):  # refused at once if the write failed already
        checkpointer.save_weights("best")
    checkpointer.writer.wait()
    assert not os.path.exists(best)
    with pytest.raises(CheckpointWriteError, match=f"writing '{checkpointer.last_path}' failed "
                       r"\(\[Errno 13\] Permission denied.*Continue from the last saved epoch "
                       r"\(1\)"):
        checkpointer.save_state(3, 0.9, [])
    assert torch.load(checkpointer.last_path, weights_only=True)["epoch"] == 1


def test_the_last_write_is_checked_when_training_ends(tmp_path, monkeypatch):
    checkpointer = small_checkpointer(str(tmp_path))

    def full(obj, path):
        raise DiskFullError(path)
    monkeypatch.setattr("utils.background_writer.atomic_save", full)
    with pytest.raises(DiskFullError, match="nothing to resume"):
        with checkpointer:
            checkpointer.save_state(1, 0.0, [])
