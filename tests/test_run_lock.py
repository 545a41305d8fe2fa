"""OUTPUT_DIR lock against real second processes, and removal of killed writes' temp files."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from processor.checkpoint import RUN_LOCK_FILE, OutputDirInUseError, lock_output_dir
from tests.conftest import REPO_ROOT
from utils.file_lock import FileLock
from utils.files import remove_stale_temp_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Takes the lock, says so on stdout, then waits for a line on stdin (or to be killed).
HOLDER = textwrap.dedent("""
    import sys
    from processor.checkpoint import lock_output_dir
    lock = lock_output_dir(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.readline()
    lock.release()
""")


def start_holder(folder) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO_ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_refused_while_held_then_allowed_after_exit(tmp_path):
    out = tmp_path / "out"
    holder = start_holder(out)
    try:
        with pytest.raises(OutputDirInUseError) as err:
            lock_output_dir(str(out))
        message = str(err.value)
        assert f"PID {holder.pid} on host " in message and f"'{out}'" in message
        assert "choose another OUTPUT_DIR" in message
    finally:
        holder.communicate("done\n", timeout=10)
    assert holder.returncode == 0
    assert not (out / RUN_LOCK_FILE).exists()  # a normal end leaves no lock file
    with lock_output_dir(str(out)) as lock:
        assert lock.held
    assert not lock.held


def test_lock_freed_when_holder_is_sigkilled(tmp_path):
    with start_holder(tmp_path) as holder:
        with pytest.raises(OutputDirInUseError, match=f"PID {holder.pid} "):
            lock_output_dir(str(tmp_path))
        holder.send_signal(signal.SIGKILL)
    assert (tmp_path / RUN_LOCK_FILE).exists()  # left behind, but no longer locked
    lock = lock_output_dir(str(tmp_path))
    # The stale record was replaced by ours.
    with pytest.raises(OutputDirInUseError, match=f"PID {os.getpid()} "):
        lock_output_dir(str(tmp_path))
    lock.release()


def test_lock_survives_a_taker_racing_with_removal(tmp_path):
    """A second object in the same process conflicts too (flock is per open file), and a lock
    file removed under a waiting taker is not mistaken for the lock."""
    path = str(tmp_path / "x.lock")
    first, second = FileLock(path), FileLock(path)
    assert first.try_acquire(role="first") is None
    holder = second.try_acquire()
    assert holder["pid"] == os.getpid() and holder["role"] == "first"
    first.release()
    assert second.try_acquire() is None and second.held
    with pytest.raises(RuntimeError, match="already held"):
        second.try_acquire()
    second.release()
    second.release()  # twice is harmless


def test_remove_stale_temp_files_of_a_killed_atomic_write(tmp_path):
    from utils.files import atomic_output
    target = tmp_path / "transformer_120.pth"
    pid = os.fork()
    if pid == 0:  # a write killed midway: the block never finishes
        try:
            with atomic_output(str(target)) as tmp_file:
                with open(tmp_file, "wb") as f:
                    f.write(b"\0" * 1000)
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    left = [n for n in os.listdir(tmp_path) if n.startswith(".tmp_")]
    assert len(left) == 1 and left[0].endswith(".pth") and not target.exists()
    keep = [".tmp_notes.txt", ".tmp_", "tmp_abcdefgh.pth", "model.pth"]
    for name in keep:
        (tmp_path / name).write_text("user file")
    os.mkdir(tmp_path / ".tmp_abcdefgh.d")  # a folder: not ours
    os.symlink(tmp_path / "model.pth", tmp_path / ".tmp_12345678.pth")  # a link: not ours
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".tmp_abcd1234.pth").write_text("not this folder")
    assert remove_stale_temp_files(str(tmp_path)) == [str(tmp_path / left[0])]
    assert sorted(os.listdir(tmp_path)) == sorted(
        keep + [".tmp_abcdefgh.d", ".tmp_12345678.pth", "sub"])
    assert remove_stale_temp_files(str(tmp_path / "missing")) == []


# ------------------------------------------------------------- synthetic renders in one data folder
MANIFEST_A = {"generator": "test", "settings": {"n": 1}}


def write_files(folder: str, count: int = 3) -> None:
    for i in range(count):
        with open(os.path.join(folder, f"{i}.jpg"), "w") as f:
            f.write(str(i))


@pytest.fixture
def children():
    """Forked children's PIDs and pipe ends: the children are killed at the end whatever the
    test did (a failed test would otherwise leave one blocked on its pipe)."""
    forked = {"pids": [], "files": []}
    yield forked
    for pid in forked["pids"]:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    for file in forked["files"]:
        file.close()


def fork_render(target: str, children: dict):
    """A child process rendering `target`: it writes three files, reports the folder it renders
    into on a pipe, then waits for a byte before finishing (or to be killed).
    Returns (pid, reader of its reports, writer to tell it to finish)."""
    from datasets.synthetic.store import ensure_rendered
    to_parent, to_child = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            def render(folder):
                write_files(folder)
                os.write(to_parent[1], (folder + "\n").encode())
                os.read(to_child[0], 1)  # blocks until told (or killed)
            ensure_rendered(target, MANIFEST_A, render)
            code = 0
        finally:
            os._exit(code)
    os.close(to_parent[1])
    os.close(to_child[0])
    report, go = os.fdopen(to_parent[0]), os.fdopen(to_child[1], "wb", buffering=0)
    children["pids"].append(pid)
    children["files"] += [report, go]
    return pid, report, go


def test_render_waits_for_a_live_render_and_leaves_it_alone(tmp_path, children):
    from datasets.synthetic.store import RENDER_LOCK_SUFFIX, ensure_rendered
    target = str(tmp_path / "synthetic_person")
    pid, report, go = fork_render(target, children)
    live = report.readline().strip()
    assert os.path.basename(live).startswith(".synthetic_person.")

    def must_not_render(folder):
        raise AssertionError("the dataset is being rendered by the other process")
    results = []
    waiter = threading.Thread(target=lambda: results.append(
        ensure_rendered(target, MANIFEST_A, must_not_render)))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and sorted(os.listdir(live)) == ["0.jpg", "1.jpg", "2.jpg"]
    go.write(b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    waiter.join(10)
    assert results == [target]
    assert sorted(os.listdir(tmp_path)) == ["synthetic_person"]  # no temp folder, no lock file
    assert sorted(os.listdir(target)) == ["0.jpg", "1.jpg", "2.jpg", "manifest.json"]
    assert not os.path.exists(target + RENDER_LOCK_SUFFIX)


def test_next_render_removes_what_a_killed_render_left(tmp_path, children):
    from datasets.synthetic.store import ensure_rendered, read_manifest
    target = str(tmp_path / "synthetic_person")
    pid, report, _ = fork_render(target, children)
    dead = report.readline().strip()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert os.path.isdir(dead) and not os.path.exists(target)
    # A leftover of the earlier code (same naming) and an unrelated hidden folder.
    os.mkdir(tmp_path / ".synthetic_person.abc123")
    os.mkdir(tmp_path / ".synthetic_vehicle.abc123")
    manifest_b = {"generator": "test", "settings": {"n": 2}}
    assert ensure_rendered(target, manifest_b, lambda folder: write_files(folder, 1)) == target
    assert read_manifest(target) == manifest_b
    assert sorted(os.listdir(tmp_path)) == [".synthetic_vehicle.abc123", "synthetic_person"]


def test_train_py_refuses_an_output_dir_another_run_holds(tmp_path):
    out = tmp_path / "run"
    held = lock_output_dir(str(out))
    try:
        result = subprocess.run(
            [sys.executable, "train.py", "--config_file", "configs/Synthetic/vit_transreid_tiny.yml",
             "OUTPUT_DIR", str(out), "DATASETS.ROOT_DIR", str(tmp_path / "data")],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    finally:
        held.release()
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: OUTPUT_DIR '{out}' is in use by PID {os.getpid()}")
    assert not (tmp_path / "data").exists() and os.listdir(out) == []  # nothing built or written


def test_an_empty_output_dir_locks_the_current_folder_where_the_files_go(tmp_path, monkeypatch):
    from config import load_config
    from processor.checkpoint import claim_output_dir
    monkeypatch.chdir(tmp_path)
    cfg = load_config("", ["OUTPUT_DIR", ""])
    lock = claim_output_dir(cfg)
    try:
        assert os.path.isfile(tmp_path / RUN_LOCK_FILE)
        # A second run in the same folder is refused instead of mixing its checkpoints in.
        with pytest.raises(OutputDirInUseError, match=r"OUTPUT_DIR '\.' is in use by PID"):
            claim_output_dir(cfg)
    finally:
        lock.release()
    assert not os.path.exists(tmp_path / RUN_LOCK_FILE)
