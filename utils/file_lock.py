"""An exclusive OS file lock that names its holder.

The lock is `fcntl.flock` on a file. The kernel drops it when the holding process ends in any
way (exit, exception, SIGKILL, OOM kill), so a crashed process never leaves it held; the file
records the holder's host and PID only to name it in a refusal. On NFS, Linux maps flock to
POSIX byte-range locks, which hold across hosts when the mount has locking (NFSv4, or NFSv3
with lockd; not mounts with `nolock`).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from datetime import datetime
from typing import Any, Callable, Dict, Optional

try:
    import fcntl
except ImportError:  # Windows: no flock; locking is skipped with a warning.
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("transreid.file_lock")

# Lock-taking fails this way on file systems without flock support (some FUSE mounts).
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


class FileLock:
    """An exclusive flock on `path` that records who holds it.

    The file is removed on release. Removing a lock file is racy unless every taker checks,
    after locking, that the path still names the inode it locked; `try_acquire` does.
    """

    def __init__(self, path: str):
        self.path = path
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self, **details: Any) -> Optional[Dict[str, Any]]:
        """Take the lock without waiting: None when taken (recording pid, host, time and
        `details` in the file), else what the holder recorded ({} when it has not yet)."""
        if self._fd is not None:
            raise RuntimeError(f"lock '{self.path}' is already held by this object")
        if fcntl is None:
            logger.warning("no fcntl on this platform: '%s' is not locked", self.path)
            self._fd = -1
            return None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                return holder
            except OSError as err:
                os.close(fd)
                if err.errno not in _NO_LOCKING:
                    raise
                logger.warning("the file system of '%s' does not support locks (%s); going on "
                               "without one, so nothing stops a second run here", self.path, err)
                self._fd = -1
                return None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file between our open and lock: retry
        _write_holder(fd, {"pid": os.getpid(), "host": socket.gethostname(),
                           "since": datetime.now().isoformat(timespec="seconds"), **details})
        self._fd = fd
        return None

    def acquire(self, poll_s: float = 0.2, report_every_s: float = 60.0,
                on_wait: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        """Take the lock, waiting for the holder; `on_wait(holder)` is called at once and
        then every `report_every_s` while waiting (to say who is waited for)."""
        next_report = 0.0
        while True:
            holder = self.try_acquire()
            if holder is None:
                return
            now = time.monotonic()
            if on_wait is not None and now >= next_report:
                on_wait(holder)
                next_report = now + report_every_s
            time.sleep(poll_s)

    def release(self) -> None:
        """Remove the file and drop the lock (in that order, so no one locks a removed file
        without noticing); a no-op when not held."""
        fd, self._fd = self._fd, None
        if fd is None or fd == -1:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(fd)

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def describe_holder(holder: Dict[str, Any]) -> str:
    """'PID n on host h (since t)' from what a lock holder recorded."""
    if "pid" not in holder:
        return "another process (which has not recorded its PID yet)"
    host, since = holder.get("host", "?"), holder.get("since", "?")
    return f"PID {holder['pid']} on host {host} (since {since})"


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _write_holder(fd: int, holder: Dict[str, Any]) -> None:
    data = json.dumps(holder, sort_keys=True).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_holder(fd: int) -> Dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode()) if data else {}
    except (OSError, ValueError):
        return {}  # being written right now, or not ours: the message says so
    return holder if isinstance(holder, dict) else {}
