"""OUTPUT_DIR lock against real second processes, and removal of killed writes' temp files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from utils.run_lock import (RUN_LOCK_FILE, FileLock, OutputDirInUseError, lock_output_dir,
                            remove_stale_temp_files)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Takes the lock, says so on stdout, then waits for a line on stdin (or to be killed).
HOLDER = textwrap.dedent("""
    import sys
    from utils.run_lock import lock_output_dir
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
    holder = start_holder(tmp_path)
    with pytest.raises(OutputDirInUseError, match=f"PID {holder.pid} "):
        lock_output_dir(str(tmp_path))
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
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
    from utils.checkpoint import atomic_output
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
